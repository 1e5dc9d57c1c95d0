"""Experiment scripts: helper checks and one tiny-budget smoke run per script."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    """Import ``experiments/<name>.py`` as a module (``experiments`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name}",
                                                  ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def linear_gaussian():
    return load_script("linear_gaussian")


def test_weak_mcc_is_invariant_to_invertible_linear_maps(linear_gaussian):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 3))
    mixed = z @ rng.standard_normal((3, 3)) + 5.0
    assert linear_gaussian.weak_mcc(z, mixed) == pytest.approx(1.0, abs=1e-6)
    assert linear_gaussian.weak_mcc(z, rng.standard_normal((2000, 3))) < 0.15


def test_weak_mcc_of_a_noisy_copy_matches_its_correlation(linear_gaussian):
    # z_hat = z + noise of variance v: each canonical correlation is 1 / sqrt(1 + v).
    rng = np.random.default_rng(1)
    z = rng.standard_normal((20000, 2))
    z_hat = (z + 0.5 * rng.standard_normal(z.shape)) @ np.array([[1.0, 2.0], [0.0, 1.0]])
    assert linear_gaussian.weak_mcc(z, z_hat) == pytest.approx(1 / math.sqrt(1.25), abs=0.01)


def test_fixed_noise_mle_is_bounded_by_pca_and_beats_the_truth(linear_gaussian):
    from models import pca_maximum_likelihood
    from pyro_mmvae.data.linear_gaussian import illustrative_bimodal

    ds = illustrative_bimodal(2000, seed=3, dtype=torch.float64)
    x = torch.cat(list(ds.data.values()), -1)
    noise = torch.tensor([0.1, 10.0], dtype=torch.float64)
    floor = linear_gaussian.fixed_noise_mle(x, noise, 1)
    with torch.no_grad():
        truth = linear_gaussian.true_model(ds, torch.float64).exact_log_likelihood(ds.data).sum()
    # D = 1 of 2 dimensions: the PCA fit is the saturated Gaussian, an upper bound.
    assert float(truth) <= floor <= float(pca_maximum_likelihood(x, 1)[3]) + 1e-6


def test_true_private_model_matches_the_stacked_loadings(linear_gaussian):
    from pyro_mmvae.data.linear_gaussian import private_latent_study

    ds = private_latent_study(300, num_modalities=3, shared_dim=2, private_dim=2, seed=4,
                              dtype=torch.float64)
    model = linear_gaussian.true_model(ds, torch.float64, private_dim=2)
    w = torch.cat([ds.weights[m] for m in ds.data], 0)  # (sum D_m, 2 + 3 * 2)
    assert torch.equal(linear_gaussian.stacked_loadings(model).detach(), w)
    x = torch.cat(list(ds.data.values()), -1)
    mean = torch.cat([ds.biases[m] for m in ds.data])
    cov = w @ w.T + torch.eye(w.shape[0], dtype=w.dtype)
    expected = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    with torch.no_grad():
        assert torch.allclose(model.exact_log_likelihood(ds.data), expected, atol=1e-8)
    # orthonormal [V_m | W_m]: the smallest singular value is a private direction's, 1.
    assert min(linear_gaussian.latent_usage(model)) == pytest.approx(1.0, abs=1e-8)


def test_linear_gaussian_learnable_and_equivariant_smoke(linear_gaussian, tmp_path):
    payload = linear_gaussian.main(["--quick", "--tables", "2", "2e", "--aggregators",
                                    "selfattention", "--pe-guides", "pe-sumpooling",
                                    "--output-dir", str(tmp_path)])
    runs = payload["runs"]
    assert [(r["table"], r["aggregator"], r["bound"]) for r in runs] == [
        (t, a, b) for t, a in ((2, "selfattention"), ("2e", "pe-sumpooling"))
        for b in ("masked", "mixture")]
    for run in runs:
        keys = ["rel_llh_gap", "llh_model", "mcc", "mcc_posterior_mean"] + (
            ["mcc_shared", "mcc_shared_posterior_mean"] if run["table"] == "2e" else [])
        for key in keys:
            assert math.isfinite(run[key]), (run["table"], run["aggregator"], key)
        # stacked latent: 5 shared (+ 5 private per modality) directions in the loadings
        assert len(run["loading_singular_values"]) == (30 if run["table"] == "2e" else 5)
    ref = payload["reference_exact_posterior"]["table2e"][0]
    assert 0 < ref["mcc"] < ref["mcc_shared"] <= 1  # private latents are harder to recover
    text = (tmp_path / "table2_equivariant.md").read_text()
    assert "| PE-SumPooling | this run |" in text and "| PE-PoE | paper (not run) |" in text
    assert "n/a" not in text.split("| PE-SumPooling | this run |")[1].split("\n")[0]
    text = (tmp_path / "table2.md").read_text()
    assert "| SelfAttention | this run |" in text and "| SumPooling | paper (not run) |" in text
    assert (tmp_path / "table2_equivariant.png").stat().st_size > 0
    # --rerender rewrites the same tables from results.json without training
    before = {n: (tmp_path / n).read_text() for n in ("table2.md", "table2_equivariant.md")}
    linear_gaussian.main(["--rerender", "--output-dir", str(tmp_path)])
    assert {n: (tmp_path / n).read_text() for n in before} == before


@pytest.mark.slow
def test_linear_gaussian_smoke(linear_gaussian, tmp_path):
    payload = linear_gaussian.main(["--quick", "--output-dir", str(tmp_path)])
    for name in ("table1.md", "table2.md", "table2_equivariant.md", "table1.png", "table2.png",
                 "table2_equivariant.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0, name

    def reject(constant):
        raise AssertionError(f"results.json holds {constant}")

    saved = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    # (Tables 1 and 2: 7 aggregators; 2e: 3 PE guides) x 2 bounds
    assert len(saved["runs"]) == len(payload["runs"]) == (7 + 7 + 3) * 2
    for run in saved["runs"]:
        keys = ["rel_llh_gap", "llh_model"] + (["mcc"] if run["table"] != 1 else [])
        if run["table"] != "2e":  # no rate_distortion with private latents
            keys += ["full_reconstruction", "full_rate", "cross_reconstruction", "cross_rate"]
        for key in keys:
            assert math.isfinite(run[key]), (run["table"], run["aggregator"], run["bound"], key)
    for table in ("table1.md", "table2.md"):
        text = (tmp_path / table).read_text()
        assert "| PoE | this run |" in text and "| SelfAttentionMixture | this run |" in text
        assert "n/a" not in text.split("| PoE | this run |")[1].split("\n")[0]


def test_linear_gaussian_merge_pools_other_seeds_only(linear_gaussian, tmp_path):
    args = linear_gaussian.parse_args(["--quick", "--tables", "2e", "--pe-guides", "pe-poe",
                                       "--bounds", "masked"])
    run = {"table": "2e", "aggregator": "pe-poe", "bound": "masked", "epochs": 2}
    other = dict(run, aggregator="pe-sumpooling")  # not a row of this run
    payload = {"config": {"argv": ["--seeds", "0", "1"], "hidden": args.hidden},
               "wall_seconds": 60.0,
               "reference_exact_posterior": {"table2e": [{"seed": 0}, {"seed": 1}]},
               "runs": [dict(run, seed=0), dict(run, seed=1), dict(other, seed=1),
                        dict(run, seed=2, epochs=3)]}
    (tmp_path / "r.json").write_text(json.dumps(payload))
    args.merge = [tmp_path / "r.json"]
    (m,) = linear_gaussian.load_merged(args, [dict(run, seed=0)])
    assert [r["seed"] for r in m["runs"]] == [1] and m["refs"] == {"2e": [{"seed": 1}]}
    payload["config"]["hidden"] = [3]
    (tmp_path / "r.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="hidden"):
        linear_gaussian.load_merged(args, [])


@pytest.fixture(scope="module")
def identifiable():
    return load_script("identifiable")


def test_identifiable_smoke(identifiable, tmp_path):
    payload = identifiable.main(["--quick", "--rows", "poe", "selfattention_mix+gmm",
                                 "--observed", "partial", "--output-dir", str(tmp_path)])
    runs = payload["runs"]
    # 2 rows x 2 bounds for Table 3, and again for Table 4 (partially observed only).
    assert len(runs) == 8
    assert {(r["table"], r["bound"]) for r in runs} == {(t, b) for t in (3, 4)
                                                          for b in ("masked", "mixture")}
    for r in runs:
        assert math.isfinite(r["llh_sum"]) and r["llh_sum"] < 0
        assert 0 <= r["mcc_weak_out"] <= 1
        assert ("clustering_accuracy" in r) == r["row"].endswith("+gmm")
        assert ("mcc_x_only" in r) == (r["table"] == 3)
    for name in ("table3.md", "table4.md", "table3_latents.png", "table4_latents_partial.png",
                 "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    table3 = (tmp_path / "table3.md").read_text()
    assert "-43.4 (10.74)" in table3 and "SelfAttentionMixture | GMM, K=5" in table3
    assert "-250.9 (5.19)" in (tmp_path / "table4.md").read_text()


def test_identifiable_models_follow_the_recipe(identifiable):
    from models import GaussianMixturePrior, StandardNormalPrior
    from models.decoders import CategoricalDecoder

    args = identifiable.parse_args(["--quick"])
    spec = next(s for s in identifiable.specs(args) if s["row"] == "sumpooling_mix+gmm")
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
