"""experiments/polydigits.py and experiments/digits_svhn_text.py: each run is a RunConfig that
``pyro-mmvae train`` parses from the equivalent command, the options and recipe reach it, the
committed results re-render to the committed tables and match their command under
``--resume``, and one tiny-budget smoke run per script."""

import json
import math
import shlex

import pytest

from pyro_mmvae import cli
from pyro_mmvae.config import RunConfig
from tests.helpers import ROOT, load_script

RESULTS = ROOT / "experiments" / "results"
COMMITTED = {"polydigits": ["polydigits", "polydigits/mixture_iid_half"],
             "digits_svhn_text": ["digits_svhn_text"]}


@pytest.fixture(scope="module")
def polydigits():
    return load_script("polydigits")


@pytest.fixture(scope="module")
def digits_svhn_text():
    return load_script("digits_svhn_text")


@pytest.fixture(scope="module")
def image_data_root(tmp_path_factory):
    """One PolyDigits / DigitsSVHNText cache for these tests (built on first use)."""
    return tmp_path_factory.mktemp("image-data")


# --- configurations, without training ---------------------------------------------------------

def test_options_recipe_and_quick_reach_each_run(polydigits):
    common = polydigits.common
    args = polydigits.parse_args(["--quick", "--beta", "0.5", "--latent-dim", "3"])
    config = common.run_config(args, "moe", "mixture", 7)
    assert isinstance(config, RunConfig)
    # given options win over the recipe (beta 2.5) and the quick widths (latent 4)
    assert (config.aggregator, config.bound, config.seed, config.beta, config.latent_dim) == (
        "moe", "mixture", 7, 0.5, 3)
    assert (config.epochs, config.train_points, args.seeds) == (1, 128, [0])
    # the quick width reaches the learnable aggregators' runs, not MoE's (an error there)
    assert config.aggregator_width is None and "aggregator_width" in config.not_applying()
    assert common.run_config(args, "sumpooling", "mixture", 7).aggregator_width == 16
    assert common.run_config(polydigits.parse_args([]), "poe", "masked", 0).beta == 2.5
    with pytest.raises(SystemExit):
        polydigits.parse_args(["--seed", "3"])  # set per run: use --seeds
    with pytest.raises(SystemExit):
        polydigits.parse_args(["--not-an-option"])
    with pytest.raises(SystemExit):  # checked against every configuration before any run
        polydigits.parse_args(["--mixture-components", "3"])


def test_mixture_form_reaches_the_mixture_bound_s_runs_only(digits_svhn_text):
    common = digits_svhn_text.common
    args = digits_svhn_text.parse_args([])  # the recipe: --mixture-form sampled
    mixture = common.run_config(args, "poe", "mixture", 0).resolve()
    masked = common.run_config(args, "poe", "masked", 0).resolve()
    assert (mixture.mixture_form, mixture.masking, mixture.likelihood_weights) == (
        "sampled", "iid_half", "dimension")
    assert (masked.mixture_form, masked.masking) == (None, "iid_half")
    args = digits_svhn_text.parse_args(["--mixture-form", "average"])
    assert common.run_config(args, "moe", "mixture", 0).mixture_form == "average"


@pytest.mark.parametrize("script", ["polydigits", "digits_svhn_text"])
def test_each_run_is_the_configuration_of_its_train_command(script):
    module = load_script(script)
    args = module.parse_args(["--quick", "--beta", "1.5"])
    for aggregator in args.aggregators:
        for bound in args.bounds:
            config = module.common.run_config(args, aggregator, bound, 5)
            command = module.common.equivalent_command(config)
            argv = shlex.split(command)[2:]
            for placeholder, value in (("AGGREGATOR", aggregator), ("BOUND", bound),
                                       ("SEED", "5")):
                argv[argv.index(placeholder)] = value
            if bound == "mixture" and config.mixture_form:
                argv += ["--mixture-form", config.mixture_form]
            parsed = cli.config_from_argv(argv)
            assert parsed.resolve() == RunConfig.from_dict(
                {**config.to_dict(), "no_progress": False}).resolve()


@pytest.mark.parametrize("script", list(COMMITTED))
def test_committed_results_render_to_the_committed_tables(script, tmp_path):
    """Byte for byte: the committed tables are what --render writes from results.json."""
    module = load_script(script)
    for folder in COMMITTED[script]:
        out = tmp_path / folder.replace("/", "_")
        module.main(["--render", str(RESULTS / folder / "results.json"), "--output-dir",
                     str(out)])
        assert (out / "table.md").read_bytes() == (RESULTS / folder / "table.md").read_bytes()


# --- the papers' numbers: data files beside the scripts -----------------------------------------

def test_digits_svhn_text_paper_file_holds_what_the_table_prints(digits_svhn_text):
    path = ROOT / "experiments" / "digits_svhn_text_paper.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert "arXiv:2309.00380" in raw["source"] and "Hirt" in raw["source"]
    assert "arXiv:2105.02470" in raw["mopoe"]["source"]
    paper = digits_svhn_text.load_paper(path)
    assert paper == digits_svhn_text.PAPER
    # the printed precision survives: a std of 124 next to 54.9, trailing zeros
    assert paper["table5"]["sumpooling", "masked"] == ("7056 (124)", "2478 (9.3)", "4640 (114)",
                                                       "-6 (0.0)")
    assert paper["table6"]["poe", "masked"].split()[-1] == "1.00"
    assert paper["table13"]["poe", "masked"][0] == "0.988 (0.000)"
    assert paper["external"]["MVAE"]["table6"].split()[:2] == ["NA", "0.24"]
    assert paper["external_rows"] == {"MVAE": "PoE, subsampled", "MMVAE": "MoE, mixture",
                                      "MoPoE": "MoPoE, mixture"}
    table = (RESULTS / "digits_svhn_text" / "table.md").read_text(encoding="utf-8")
    assert "| SumPooling | masked | paper (Ours) | 7056 (124) | 2478 (9.3) |" in table
    assert "| MVAE (PoE, subsampled) | NA | 0.24 |" in table
    assert "arXiv:2309.00380" in table and "seed 004" not in table


def test_polydigits_paper_file_holds_what_the_table_prints(polydigits):
    path = ROOT / "experiments" / "polydigits_paper.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert "Sutter" in raw["source"] and "arXiv:2105.02470" in raw["source"]
    paper = polydigits.load_paper(path)
    assert paper["joint_coherence"]["moe", "mixture"] == ("MMVAE", "0.200 (0.019)")
    assert paper["pattern"] == raw["pattern"]
    table = (RESULTS / "polydigits" / "table.md").read_text(encoding="utf-8")
    assert "| MMVAE (MoE, mixture) | 0.200 (0.019) |" in table


def test_a_paper_file_with_other_columns_is_refused(digits_svhn_text, tmp_path):
    path = ROOT / "experiments" / "digits_svhn_text_paper.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["table6"]["columns"] = raw["table6"]["columns"][::-1]
    (tmp_path / "paper.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="table6"):
        digits_svhn_text.load_paper(tmp_path / "paper.json")


@pytest.mark.parametrize("script", list(COMMITTED))
def test_committed_runs_match_their_command_under_resume(script):
    """Records of the earlier version (the train argv instead of the configuration) are
    matched by --resume: the committed study's runs would not be trained again."""
    module = load_script(script)
    for folder in COMMITTED[script]:
        payload = json.loads((RESULTS / folder / "results.json").read_text())
        argv = shlex.split(payload["command"])[2:]
        args = module.parse_args(argv)
        specs = module.common.make_specs(args, RESULTS / folder, ["m0"])
        assert all(any(module.common._comparable(r, s) for s in specs)
                   for r in payload["runs"]), folder


# --- smoke runs -------------------------------------------------------------------------------

def _reject(constant):
    raise AssertionError(f"results.json holds {constant}")


def check_multimodal_results(payload, out, aggregators, bounds, num_modalities):
    """Every configuration ran, its numbers are finite and in range, and the files exist."""
    from pyro_mmvae.registry import AGGREGATORS

    for name in ("table.md", "coherence.png", "results.json", "classifiers.pt",
                 "classifiers.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "results.partial.json").exists()
    saved = json.loads((out / "results.json").read_text(), parse_constant=_reject)
    assert len(saved["runs"]) == len(payload["runs"]) == len(aggregators) * len(bounds)
    assert [(r["aggregator"], r["bound"]) for r in saved["runs"]] == [
        (a, b) for a in aggregators for b in bounds]
    accuracy = saved["classifiers"]["test_accuracy"]
    assert len(accuracy) == num_modalities and all(0 <= a <= 1 for a in accuracy.values())
    table = (out / "table.md").read_text()
    for run in saved["runs"]:
        assert run["status"] == "completed", run["name"]
        assert run["aggregator"] in AGGREGATORS and run["epochs"] == 1
        config = RunConfig.from_dict(run["config"])  # what the run trained, recorded
        assert (config.aggregator, config.bound, config.epochs) == (
            run["aggregator"], run["bound"], 1)
        assert math.isfinite(run["test_log_likelihood"]) and run["test_log_likelihood"] < 0
        for value in list(run["test_marginal_log_likelihood"].values()) + list(
                run["test_conditional_log_likelihood"].values()):
            assert math.isfinite(value) and value < 0
        coherence = run["coherence"]
        assert set(coherence["cross_by_num_inputs"]) == {str(k) for k in
                                                         range(1, num_modalities)}
        assert len(coherence["coherence"]) == 2 ** num_modalities - 1
        for per_target in coherence["coherence"].values():
            assert len(per_target) == num_modalities
            assert all(0 <= v <= 1 for v in per_target.values())
        latent = run["latent_classification"]["by_num_inputs"]
        assert set(latent) == {str(k) for k in range(1, num_modalities + 1)}
        assert all(0 <= v <= 1 for v in latent.values())
        assert 0 <= run["joint_coherence"] <= 1
        assert run["train_seconds"] > 0 and len(run["epoch_seconds"]) == 1
    return saved, table


@pytest.mark.slow  # a training run
def test_polydigits_smoke(polydigits, image_data_root, tmp_path):
    payload = polydigits.main(["--quick", "--output-dir", str(tmp_path), "--data-root",
                               str(image_data_root)])
    saved, table = check_multimodal_results(payload, tmp_path, polydigits.AGGREGATORS,
                                            polydigits.BOUNDS, 5)
    for name in ("PoE", "MoE", "MoPoE", "SumPooling", "SelfAttention"):
        for bound in ("masked", "mixture"):
            row = next(line for line in table.splitlines()
                       if line.startswith(f"| {name} | {bound} | "))
            assert "—" not in row and "diverged" not in row
    assert "0.121 (0.016)" in table and "PolyMNIST" in table  # the paper's joint coherence
    assert "pyro-mmvae train --dataset polydigits" in table and "--beta 2.5" in table
    # the CLI's bounds: masked with rho = iid_half, mixture with S = all (MMVAE / MoPoE)
    assert {(r["bound"], r["masking"], r["mixture_form"]) for r in saved["runs"]} == {
        ("masked", "iid_half", None), ("mixture", "all", "stratified")}
    # each run is the CLI's own configuration, recorded
    run = saved["runs"][0]
    config = RunConfig.from_dict(run["config"])
    assert (config.dataset, config.aggregator, config.bound, config.seed, config.beta) == (
        "polydigits", run["aggregator"], run["bound"], 0, 2.5)
    # --render rewrites the same table from results.json without training
    before = table
    polydigits.main(["--render", str(tmp_path / "results.json"), "--output-dir", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == before


@pytest.mark.slow  # a training run
def test_digits_svhn_text_smoke(digits_svhn_text, image_data_root, tmp_path):
    argv = ["--quick", "--output-dir", str(tmp_path), "--data-root", str(image_data_root),
            "--keep-runs"]
    payload = digits_svhn_text.main(argv)
    saved, table = check_multimodal_results(payload, tmp_path, digits_svhn_text.AGGREGATORS,
                                            digits_svhn_text.BOUNDS, 3)
    for run in saved["runs"]:
        assert set(run["test_marginal_log_likelihood"]) == {
            "mnist", "svhn", "text", "mnist+svhn", "mnist+text", "svhn+text"}
        assert {"mnist|svhn+text", "svhn|mnist+text", "text|mnist+svhn"} <= set(
            run["test_conditional_log_likelihood"])
    for name in ("PoE", "MoE", "SumPooling", "SelfAttention", "MoPoE"):
        for bound in ("masked", "mixture"):
            row = next(line for line in table.splitlines()
                       if line.startswith(f"| {name} | {bound} | this run | "))
            assert "diverged" not in row
    # the paper's Tables 5, 6, 8 and 13 (seed 004) beside ours
    for number in ("6775 (54.9)", "| 0.22 | 0.56 |", "0.60 | 0.75 | 0.58", "0.988 (0.000)"):
        assert number in table, number
    # seed 004's recipe: dimension weights; both bounds with rho = iid_half, one mixture draw
    assert "--masking iid_half --likelihood-weights dimension" in table
    assert "the mixture bound's rows with `--mixture-form sampled`" in table
    assert {(r["bound"], r["masking"], r["mixture_form"]) for r in saved["runs"]} == {
        ("masked", "iid_half", None), ("mixture", "iid_half", "sampled")}
    # --keep-runs: pyro-mmvae run directories that the CLI restores, with the shared classifiers
    from pyro_mmvae.runs import load_run

    run_dir = tmp_path / "runs" / "selfattention-mixture-seed0"
    assert (run_dir / "classifiers.pt").read_bytes() == (tmp_path / "classifiers.pt").read_bytes()
    config, _, _, guide, ckpt = load_run(run_dir)
    assert (config.aggregator, config.bound, config.mixture_form, ckpt["epoch"]) == (
        "selfattention", "mixture", "sampled", 1)
    assert type(guide.aggregator).__name__ == "SelfAttention"
    # --resume keeps every finished run: nothing is trained again
    again = digits_svhn_text.main(argv + ["--resume"])
    assert [r["train_seconds"] for r in again["runs"]] == [
        r["train_seconds"] for r in saved["runs"]]
