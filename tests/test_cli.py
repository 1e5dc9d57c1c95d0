"""The ``pyro-mmvae`` command line: end-to-end training runs, help and argument errors."""

import json
import math
import re

import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.train import load_checkpoint

TINY = ["--epochs", "1", "--num-points", "200", "--no-progress"]

FINAL_KEYS = ("final_train_loss", "train_exact_log_likelihood", "test_exact_log_likelihood",
              "pca_mle_train_log_likelihood", "pca_mle_test_log_likelihood", "relative_llh_gap",
              "test_is_log_likelihood")


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--output-dir", str(out)]) == 0
    for name in ("config.json", "metrics.json", "checkpoint.pt", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "linear-gaussian"
    assert (config["aggregator"], config["bound"]) == ("poe", "masked")
    assert len(config["modality_dims"]) == 5 and config["latent_dim"] == 5
    assert config["num_train"] == 160 and config["num_test"] == 40

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert len(metrics["train_loss"]) == 1
    for key in FINAL_KEYS:
        assert math.isfinite(metrics[key]), key
    # Log-likelihoods per data point of ~225 unit-noise Gaussian dimensions, not sums.
    assert -2000 < metrics["train_exact_log_likelihood"] < 0
    # PCA is the maximum-likelihood linear model on the training data.
    assert metrics["pca_mle_train_log_likelihood"] >= metrics["train_exact_log_likelihood"]
    assert metrics["relative_llh_gap"] >= 0
    assert metrics["is_num_samples"] == 100

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["bound"] == "masked"
    printed = capsys.readouterr().out
    assert "relative LLH gap" in printed and str(out) in printed


@pytest.mark.parametrize("aggregator,bound,extra", [
    ("moe", "mixture", []),
    ("mopoe", "subsampled", ["--beta", "0.5"]),
    ("poe", "masked", ["--masking", "hierarchical", "--iwae", "--num-particles", "2"]),
])
def test_train_other_configurations(tmp_path, aggregator, bound, extra):
    argv = ["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "16",
            "--aggregator", aggregator, "--bound", bound, *extra, "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in FINAL_KEYS)


def test_same_seed_same_result(tmp_path):
    argv = ["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
            "--is-samples", "4", "--seed", "3"]
    results = []
    for name in ("a", "b"):
        assert cli.main(argv + ["--output-dir", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        results.append((metrics["train_loss"], metrics["train_exact_log_likelihood"]))
    assert results[0] == results[1]


def test_default_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
            "--aggregator", "moe", "--bound", "mixture", "--is-samples", "4"]
    assert cli.main(argv) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("linear-gaussian-moe-mixture-")
    assert (run / "metrics.json").is_file()


def test_main_restores_thread_count(tmp_path):
    before = torch.get_num_threads()
    cli.main(["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
              "--is-samples", "4", "--num-threads", "1", "--output-dir", str(tmp_path)])
    assert torch.get_num_threads() == before


def test_diverged_run_exits_1(tmp_path, monkeypatch, capsys):
    class NaNLoss(cli.MaskedMultimodalELBO):
        def loss_and_grads(self, *args, **kwargs):
            super().loss_and_grads(*args, **kwargs)
            return float("nan")

    monkeypatch.setattr(cli, "build_loss", lambda args: NaNLoss())
    argv = ["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "training diverged" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "train" in text
    if argv[0] == "train":
        for option in ("--dataset", "--aggregator", "--bound", "--masking", "--beta",
                       "--latent-dim", "--num-modalities", "--num-points", "--epochs",
                       "--batch-size", "--lr", "--num-particles", "--iwae", "--seed",
                       "--device", "--output-dir", "--no-progress"):
            assert option in text, option


@pytest.mark.parametrize("argv,message", [
    ([], "required"),
    (["fly"], "invalid choice"),
    (["train", "--aggregator", "sum"], "invalid choice"),
    (["train", "--bound", "elbo"], "invalid choice"),
    (["train", "--dataset", "mnist"], "invalid choice"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--lr", "-1"], "positive number"),
    (["train", "--test-fraction", "1.5"], r"in \[0, 1\)"),
    (["train", "--unknown-option"], "unrecognized arguments"),
    (["train", "--num-points", "100", "--batch-size", "500"], "exceeds the 80 training points"),
])
def test_bad_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert re.search(message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--device", "cuda", "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("aggregator", ["moe", "mopoe", "sumpooling", "selfattention",
                                        "sumpooling-mixture", "selfattention-mixture"])
def test_every_aggregator_trains_from_the_command_line(tmp_path, aggregator):
    run = tmp_path / aggregator
    assert cli.main(["train", "--aggregator", aggregator, "--epochs", "1", "--num-points", "200",
                 "--batch-size", "50", "--aggregator-width", "16", "--hidden", "16",
                 "--is-samples", "4", "--output-dir", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["relative_llh_gap"])
