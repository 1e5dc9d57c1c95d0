"""experiments/identifiable.py (Hirt et al. §5.2, Tables 3 and 4): smoke run, recipe, the
training wired through ``fit`` as the authors' loop, and the committed tables re-rendered."""

import json
import math
import shutil

import pytest
import torch

from tests.helpers import ROOT, clamped_adam_loop, load_script

RESULTS = ROOT / "experiments" / "results" / "identifiable"
# numbers a record holds that do not depend on the machine's speed
TIMING = {"train_seconds"}


@pytest.fixture(scope="module")
def identifiable():
    return load_script("identifiable")


def _spec(identifiable, *options):
    """The first run of a tiny Table 3 configuration."""
    args = identifiable.parse_args(["--quick", "--tables", "3", *options])
    return identifiable.specs(args)[0]


def _assert_same_record(a, b, rel=1e-9):
    assert set(a) == set(b)
    for key in set(a) - TIMING - {"plot"}:
        x, y = a[key], b[key]
        if isinstance(x, float):
            assert y == pytest.approx(x, rel=rel, abs=1e-12), key
        elif isinstance(x, list):
            assert y == pytest.approx(x, rel=rel, abs=1e-12), key
        else:
            assert x == y, key


@pytest.mark.slow
def test_identifiable_smoke(identifiable, tmp_path):
    payload = identifiable.main(["--quick", "--rows", "poe", "selfattention_mix+gmm",
                                 "--observed", "partial", "--output-dir", str(tmp_path)])
    runs = payload["runs"]
    # 2 rows x 2 bounds for Table 3, and again for Table 4 (partially observed only).
    assert len(runs) == 8
    assert {(r["table"], r["bound"]) for r in runs} == {(t, b) for t in (3, 4)
                                                        for b in ("masked", "mixture")}
    assert {r["row"] for r in runs} == {"poe", "selfattention-mixture+gmm"}  # the new spelling
    for r in runs:
        assert math.isfinite(r["llh_sum"]) and r["llh_sum"] < 0
        assert 0 <= r["mcc_weak_out"] <= 1
        assert ("clustering_accuracy" in r) == r["row"].endswith("+gmm")
        assert ("mcc_x_only" in r) == (r["table"] == 3)
        assert len(r["loss_curve"]) == 2 and r["final_loss_per_point"] == r["loss_curve"][-1]
    for name in ("table3.md", "table4.md", "table3_latents.png", "table4_latents_partial.png",
                 "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "results.partial.json").exists()
    table3 = (tmp_path / "table3.md").read_text()
    assert table3.startswith("# Table 3:")
    assert "- Command: `python experiments/identifiable.py --quick --rows poe" in table3
    assert "- Seeds: 0\n" in table3 and "- Wall time: " in table3
    assert "(-43.40 ± 10.74)" in table3 and "| SelfAttentionMixture | GMM, K=5 |" in table3
    assert "(-250.90 ± 5.19)" in (tmp_path / "table4.md").read_text()
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["paper"] == identifiable.PAPER and stored["config"]["quick"] is True
    # the tables written by the run are what --rerender writes from its results.json
    written = {n: (tmp_path / n).read_bytes() for n in ("table3.md", "table4.md")}
    for name in written:
        (tmp_path / name).unlink()
    identifiable.main(["--rerender", str(tmp_path)])
    assert {n: (tmp_path / n).read_bytes() for n in written} == written


def test_identifiable_models_follow_the_recipe(identifiable):
    from pyro_mmvae.models import GaussianMixturePrior, StandardNormalPrior
    from pyro_mmvae.models.decoders import CategoricalDecoder

    args = identifiable.parse_args(["--quick"])
    spec = next(s for s in identifiable.specs(args) if s["row"] == "sumpooling-mixture+gmm")
    dims = {"x": 2, "label": 5}
    model = identifiable.make_model(spec, dims, 2)
    assert isinstance(model.prior, GaussianMixturePrior) and model.prior.num_components == 5
    assert isinstance(model.decoders["label"], CategoricalDecoder)
    assert float(model.decoders["x"].scale) == pytest.approx(0.1)
    assert identifiable.make_guide(spec, dims, 2).aggregator.num_components == 5
    poe = next(s for s in identifiable.specs(args) if s["row"] == "poe")
    assert isinstance(identifiable.make_model(poe, dims, 2).prior, StandardNormalPrior)
    # PoE/MoE experts output 2d features; learnable aggregators E = width.
    assert identifiable.make_guide(poe, dims, 2).encoders["x"].out_dim == 4


def test_row_and_aggregator_names_accept_both_spellings(identifiable):
    assert identifiable.row_key("sumpooling_mix+gmm") == "sumpooling-mixture+gmm"
    assert identifiable.row_key("selfattention-mixture+gmm") == "selfattention-mixture+gmm"
    args = identifiable.parse_args(["--rows", "poe", "selfattention_mix+gmm"])
    assert args.rows == args.rows4 == ["poe", "selfattention-mixture+gmm"]
    with pytest.raises(SystemExit):
        identifiable.parse_args(["--rows", "sumpooling_mixture"])
    from pyro_mmvae.guides import SelfAttentionMixture, SumPoolingMixture
    for row, cls in (("sumpooling-mixture+gmm", SumPoolingMixture),
                     ("sumpooling_mix+gmm", SumPoolingMixture),
                     ("selfattention_mix+gmm", SelfAttentionMixture)):
        spec = dict(row=row, width=8, num_components=3, min_scale=5e-4)
        agg = identifiable.make_guide(spec, {"x": 5, "y": 4}, 2).aggregator
        assert isinstance(agg, cls) and agg.num_components == 3 and agg.min_scale == 5e-4
        assert agg.chi.out_dim == 8  # the width H reaches the registry's network
        if cls is SelfAttentionMixture:  # H is also the attention and MLP width
            assert agg.blocks[0].q.out_features == 8


def test_paper_numbers_are_read_from_the_data_file(identifiable):
    paper = json.loads((ROOT / "experiments" / "identifiable_paper.json").read_text())
    assert identifiable.PAPER == paper
    assert set(paper["table3"]) == set(paper["table4"]) == set(identifiable.ROWS)
    for row in identifiable.ROWS:
        for bound in identifiable.BOUNDS:
            assert set(paper["table3"][row][bound]) == {"llh", "mcc_a", "mcc_b"}
            for observed in identifiable.OBSERVED:
                assert set(paper["table4"][row][observed][bound]) == {"llh", "mcc"}
    assert paper["table3"]["poe"]["masked"]["llh"] == [-43.4, 10.74]
    assert paper["table3"]["selfattention-mixture+gmm"]["mixture"]["mcc_b"] == [0.99, 0.007]
    assert paper["table4"]["poe"]["partial"]["masked"]["llh"] == [-250.9, 5.19]
    assert paper["table4"]["sumpooling-mixture+gmm"]["full"]["mixture"]["mcc"] == [0.98, 0.004]


def _authors_loop(identifiable, spec):
    """The script's loop before it used ``fit`` (:func:`tests.helpers.clamped_adam_loop`)."""
    def loop(model, guide, loss, data, *, mask, **_):
        return clamped_adam_loop(identifiable.make_bound(spec), model, guide, data, mask,
                                 epochs=spec["epochs"], batch_size=spec["batch_size"],
                                 lr=spec["lr"], limit=spec["clip"],
                                 generator=torch.Generator().manual_seed(spec["seed"]))
    return loop


@pytest.mark.parametrize("row, bound", [("poe", "masked"),
                                        ("sumpooling-mixture+gmm", "mixture")])
@pytest.mark.slow
def test_training_takes_the_steps_of_the_authors_loop(identifiable, monkeypatch, row, bound):
    # a clip small enough to bind, 4 epochs of 10 batches
    spec = _spec(identifiable, "--rows", row, "--bounds", bound, "--clip", "0.5",
                 "--batch-size", "50")
    spec["epochs"] = 4
    ours = identifiable.run_config(spec)
    with monkeypatch.context() as m:
        m.setattr(identifiable, "fit", _authors_loop(identifiable, spec))
        reference = identifiable.run_config(spec)
    _assert_same_record(ours, reference)
    # the clip binds: without it the run differs
    free = identifiable.run_config(dict(spec, clip=1e9))
    assert free["final_loss_per_point"] != pytest.approx(ours["final_loss_per_point"], rel=1e-6)


def test_the_seed_determines_the_run(identifiable):
    spec = _spec(identifiable, "--rows", "sumpooling+gmm", "--bounds", "masked")
    first = identifiable.run_config(spec)
    torch.manual_seed(12345)  # whatever the global RNG holds before, the run reseeds it
    torch.randn(7)
    again = identifiable.run_config(spec)
    _assert_same_record(first, again, rel=0)
    other = identifiable.run_config(dict(spec, seed=spec["seed"] + 1))
    assert other["llh_sum"] != first["llh_sum"]
    assert other["loss_curve"] != first["loss_curve"]


@pytest.mark.parametrize("table", ["table3", "table4"])
def test_rerender_reproduces_the_committed_tables(identifiable, tmp_path, table):
    shutil.copy(RESULTS / table / "results.json", tmp_path / "results.json")
    identifiable.main(["--rerender", str(tmp_path)])
    for name in (f"{table}.md", "results.json"):  # the results file is left alone
        assert (tmp_path / name).read_bytes() == (RESULTS / table / name).read_bytes(), name
    # no figure without the plot arrays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", f"{table}.md"]
    text = (tmp_path / f"{table}.md").read_text()
    payload = json.loads((tmp_path / "results.json").read_text())
    assert f"- Command: `{payload['command'].partition('  #')[0]}`" in text
    if table == "table3":  # 27 of the 32 runs finished
        assert "Interrupted: 27 of the command's 32 runs" in text
        assert "- Wall time: not recorded" in text
    else:
        assert f"- Wall time: {payload['wall_seconds']:.0f} s" in text
        assert "Interrupted" not in text
