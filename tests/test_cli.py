"""The ``pyro-mmvae`` command line: end-to-end training runs, help and argument errors."""

import json
import math
import re

import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.train import load_checkpoint
from tests.helpers import with_width

LINEAR = ["--dataset", "linear-gaussian"]
TINY = [*LINEAR, "--epochs", "1", "--num-points", "200", "--no-progress"]

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
    """--num-threads 1 holds during the run only (the suite pins one thread, so the test first
    sets two, which the run must restore)."""
    before = torch.get_num_threads()
    seen = []
    real_fit = cli.fit
    try:
        torch.set_num_threads(2)
        cli.fit = lambda *a, **k: (seen.append(torch.get_num_threads()), real_fit(*a, **k))[1]
        cli.main(["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
                  "--is-samples", "4", "--num-threads", "1", "--output-dir", str(tmp_path)])
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        cli.fit = real_fit
        torch.set_num_threads(before)


def test_diverged_run_exits_1(tmp_path, monkeypatch, capsys):
    from pyro_mmvae.infer import MaskedMultimodalELBO

    class NaNLoss(MaskedMultimodalELBO):
        def loss_and_grads(self, *args, **kwargs):
            super().loss_and_grads(*args, **kwargs)
            return float("nan")

    monkeypatch.setattr(cli, "build_loss", lambda args, data: NaNLoss())
    argv = ["train", *TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8",
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "training diverged" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"],
                                  ["generate", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = {"train": ("--dataset", "--aggregator", "--bound", "--prior", "--masking",
                         "--beta", "--latent-dim", "--num-modalities", "--num-points",
                         "--epochs", "--batch-size", "--lr", "--num-particles", "--iwae",
                         "--seed", "--device", "--output-dir", "--resume", "--no-progress",
                         "--beta-warmup", "--expert-scale", "polydigits", "digits-svhn-text"),
               "evaluate": ("RUN_DIR", "--is-samples", "--eval-points", "--device"),
               "generate": ("RUN_DIR", "--given", "--num-columns", "--output")}
    for option in options.get(argv[0], ("train", "evaluate", "generate")):
        assert option in text, option


@pytest.mark.parametrize("argv,message", [
    ([], "required"),
    (["fly"], "invalid choice"),
    (["train", "--aggregator", "sum"], "invalid choice"),
    (["train", "--bound", "elbo"], "invalid choice"),
    (["train", "--dataset", "mnist"], "invalid choice"),
    (["train", "--prior", "gmm", *LINEAR], "not available for linear-gaussian"),
    (["evaluate", "no-such-run"], "not a pyro-mmvae run directory"),
    (["generate", "no-such-run"], "required: --given"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--lr", "-1"], "positive number"),
    (["train", "--test-fraction", "1.5"], r"in \[0, 1\)"),
    (["train", "--beta-warmup", "-1"], "argument --beta-warmup: must be a non-negative integer"),
    (["train", "--beta-warmup", "2.5"], "argument --beta-warmup: must be a non-negative integer"),
    (["train", "--expert-scale", "exp"], "argument --expert-scale: invalid choice"),
    (["train", "--unknown-option"], "unrecognized arguments"),
    (["train", *LINEAR, "--num-points", "100", "--batch-size", "500"],
     "exceeds the 80 training points"),
])
def test_bad_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-mmvae") and ": error: " in err, err
    assert re.search(message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *LINEAR, "--device", "cuda", "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("aggregator", ["moe", "mopoe", "sumpooling", "selfattention",
                                        "sumpooling-mixture", "selfattention-mixture",
                                        "poe-divide", "subset-encoders", "joint"])
def test_every_aggregator_trains_from_the_command_line(tmp_path, aggregator):
    run = tmp_path / aggregator
    argv = with_width([*LINEAR, "--aggregator", aggregator, "--epochs", "1", "--num-points",
                       "200", "--batch-size", "50", "--hidden", "16", "--is-samples", "4",
                       "--no-progress"], 16)
    assert cli.main(["train", *argv, "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["relative_llh_gap"])


# --- image datasets: the default workflow --------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One PolyDigits / DigitsSVHNText cache for the module (built on first use, ~3 s)."""
    return tmp_path_factory.mktemp("data")


def tiny_images(data_root, *extra):
    return with_width(["--data-root", str(data_root), "--train-points", "128", "--batch-size",
                       "64", "--epochs", "1", "--latent-dim", "4", "--channels", "8",
                       "--eval-points", "40", "--is-samples", "2", "--classifier-epochs", "1",
                       "--no-progress", *extra], 16)


EVALUATION_FILES = ("evaluation.json", "classifiers.pt", "coherence.png", "rate_distortion.png",
                    "generation_all.png", "samples.png")


@pytest.fixture(scope="module")
def polydigits_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "polydigits"
    assert cli.main(["train", *tiny_images(data_root), "--output-dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_default_train_on_polydigits_writes_every_promised_file(polydigits_run, data_root):
    out = polydigits_run
    for name in ("config.json", "metrics.json", "checkpoint.pt", "loss_curve.png",
                 *EVALUATION_FILES, *(f"generation_m{k}.png" for k in range(5))):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["aggregator"], config["bound"]) == (
        "polydigits", "sumpooling", "masked")
    assert config["num_train"] == 128 and config["modality_dims"]["m0"] == 3 * 16 * 16
    # no paths (the cache directory belongs to the machine), no options of other datasets
    text = (out / "config.json").read_text()
    assert str(data_root) not in text and str(out) not in text
    assert config["dataset_info"]["cache"] == "polydigits-v1-train-16px-n10000-seed0.npz"
    assert not {"data_root", "output_dir", "num_points", "num_modalities", "test_fraction",
                "hidden"} & set(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["test_log_likelihood"])
    evaluation = json.loads((out / "evaluation.json").read_text())
    coherence = evaluation["conditional_coherence"]
    assert len(coherence["coherence"]) == 31  # every non-empty subset of 5 modalities
    assert set(coherence["leave_one_out"]) == {f"m{k}" for k in range(5)}
    assert all(0 <= v <= 1 for v in coherence["cross"].values())
    assert 0 <= evaluation["joint_coherence"] <= 1
    assert len(evaluation["latent_classification"]["accuracy"]) == 31
    assert set(evaluation["test_leave_one_out_log_likelihood"]) == {f"m{k}" for k in range(5)}
    assert evaluation["rate_distortion"]["full_rate"] >= 0
    by_size = evaluation["rate_distortion_by_subset_size"]
    assert by_size and set(by_size) <= {"1", "2", "3", "4"}
    assert sum(v["num_points"] for v in by_size.values()) <= 40
    assert all(v["rate"] >= 0 and v["cross_rate"] >= 0 for v in by_size.values())


@pytest.mark.slow
def test_evaluate_and_generate_a_saved_run(polydigits_run, data_root, capsys):
    out = polydigits_run
    before = json.loads((out / "evaluation.json").read_text())
    root = ["--data-root", str(data_root)]
    assert cli.main(["evaluate", str(out), "--no-progress", *root]) == 0
    after = json.loads((out / "evaluation.json").read_text())
    # the saved classifiers are reused and the model restored exactly: coherence is identical
    assert after["conditional_coherence"] == before["conditional_coherence"]
    assert after["classifier_test_accuracy"] == before["classifier_test_accuracy"]
    assert cli.main(["generate", str(out), "--given", "m0,m2", "--num-columns", "3",
                     *root]) == 0
    png = out / "generate_m0+m2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        cli.main(["generate", str(out), "--given", "m9", *root])
    assert "unknown modality 'm9'" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(data_root, tmp_path):
    args = tiny_images(data_root, "--no-evaluate")
    args[args.index("--epochs") + 1] = "2"
    assert cli.main(["train", *args, "--output-dir", str(tmp_path / "full")]) == 0
    args[args.index("--epochs") + 1] = "1"
    assert cli.main(["train", *args, "--output-dir", str(tmp_path / "part")]) == 0
    assert cli.main(["train", "--resume", str(tmp_path / "part"), "--epochs", "2",
                     "--no-evaluate", "--no-progress", "--data-root", str(data_root)]) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert resumed["epoch"] == 2
    for part in ("model", "guide"):
        for key, value in full[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert full["history"]["loss"] == resumed["history"]["loss"]


def test_corrupted_checkpoint_is_a_clear_error(polydigits_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(polydigits_run, run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run), "--epochs", "2"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert "corrupted" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--dataset", "digits-svhn-text", "--aggregator", "mopoe", "--bound", "mixture"],
    ["--aggregator", "poe", "--prior", "gmm", "--prior-components", "3", "--bound", "subsampled"],
    ["--dataset", "digits-svhn-text", "--aggregator", "subset-encoders", "--bound", "recursive",
     "--beta-norm", "0.01"],
    ["--dataset", "digits-svhn-text", "--aggregator", "poe-divide", "--bound", "multisource",
     "--objective", "hybrid", "--num-particles", "2"],
])
@pytest.mark.slow
def test_other_image_configurations(data_root, tmp_path, extra):
    assert cli.main(["train", *tiny_images(data_root, *extra), "--output-dir",
                     str(tmp_path)]) == 0
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert math.isfinite(evaluation["test_log_likelihood"])
    assert evaluation["conditional_coherence"]["leave_one_out_mean"] is not None


# --- --beta-warmup and --expert-scale: the configuration builds what it names ----------------

SMALL = [*TINY, "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8", "--is-samples", "4"]


def spy_on_builders(monkeypatch):
    """Replace cli.build_loss / cli.build_guide by wrappers that keep what they built and record
    ``beta`` at every training step."""
    from pyro_mmvae import runs
    built = {"losses": [], "guides": [], "betas": []}

    def build_loss(args, data):
        loss = runs.build_loss(args, data)
        inner = loss.loss_and_grads

        def loss_and_grads(*a, **k):
            built["betas"].append(loss.beta)
            return inner(*a, **k)

        loss.loss_and_grads = loss_and_grads
        built["losses"].append(loss)
        return loss

    def build_guide(args, data):
        guide = runs.build_guide(args, data)
        built["guides"].append(guide)
        return guide

    monkeypatch.setattr(cli, "build_loss", build_loss)
    monkeypatch.setattr(cli, "build_guide", build_guide)
    return built


def test_beta_warmup_builds_the_schedule_and_survives_resume(tmp_path, monkeypatch):
    built = spy_on_builders(monkeypatch)
    run = tmp_path / "run"
    # 160 train points, batch 32: 5 steps per epoch; beta(k) = 2 * min(k, 10) / 10
    argv = ["train", *SMALL, "--batch-size", "32", "--beta", "2", "--beta-warmup", "10",
            "--no-evaluate", "--output-dir", str(run)]
    assert cli.main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["beta_warmup"] == 10 and config["beta"] == 2.0
    (loss,) = built["losses"]
    assert built["betas"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert loss.step == 5 and load_checkpoint(run / "checkpoint.pt")["step"] == 5
    # the bound is linear_warmup(10, 0, --beta): 0, beta / 2, beta, beta at steps 0, 5, 10, 20
    values = []
    for k in (0, 5, 10, 20):
        loss.set_step(k)
        values.append(loss.beta)
    assert values == [0.0, 1.0, 2.0, 2.0]

    # a resumed run rebuilds the schedule from config.json and continues it at the stored step
    built["betas"].clear()
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-progress",
                     "--no-evaluate"]) == 0
    resumed = built["losses"][-1]
    assert resumed is not loss and resumed.beta_schedule(5) == 1.0
    assert built["betas"] == pytest.approx([1.0, 1.2, 1.4, 1.6, 1.8])
    assert resumed.step == 10 and load_checkpoint(run / "checkpoint.pt")["step"] == 10
    assert json.loads((run / "config.json").read_text())["beta_warmup"] == 10


def test_no_beta_warmup_is_a_constant_beta(tmp_path, monkeypatch):
    built = spy_on_builders(monkeypatch)
    argv = ["train", *SMALL, "--batch-size", "32", "--beta", "0.5", "--no-evaluate",
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "config.json").read_text())["beta_warmup"] == 0
    (loss,) = built["losses"]
    assert loss.beta_schedule is None and built["betas"] == [0.5] * 5


def test_beta_option_from_a_saved_configuration():
    from pyro_mmvae.config import RunConfig
    from pyro_mmvae.infer.schedules import LinearWarmup
    from pyro_mmvae.runs import beta_option
    saved = {"dataset": "linear-gaussian", "beta": 0.5}  # saved before the option
    assert beta_option(RunConfig.from_saved(saved).config) == 0.5
    schedule = beta_option(RunConfig(beta=3.0, beta_warmup=4))
    assert isinstance(schedule, LinearWarmup) and [schedule(k) for k in (0, 2, 4, 8)] == [
        0.0, 1.5, 3.0, 3.0]
    for bad in (-2, 1.5, "10", True):
        with pytest.raises(ValueError, match="--beta-warmup must be a non-negative integer"):
            beta_option(RunConfig(beta=1.0, beta_warmup=bad))


@pytest.mark.parametrize("aggregator", ["poe", "moe", "mopoe", "sumpooling", "selfattention",
                                        "sumpooling-mixture", "selfattention-mixture",
                                        "poe-divide", "subset-encoders", "joint"])
@pytest.mark.parametrize("scale", ["softplus", "logvar"])
def test_expert_scale_reaches_every_aggregator(aggregator, scale):
    from pyro_mmvae.runs import build_guide, load_data
    config = cli.config_from_argv(with_width([*SMALL, "--aggregator", aggregator,
                                              "--expert-scale", scale], 8))
    guide = build_guide(config, load_data(config))
    heads = [m for m in guide.modules() if hasattr(m, "min_scale")]
    assert heads and heads[0] is guide.aggregator
    assert all(m.scale == scale for m in heads)


def test_expert_scale_end_to_end(tmp_path, monkeypatch):
    built = spy_on_builders(monkeypatch)
    argv = ["train", *SMALL, "--aggregator", "sumpooling", "--aggregator-width", "8",
            "--expert-scale", "logvar", "--no-evaluate", "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "config.json").read_text())["expert_scale"] == "logvar"
    (guide,) = built["guides"]
    assert guide.aggregator.scale == "logvar"
    # and a restored run rebuilds it so
    from pyro_mmvae.runs import load_run
    _, _, _, restored, _ = load_run(tmp_path)
    assert restored.aggregator.scale == "logvar"


def test_saved_configuration_without_expert_scale_is_softplus():
    from pyro_mmvae.config import RunConfig
    from pyro_mmvae.runs import make_aggregator
    saved = dict(dataset="linear-gaussian", aggregator="sumpooling", latent_dim=2,
                 aggregator_width=8, num_components=3)
    assert make_aggregator(RunConfig.from_saved(saved).config, 4, 2).scale == "softplus"
