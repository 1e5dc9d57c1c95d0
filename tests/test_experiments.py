"""Experiment scripts: helper checks and one tiny-budget smoke run per script."""

import json
import math
import shutil

import pytest
import torch

from tests.helpers import ROOT, load_script


def test_msnvi_toy_smoke(tmp_path):
    toy = load_script("msnvi_toy")
    payload = toy.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(payload["rows"]) == {"belief x1", "belief x2", "PoE(x1, x2)",
                                    "SIR of belief x1 (both likelihoods)"}
    for row in payload["rows"].values():
        assert 0 <= row["near true point"] <= 1 and math.isfinite(row["mean distance"])
    assert set(payload["bounds_nelbo"]) == {"ind", "moe", "poe"}
    assert all(math.isfinite(v) for v in payload["bounds_nelbo"].values())
    for name in ("README.md", "results.json", "beliefs.png"):
        assert (tmp_path / name).is_file()
    assert "| PoE(x1, x2) |" in (tmp_path / "README.md").read_text()


def test_msnvi_pendulum_smoke(tmp_path):
    pend = load_script("msnvi_pendulum")
    payload = pend.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(payload["rows"]) == set(pend.FUSIONS)
    assert all(math.isfinite(v) for r in payload["rows"].values() for v in r.values())
    assert set(payload["conflict"]) == {"camera 0 vs others, before",
                                        "camera 0 vs others, after",
                                        "camera 1 vs 2, before", "camera 1 vs 2, after"}
    for name in ("README.md", "results.json", "sweep.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow  # fourteen small training runs
def test_msnvi_digits_smoke(tmp_path):
    digits = load_script("msnvi_digits")
    payload = digits.main(["--quick", "--variants", "tb", "no", "--output-dir", str(tmp_path)])
    trained = [f"{o} K={k}" for o, k in digits.TRAINED]
    for variant in ("tb", "no"):
        table = payload["negative_bounds"][variant]
        assert set(table) == set(trained) | {"IWAE"}
        for name in trained:
            assert set(table[name]) == {"ind", "moe", "poe"}
            assert all(math.isfinite(v) and v > 0 for v in table[name].values())
    # one-shot imputation: one number; the chain: one per step
    chains = payload["imputation"]["tb"]
    assert len(chains["chain"]) == len(chains["chain_iwae"]) == 5
    assert payload["imputation"]["tb"]["one_shot"] < 0
    for name in ("README.md", "results.json", "samples.png", "imputation.png"):
        assert (tmp_path / name).is_file()
    text = (tmp_path / "README.md").read_text()
    assert "| L(PoE) |" in text and "(87.59)" in text  # the paper's TB cell beside ours
    # --render rewrites the same README from results.json
    (tmp_path / "README.md").write_text("stale")
    digits.main(["--render", str(tmp_path / "results.json")])
    assert (tmp_path / "README.md").read_text() == text


def test_msnvi_digits_builds_the_named_sources_and_observations():
    digits = load_script("msnvi_digits")

    class Args:
        latent, hidden = 2, [8]

    dims = {"top": 32, "bottom": 32, "full": 64, "clean": 64, "noisy0": 64}
    model, guide = digits.build(("full",), ("top", "bottom"), dims, Args, 0)
    assert tuple(guide.modalities) == ("full",)
    assert tuple(model.modalities) == ("top", "bottom")
    assert guide.aggregator.prior_expert == "divide"
    model, guide = digits.build(("noisy0",), ("clean",), dims, Args, 0)
    assert tuple(guide.modalities) == ("noisy0",) and tuple(model.modalities) == ("clean",)
    # the baseline's hard-wired image is the binarised parts side by side
    transform = digits.with_full("tb", lambda b, m, g: (b, m))
    batch, mask = transform({"top": torch.zeros(3, 32), "bottom": torch.ones(3, 32)},
                            {"top": torch.ones(3, dtype=torch.bool),
                             "bottom": torch.ones(3, dtype=torch.bool)})
    assert torch.equal(batch["full"], torch.cat([torch.zeros(3, 32), torch.ones(3, 32)], -1))
    assert mask["full"].all()


@pytest.mark.slow  # a dozen small training runs
def test_m2vae_mog_smoke(tmp_path):
    mog = load_script("m2vae_mog")
    payload = mog.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(payload["models"]) == set(mog.MODELS)
    for runs in payload["models"].values():
        (r,) = runs  # one seed in the quick run
        assert set(r["elbo"]) == {"a", "b", "a+b"}
        assert all(0 <= v <= 1 for v in r["coherence"].values())
        assert 0 <= r["reencoding_kept"] <= 1 and 0 <= r["joint_accuracy"] <= 1
        assert "embeddings" not in r  # per-point arrays stay out of results.json
    assert set(payload["sweep"]) == {"0.01,0.0", "0.01,0.01"}
    for name in ("README.md", "results.json", "data.png", "comparison.png", "sweep.png",
                 "reencoding.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow  # e-digits and a dozen small training runs
def test_m2vae_digits_smoke(tmp_path):
    m2 = load_script("m2vae_digits")
    payload = m2.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(payload["validation_joint_elbo"]) == {"e", "me", "m"}
    assert set(payload["evaluation_elbos"]) == set(m2.MODELS)
    for cells in payload["evaluation_elbos"].values():
        assert set(cells) == {"a+b", "a", "b"}
        assert all(len(v) == 1 and math.isfinite(v[0]) and v[0] < 0 for v in cells.values())
    text = (tmp_path / "README.md").read_text()
    assert "(-10.75)" in text and "(-199.23)" in text  # the paper's numbers beside ours
    assert (tmp_path / "latents.png").is_file()


@pytest.mark.parametrize("script", ["m2vae_mog", "m2vae_digits"])
def test_m2vae_scripts_train_what_they_name(script, monkeypatch):
    from pyro_mmvae import JointMultimodalELBO, MixtureMultimodalELBO, RecursiveMultimodalELBO
    from pyro_mmvae.guides import JointEncoder, SubsetEncoders

    mod = load_script(script)
    calls = []
    monkeypatch.setattr(mod, "fit", lambda model, guide, loss, data, **kw: calls.append(
        (guide.aggregator, loss, kw)))
    monkeypatch.setattr(mod, "fit_two_stage", lambda model, guide, data, **kw: calls.append(
        (guide.aggregator, kw.pop("losses", "default losses"), kw)))

    class Args:
        width, branch, joint, scale, batch_size, lr, epochs = 8, 8, 4, 0.1, 16, 1e-3, 3
        alpha, beta_norm = 0.25, 0.01

    kinds = ["M2VAE", "tVAE", "JMVAE-Zero"] + (["JMVAE"] if script == "m2vae_digits" else [])
    for kind in kinds:
        if script == "m2vae_mog":
            mod.train(kind, {}, Args, 0.5, 0.25, 7)
        else:
            mod.train(kind, {}, Args, 7)
    (m2, m2loss, kw), (tv, tvloss, tvkw), (jz, jzloss, _) = calls[:3]
    assert isinstance(m2, SubsetEncoders) and isinstance(m2loss, RecursiveMultimodalELBO)
    assert m2loss.alpha == 0.25 and not isinstance(m2loss, JointMultimodalELBO)
    assert kw["seed"] == 7 and kw["epochs"] == 3
    assert isinstance(tv, SubsetEncoders) and tvkw["epochs"] == (3, 3)
    assert isinstance(jz, JointEncoder) and isinstance(jzloss, MixtureMultimodalELBO)
    assert jzloss.masking_name == "zero_augmented"
    if script == "m2vae_digits":  # beta_S = beta_norm * D_S / D_z for every model
        assert m2loss.beta_norm == 0.01 and m2loss.input_dims == {"a": 64, "b": 64}
        joint, unimodal = tvloss
        assert isinstance(joint, JointMultimodalELBO) and joint.alpha == 0
        assert unimodal.subsets == "unimodal" and unimodal.alpha == 0
        assert joint.beta_norm == unimodal.beta_norm == 0.01
        assert jzloss.beta == pytest.approx(0.64)
        assert isinstance(calls[3][1], JointMultimodalELBO) and calls[3][1].alpha == 0.25
        assert calls[3][1].beta_norm == 0.01
    else:  # one beta everywhere
        assert m2loss.beta == jzloss.beta == 0.5 and tvloss == "default losses"
        assert tvkw["beta"] == 0.5


# --- the papers' numbers in data files; committed READMEs re-render byte for byte -----------

EXPERIMENTS = ROOT / "experiments"
# script -> how it re-renders a results folder DIR (argv)
RERENDER = {"msnvi_digits": lambda d: ["--render", str(d / "results.json")],
            "m2vae_digits": lambda d: ["--rerender", str(d)],
            "m2vae_mog": lambda d: ["--rerender", str(d)],
            "msnvi_toy": lambda d: ["--rerender", str(d)],
            "msnvi_pendulum": lambda d: ["--rerender", str(d)]}
OWN = ["msnvi_digits", "m2vae_digits", "m2vae_mog", "msnvi_toy", "msnvi_pendulum",
       "digits_svhn_text", "polydigits"]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*_paper.json")), ids=lambda p: p.name)
def test_each_paper_file_names_a_real_reference(path):
    paper = json.loads(path.read_text(encoding="utf-8"))
    assert (EXPERIMENTS / path.name.replace("_paper.json", ".py")).is_file()
    source = paper["source"]
    assert "arXiv:" in source or "OpenReview" in source, source
    assert "seed 004" not in source.lower() and "spec" not in source


def test_msnvi_digits_paper_file_holds_what_the_table_prints():
    digits = load_script("msnvi_digits")
    table, decimals, source = digits.load_paper()
    assert table == digits.PAPER and decimals == 2 and "arXiv:1811.04451" in source
    assert table["tb"]["poe"][2] == 87.59 and table["tb"]["ind"][0] == 102.20
    assert table["qu"]["ind"][-1] is None  # the IWAE baseline has one number, its bound
    raw = (EXPERIMENTS / "msnvi_digits_paper.json").read_text(encoding="utf-8")
    assert "102.20" in raw  # written as printed
    readme = (EXPERIMENTS / "results" / "msnvi_digits" / "README.md").read_text()
    assert "(87.59)" in readme and "(102.20)" in readme and "arXiv:1811.04451" in readme


def test_m2vae_digits_paper_file_holds_what_the_table_prints():
    m2 = load_script("m2vae_digits")
    table, validation, decimals, source = m2.load_paper()
    assert list(table) == list(m2.MODELS) and table["M2VAE"] == (-10.75, -10.91, -16.01)
    assert validation == {"e": -199.23, "me": -204.48} and decimals == 2
    assert "ICLR 2019" in source and "Korthals" in source
    readme = (EXPERIMENTS / "results" / "m2vae_digits" / "README.md").read_text()
    assert "(-10.75)" in readme and "(-199.23)" in readme and "(-23.60)" in readme


@pytest.mark.parametrize("script", list(RERENDER))
def test_committed_readme_rerenders_byte_for_byte(script, tmp_path):
    """Re-rendering a committed folder (a copy: results.json and the README whose header
    records the command and machine of the run) writes the committed README again, and
    leaves results.json as it is."""
    committed = EXPERIMENTS / "results" / script
    for name in ("results.json", "README.md"):
        shutil.copyfile(committed / name, tmp_path / name)
    (tmp_path / "README.md").write_text(  # a stale body under the recorded header
        (committed / "README.md").read_text().split("\n\n")[1] + "\n\nstale\n")
    module = load_script(script)
    payload = module.main(RERENDER[script](tmp_path))
    assert (tmp_path / "README.md").read_bytes() == (committed / "README.md").read_bytes()
    assert (tmp_path / "results.json").read_bytes() == (committed / "results.json").read_bytes()
    assert payload["command"].startswith(f"python experiments/{script}.py")


def test_rerender_prefers_the_recorded_command_and_machine(tmp_path):
    tables = load_script("_multimodal_tables")
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n- Command: `python experiments/x.py --quick`\n- Budget: b\n"
                      "- Seeds: 0\n- Wall time: 3 s (2 CPU cores, one torch thread)\n")
    assert tables.recorded_run({}, readme, "x.py") == {
        "command": "python experiments/x.py --quick",
        "machine": "2 CPU cores, one torch thread"}
    assert tables.recorded_run({"command": "c", "machine": "m"}, readme, "x.py") == {
        "command": "c", "machine": "m"}
    assert tables.recorded_run({"argv": ["--seed", "1"]}, tmp_path / "none", "x.py") == {
        "command": "python experiments/x.py --seed 1"}


@pytest.mark.parametrize("script", OWN)
def test_no_internal_note_names(script):
    """Citations are real references, not the names of internal notes."""
    files = [EXPERIMENTS / f"{script}.py"] + sorted(
        (EXPERIMENTS / "results" / script).rglob("*.md"))
    for path in files:
        text = path.read_text(encoding="utf-8").lower()
        for name in ("seed 004", "seed-004", "seed's", "spec §", "research notes", "research/"):
            assert name not in text, (path.name, name)
