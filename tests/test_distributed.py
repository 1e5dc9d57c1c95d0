"""Data-parallel training (pyro_mmvae.train.distributed): runs on 2 and 4 gloo processes take
the steps of the one-process run, resume as it does and stop together."""

import subprocess
import sys

import pytest
import torch

from pyro_mmvae.train import fit, load_checkpoint
from pyro_mmvae.train.distributed import (Distributed, from_environment, resolve,
                                          shard_bounds)
from tests.distributed_worker import evaluate, problem, run_processes, train


def run_cli(argv, *, processes=1, timeout=300, cwd=None):
    """``pyro-mmvae ARGV`` in a subprocess: alone, or under torchrun with ``processes``."""
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node", str(processes)]
    return subprocess.run([sys.executable, *launcher, "-m", "pyro_mmvae.cli", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def max_relative_difference(a, b):
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item()
               for k in a)


# --- without processes ------------------------------------------------------------------------

def test_shards_cover_the_batch_in_order():
    for total, world in [(12, 2), (12, 5), (7, 7), (10, 3)]:
        bounds = [shard_bounds(total, Distributed(r, world)) for r in range(world)]
        sizes = [len(part) for part in torch.arange(total).tensor_split(world)]
        assert [size for _, size in bounds] == sizes
        assert [offset for offset, _ in bounds] == [sum(sizes[:r]) for r in range(world)]
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        shard_bounds(3, Distributed(0, 4))


def test_the_launcher_environment_and_the_distributed_argument():
    assert from_environment({}) is None and from_environment({"WORLD_SIZE": "1"}) is None
    place = from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert place == Distributed(1, 2, 1) and not place.is_main
    with pytest.raises(ValueError, match="LOCAL_RANK is not set: launch"):
        from_environment({"RANK": "1", "WORLD_SIZE": "2"})
    assert resolve(None) is None and resolve(False) is None  # no process group here
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        resolve(True)
    with pytest.raises(ValueError, match="no torch.distributed process group is initialised"):
        resolve(Distributed(0, 2))
    with pytest.raises(TypeError, match="distributed must be None, a bool or a Distributed"):
        resolve("gloo")


def test_a_batch_smaller_than_the_world_is_refused_before_any_step(tmp_path):
    import torch.distributed as dist

    data, mask, model, guide, loss = problem({"bound": "masked"})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        with pytest.raises(ValueError, match=r"batch_size \(1\) is smaller than the 2 "
                                             "processes"):
            fit(model, guide, loss, data, epochs=1, batch_size=1, progress=False,
                distributed=Distributed(0, 2))
    finally:
        dist.destroy_process_group()


# --- spawned processes ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    {"bound": "masked"},
    {"bound": "masked", "missing": True},
    {"bound": "mixture", "aggregator": "moe"},
    {"bound": "mixture-average", "aggregator": "mopoe"},
    {"bound": "mixture-iid", "aggregator": "moe", "missing": True},
    {"bound": "mixture-iid", "aggregator": "mopoe"},
    {"bound": "subsampled"},
    {"bound": "subsampled", "missing": True},
    {"bound": "masked", "missing": True, "hand_written": True},
    {"bound": "masked", "image": True},
    {"bound": "mixture", "image": True},
], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_two_processes_take_the_steps_of_one(spec):
    spec = {**spec, "epochs": 2}
    one = train(spec)
    ranks = run_processes(2, spec)
    for result in ranks:  # both processes hold the one-process parameters
        assert max_relative_difference(one["state"], result["state"]) < 1e-10
        # and stepped the whole batch's gradients (Adam alone would hide a scale)
        assert len(result["grads"]) == len(one["grads"]) == 8
        for mine, theirs in zip(one["grads"], result["grads"]):
            assert max_relative_difference(mine, theirs) < 1e-10
        assert result["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-12)
        assert result["history"]["terms"]["rate"] == pytest.approx(
            one["history"]["terms"]["rate"], rel=1e-12)


@pytest.mark.slow
def test_validation_and_early_stopping_agree_across_processes():
    spec = {"bound": "masked", "epochs": 6, "val_fraction": 0.25, "early_stopping": 1,
            "lr": 0.2}
    one = train(spec)
    assert one["history"]["status"] == "stopped_early"  # the test exercises the stop
    for result in run_processes(2, spec):
        assert result["history"]["val_loss"] == pytest.approx(one["history"]["val_loss"],
                                                              rel=1e-12)
        assert result["history"]["best_epoch"] == one["history"]["best_epoch"]
        assert result["history"]["epoch"] == one["history"]["epoch"]
        assert max_relative_difference(one["state"], result["state"]) < 1e-10


@pytest.mark.slow
def test_four_processes_take_the_steps_of_one_with_uneven_shards():
    spec = {"bound": "masked", "epochs": 1, "batch_size": 10}  # shards of 3, 3, 2, 2 rows
    one = train(spec)
    for result in run_processes(4, spec):
        assert max_relative_difference(one["state"], result["state"]) < 1e-10


@pytest.mark.slow
def test_a_resumed_two_process_run_equals_the_uninterrupted_one(tmp_path):
    whole = run_processes(2, {"bound": "masked", "epochs": 3})[0]
    run_dir = tmp_path / "run"
    first = run_processes(2, {"bound": "masked", "epochs": 2, "run_dir": str(run_dir)})[0]
    assert first["history"]["epoch"] == [1, 2] and (run_dir / "checkpoint.pt").is_file()
    assert load_checkpoint(run_dir / "checkpoint.pt")["config"]["world_size"] == 2
    resumed = run_processes(2, {"bound": "masked", "epochs": 3, "run_dir": str(run_dir),
                                "resume": str(run_dir / "checkpoint.pt")})
    for result in resumed:
        assert max_relative_difference(whole["state"], result["state"]) < 1e-12
        assert result["history"]["loss"] == pytest.approx(whole["history"]["loss"], rel=1e-12)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    run_dir = tmp_path / "run"
    steps = 48 // 12  # per epoch; the loss is evaluated once before the first step
    ranks = run_processes(2, {"bound": "masked", "epochs": 3, "run_dir": str(run_dir),
                              "nan_at": 1 + steps + 1, "nan_rank": 1})  # epoch 2, step 2
    for result in ranks:
        assert "training diverged: non-finite loss" in result["diverged"]
        assert "epoch 2, step 2" in result["diverged"]
        assert result["checkpoint"] == str(run_dir / "checkpoint.pt")
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert saved["epoch"] == 1  # the last good epoch
    data, mask, model, guide, loss = problem({"bound": "masked"})
    load_checkpoint(run_dir / "checkpoint.pt", model, guide)  # it loads, checksums verified


@pytest.mark.slow
def test_torchrun_runs_the_command_line_as_one_process_does(tmp_path):
    """``torchrun --nproc_per_node 2 pyro-mmvae train ...`` trains and evaluates the run of
    one process: the same parameters and log-likelihoods, rank 0's run files, ``world_size``
    recorded."""
    import json

    argv = ["train", "--dataset", "linear-gaussian", "--num-points", "150",
            "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8", "--epochs", "2",
            "--batch-size", "20", "--is-samples", "50", "--no-progress", "--num-threads", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    alone = run_cli([*argv, "--output-dir", str(one)])
    assert alone.returncode == 0, alone.stderr[-2000:]
    done = run_cli([*argv, "--output-dir", str(two)], processes=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 reports
    assert "x 2 processes" in done.stdout
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    for part in ("model", "guide"):
        assert max_relative_difference(a[part], b[part]) < 1e-5
    # the importance-sampled test log-likelihood, each process estimating its shard of the
    # test points with the draws of the whole evaluation, is the one-process estimate
    same = [json.loads((run / "evaluation.json").read_text()) for run in (one, two)]
    assert same[1]["test_is_log_likelihood"] == pytest.approx(same[0]["test_is_log_likelihood"],
                                                              rel=1e-5)
    assert same[1]["test_exact_log_likelihood"] == pytest.approx(
        same[0]["test_exact_log_likelihood"], rel=1e-5)
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["world_size"] == 1
    # a run of two processes resumes on one (the steps do not depend on the world size)
    resumed = run_cli(["train", "--resume", str(two), "--epochs", "3", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(two / "checkpoint.pt")["epoch"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("missing", [False, True])
def test_sharded_evaluation_equals_the_unsharded_one(missing):
    spec = {"bound": "masked", "task": "evaluate", "missing": missing}
    alone = evaluate(spec)
    assert alone["joint"].shape == (48,)
    for world in (2, 3):
        for result in run_processes(world, spec):
            for key in ("joint", "conditional"):
                assert torch.allclose(result[key], alone[key], rtol=1e-12, atol=1e-12,
                                      equal_nan=True), (world, key)
            assert result["coherence"] == alone["coherence"]  # the same counts, summed


@pytest.mark.slow
def test_torchrun_trains_and_evaluates_an_image_run(tmp_path):
    """Under torchrun the processes share the evaluation's log-likelihoods and conditional
    coherence; rank 0 trains the classifiers (on that process only, not data-parallel) and
    the rest; the result is the one-process evaluation's."""
    import json

    argv = ["train", "--data-root", str(tmp_path / "cache"), "--train-points", "128",
            "--batch-size", "64", "--epochs", "1", "--latent-dim", "4", "--channels", "8",
            "--aggregator-width", "16", "--eval-points", "40", "--is-samples", "2",
            "--classifier-epochs", "1", "--no-progress", "--num-threads", "1"]
    one, run = tmp_path / "one", tmp_path / "run"
    alone = run_cli([*argv, "--output-dir", str(one)], timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    done = run_cli([*argv, "--output-dir", str(run)], processes=2, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    alone, shared = (json.loads((d / "evaluation.json").read_text()) for d in (one, run))
    assert shared["test_log_likelihood"] == pytest.approx(alone["test_log_likelihood"],
                                                          rel=1e-4)
    a, b = alone["conditional_coherence"], shared["conditional_coherence"]
    assert a["num_points"] == b["num_points"] and b["leave_one_out_mean"] is not None
    for m, value in a["leave_one_out"].items():  # float32 training: a point may flip
        assert abs(b["leave_one_out"][m] - value) <= 1 / 40 + 1e-9


@pytest.mark.slow
def test_torchrun_without_output_dir_makes_one_run_directory(tmp_path):
    """The default run directory's name holds the time of day: rank 0 chooses it for all."""
    done = run_cli(["train", "--dataset", "linear-gaussian", "--num-points", "80",
                    "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
                    "--epochs", "1", "--batch-size", "16", "--no-evaluate", "--no-progress",
                    "--num-threads", "1"], processes=2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoint.pt").is_file()
