"""Experiment scripts: helper checks and one tiny-budget smoke run per script."""

import math

import pytest
import torch

from tests.helpers import load_script


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
