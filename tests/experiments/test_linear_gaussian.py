"""experiments/linear_gaussian.py (Hirt et al. §5.1, Tables 1 and 2): helper checks, smoke
runs, the training wired through ``fit`` as the authors' loop, and the committed tables
re-rendered."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, clamped_adam_loop, load_script

RESULTS = ROOT / "experiments" / "results" / "linear_gaussian"
# every committed folder with tables, and the tables it holds
COMMITTED = {".": ("table1.md", "table2.md"), "table1_learnable": ("table1.md",),
             "table2_long": ("table2.md",),
             "table2_learnable": ("table2.md", "table2_equivariant.md"),
             "table2_learnable/seed2_equivariant": ("table2_equivariant.md",)}
TIMING = {"train_seconds"}  # what a record holds that depends on the machine's speed


@pytest.fixture(scope="module")
def linear_gaussian():
    return load_script("linear_gaussian")


def _spec(linear_gaussian, *options):
    """The first run of a ``--quick`` configuration."""
    return linear_gaussian.specs(linear_gaussian.parse_args(["--quick", *options]))[0]


def _assert_same_record(a, b, rel=1e-9):
    assert set(a) == set(b)
    for key in set(a) - TIMING:
        x, y = a[key], b[key]
        if key == "gap_curve":  # [[epoch, gap], ...]
            assert [e for e, _ in y] == [e for e, _ in x]
            x, y = [g for _, g in x], [g for _, g in y]
        if isinstance(x, (float, list)):
            assert y == pytest.approx(x, rel=rel, abs=1e-12), key
        else:
            assert x == y, key


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
    from pyro_mmvae.data.linear_gaussian import illustrative_bimodal
    from pyro_mmvae.models import pca_maximum_likelihood

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


@pytest.mark.slow
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
        assert len(run["loss_curve"]) == 2 and [e for e, _ in run["gap_curve"]] == [1, 2]
        assert run["steps"] == 2 * 2  # N = 200, batch 100
    ref = payload["reference_exact_posterior"]["table2e"][0]
    assert 0 < ref["mcc"] < ref["mcc_shared"] <= 1  # private latents are harder to recover
    text = (tmp_path / "table2_equivariant.md").read_text()
    row = text.split("| PE-SumPooling |")[1].split("\n")[0]
    assert "| PE-PoE (paper only) | – (0.000 ± 0.000) |" in text
    assert "(0.850 ± 0.004)" in row and " – " not in row  # ours, beside the paper's
    text = (tmp_path / "table2.md").read_text()
    assert "| SelfAttention | " in text and "| SumPooling (paper only) |" in text
    assert "- Command: `python experiments/linear_gaussian.py --quick --tables 2 2e" in text
    assert (tmp_path / "table2_equivariant.png").stat().st_size > 0
    assert not (tmp_path / "results.partial.json").exists()
    # --rerender rewrites the same tables from results.json without training
    names = ("table2.md", "table2_equivariant.md", "results.json")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    linear_gaussian.main(["--rerender", str(tmp_path)])
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


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
        assert "| PoE | " in text and "| SelfAttentionMixture | " in text
        assert "(paper only)" not in text
        assert " – " not in text.split("| PoE | ")[1].split("\n")[0]


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


def _authors_loop(spec):
    """The script's loop before it used ``fit`` (:func:`tests.helpers.clamped_adam_loop`), the
    gap evaluated after the epochs ``eval_fn`` asks for."""
    def loop(model, guide, loss, data, *, eval_fn, **_):
        return clamped_adam_loop(loss, model, guide, data, epochs=spec["epochs"],
                                 batch_size=spec["batch_size"], lr=spec["lr"],
                                 limit=spec["clip"],
                                 generator=torch.Generator().manual_seed(spec["seed"]),
                                 eval_fn=eval_fn)
    return loop


@pytest.mark.parametrize("options", [
    ("--tables", "1", "--aggregators", "moe", "--bounds", "mixture"),
    ("--tables", "2", "--aggregators", "sumpooling_mix", "--bounds", "masked"),
    ("--tables", "2e", "--pe-guides", "pe-selfattention", "--bounds", "mixture")])
@pytest.mark.slow
def test_training_takes_the_steps_of_the_authors_loop(linear_gaussian, monkeypatch, options):
    # a clip small enough to bind, 4 epochs of 4 batches, the gap after every second epoch
    spec = dict(_spec(linear_gaussian, *options, "--clip", "0.5", "--eval-every", "2"),
                epochs=4, batch_size=50)  # (--quick sets N = 200 and the batch size)
    ours = linear_gaussian.run_config(spec)
    with monkeypatch.context() as m:
        m.setattr(linear_gaussian, "fit", _authors_loop(spec))
        reference = linear_gaussian.run_config(spec)
    _assert_same_record(ours, reference)
    assert [e for e, _ in ours["gap_curve"]] == [2, 4] and ours["steps"] == 16
    # the clip binds: without it the run differs
    free = linear_gaussian.run_config(dict(spec, clip=1e9))
    assert free["final_loss_per_point"] != pytest.approx(ours["final_loss_per_point"], rel=1e-6)


def test_the_seed_determines_the_run(linear_gaussian):
    spec = _spec(linear_gaussian, "--tables", "2", "--aggregators", "selfattention",
                 "--bounds", "masked")
    first = linear_gaussian.run_config(spec)
    torch.manual_seed(12345)  # whatever the global RNG holds before, the run reseeds it
    torch.randn(7)
    _assert_same_record(first, linear_gaussian.run_config(spec), rel=0)
    other = linear_gaussian.run_config(dict(spec, seed=spec["seed"] + 1))
    assert other["llh_model"] != first["llh_model"]
    assert other["loss_curve"] != first["loss_curve"]


def test_paper_numbers_are_read_from_the_data_file(linear_gaussian):
    paper = json.loads((ROOT / "experiments" / "linear_gaussian_paper.json").read_text())
    assert linear_gaussian.PAPER == paper
    assert paper["table1"]["moe"]["mixture"]["cross_rate"] == 19.33
    assert paper["table1"]["poe"]["masked"]["full_rate"] is None  # lost
    assert paper["table2"]["selfattention"]["mixture"]["rel_llh_gap"] == [0.02, 0.007]
    assert paper["table2e"]["pe-poe"]["masked"]["mcc"] == [0.91, 0.016]
    text = (RESULTS / "table2_learnable" / "table2_equivariant.md").read_text()
    assert "(0.910 ± 0.016)" in text and "(0.830 ± 0.003)" in text
    assert "-2.86 ± 0.02 (lost)" in (RESULTS / "table1.md").read_text()


@pytest.mark.parametrize("folder", sorted(COMMITTED))
def test_rerender_reproduces_the_committed_tables(linear_gaussian, tmp_path, monkeypatch,
                                                  folder):
    monkeypatch.chdir(ROOT)  # the stored --include / --merge paths are relative to it
    monkeypatch.setattr(linear_gaussian.report, "plot_table", lambda *a, **k: None)
    shutil.copy(RESULTS / folder / "results.json", tmp_path / "results.json")
    linear_gaussian.main(["--rerender", str(tmp_path)])
    for name in COMMITTED[folder] + ("results.json",):  # the results file is left alone
        assert (tmp_path / name).read_bytes() == (RESULTS / folder / name).read_bytes(), name
    payload = json.loads((tmp_path / "results.json").read_text())
    for name in COMMITTED[folder]:  # the command, seeds and wall time of the original run
        text = (tmp_path / name).read_text()
        assert ("- Command: `python experiments/linear_gaussian.py "
                + " ".join(payload["config"]["argv"]) + "`") in text
        assert f"- Wall time: {payload['wall_seconds']:.0f} s (the whole run;" in text
