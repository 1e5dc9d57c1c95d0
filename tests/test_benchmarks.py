"""Checks the benchmarks rely on, run as tests: the hand-written masked PoE bound of
``benchmarks/bench_bounds.py`` (the plain-PyTorch side of its overhead table) equals the
library's loss and gradients, and the benchmarks' param-store slots keep variants apart."""

import pyro
import pytest
import torch

from tests.helpers import ROOT, load_script


@pytest.fixture
def float32():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("num_modalities", [2, 4])
def test_hand_written_masked_poe_equals_the_library(float32, num_modalities):
    """The benchmark's hand-written PyTorch loss and its plain-Pyro program of the masked
    bound give the library's loss and gradients (what its Pyro-overhead table compares)."""
    bench = load_script("bench_bounds", "benchmarks")
    data, mask = bench.make_data(num_modalities, 6, 3, 32, seed=1)
    model, guide = bench.make_model_guide(data, 3, (16,), "PoE", seed=1)
    check = bench.check_equal(data, mask, model, guide, seed=1)
    assert set(check) == {"same seed", "traced S, z", "plain Pyro, same seed"}
    for name, c in check.items():
        assert c["ok"], (name, c)
        assert c["rel_loss_diff"] < 1e-5 and c["max_rel_grad_diff"] < 1e-4


def test_param_store_slots_keep_each_variant_s_parameters():
    slots = load_script("_param_store", "benchmarks")
    a, b = slots.ParamStoreSlot(), slots.ParamStoreSlot()
    pyro.clear_param_store()
    a.activate()
    pa = pyro.param("w", torch.zeros(2))
    b.activate()
    assert "w" not in pyro.get_param_store()
    pb = pyro.param("w", torch.ones(3))
    a.activate()
    assert pyro.param("w") is pa
    b.activate()
    assert pyro.param("w") is pb
    slots.ParamStoreSlot.release()
    assert len(pyro.get_param_store()) == 0
    a.activate()
    assert pyro.param("w") is pa
    slots.ParamStoreSlot.release()


@pytest.mark.slow
def test_the_scaling_benchmark_runs_and_one_and_two_processes_agree(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "scaling.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"),
                           "--quick", "--output", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0]) for r in rows] == [32, 128]
    for row in rows:  # the same objective and steps: final losses agree to float32
        one, two = float(row[-2]), float(row[-1])
        assert abs(one - two) <= 1e-5 * abs(one)
        assert float(row[1]) > 0 and float(row[2]) > 0
