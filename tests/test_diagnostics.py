"""ArviZ conversion: groups, dims and coords, exactness against the linear-Gaussian posterior,
masking, ArviZ's summary and plots, and the inspect_posterior example."""

import importlib.util
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_mmvae import observe  # noqa: E402
from pyro_mmvae.diagnostics import to_inference_data  # noqa: E402
from tests.helpers import (DIMS, ExactPosteriorGuide, ExactPrivatePosteriorGuide,  # noqa: E402
                           linear_problem, make_guide, private_problem, random_mask)

ROOT = Path(__file__).resolve().parents[1]
# arviz 0.23's matplotlib backend calls a helper that matplotlib 3.11 deprecates
MPL_DEPRECATION = "ignore:Passing a dict or None as alias_mapping"


def exact_idata(num_samples=2000, n=8):
    model, data = linear_problem(n=n)
    mask = random_mask(data)
    idata = to_inference_data(model, ExactPosteriorGuide(model), data, mask,
                              num_samples=num_samples)
    return model, data, mask, idata


def test_groups_dims_and_coords():
    model, data = private_problem(n=5)
    mask = random_mask(data)
    idata = to_inference_data(model, ExactPrivatePosteriorGuide(model), data, mask,
                              num_samples=7, chunk_size=3)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood",
                                   "sample_stats", "observed_data", "constant_data"}
    sample = ("chain", "draw", "datapoint")
    assert idata.posterior["z"].dims == sample + ("z_dim",)
    assert idata.posterior["z"].shape == (1, 7, 5, 2)
    for m, d in DIMS.items():
        assert idata.posterior[f"w_{m}"].dims == sample + (f"w_{m}_dim",)
        assert idata.posterior[f"w_{m}"].shape == (1, 7, 5, 2)
        assert idata.posterior_predictive[f"x_{m}"].dims == sample + (f"{m}_dim_0",)
        assert idata.posterior_predictive[f"x_{m}"].shape == (1, 7, 5, d)
        assert idata.log_likelihood[f"x_{m}"].dims == sample
        assert idata.observed_data[f"x_{m}"].dims == ("datapoint", f"{m}_dim_0")
        assert idata.observed_data[f"x_{m}"].shape == (5, d)
        assert idata.constant_data[f"mask_{m}"].dims == ("datapoint",)
        np.testing.assert_array_equal(idata.constant_data[f"mask_{m}"].values, mask[m].numpy())
    for name in ("lp", "log_q", "log_weight"):
        assert idata.sample_stats[name].dims == sample
    np.testing.assert_array_equal(idata.posterior.coords["datapoint"].values, np.arange(5))
    np.testing.assert_array_equal(idata.posterior.coords["draw"].values, np.arange(7))
    for group in idata.groups():
        for var in idata[group].data_vars.values():
            assert isinstance(var.values, np.ndarray)


def test_optional_groups_can_be_left_out():
    model, data = linear_problem(n=4)
    idata = to_inference_data(model, make_guide(), data, num_samples=3,
                              posterior_predictive=False, log_likelihood=False,
                              sample_stats=False)
    assert set(idata.groups()) == {"posterior", "observed_data", "constant_data"}


def test_user_coords_and_dims():
    model, data = linear_problem(n=4)
    names = ["p", "q", "r", "s"]
    idata = to_inference_data(model, make_guide(), data, num_samples=3,
                              coords={"datapoint": names, "z_dim": ["u", "v"]},
                              dims={"x_a": ["datapoint", "feature"]})
    assert list(idata.posterior.coords["datapoint"].values) == names
    assert list(idata.posterior.coords["z_dim"].values) == ["u", "v"]
    assert idata.posterior_predictive["x_a"].dims == ("chain", "draw", "datapoint", "feature")
    assert idata.observed_data["x_a"].dims == ("datapoint", "feature")
    assert idata.log_likelihood["x_a"].dims == ("chain", "draw", "datapoint")
    assert float(idata.posterior["z"].sel(datapoint="q", z_dim="v")[0, 0]) == pytest.approx(
        float(idata.posterior["z"].values[0, 0, 1, 1]))


@pytest.mark.parametrize("kwargs, match", [
    ({"coords": {"datapoint": [0, 1]}}, "coords\\['datapoint'\\]"),
    ({"dims": {"x_zz": ["datapoint", "f"]}}, "unknown variable 'x_zz'"),
    ({"dims": {"z": ["datapoint"]}}, "dims\\['z'\\]"),
    ({"num_samples": 0}, "num_samples"),
])
def test_bad_arguments_raise(kwargs, match):
    model, data = linear_problem(n=4)
    kwargs = {"num_samples": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        to_inference_data(model, make_guide(), data, **kwargs)


def test_bad_mask_raises_naming_the_modality():
    model, data = linear_problem(n=4)
    with pytest.raises(ValueError, match="'a'"):
        to_inference_data(model, make_guide(), data, {"a": torch.ones(3, dtype=torch.bool),
                                                      "b": torch.ones(4, dtype=torch.bool),
                                                      "c": torch.ones(4, dtype=torch.bool)})


def test_posterior_matches_the_exact_posterior():
    model, data, mask, idata = exact_idata()
    post = model.exact_posterior(data, mask)
    mu, cov = post.mean.detach().numpy(), post.covariance_matrix.detach().numpy()  # (8,2),(8,2,2)
    z = idata.posterior["z"].values[0]  # (2000, 8, 2)
    s = z.shape[0]
    sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    assert np.all(np.abs(z.mean(0) - mu) < 5 * sd / math.sqrt(s))
    centred = z - z.mean(0)
    emp = np.einsum("sni,snj->nij", centred, centred) / (s - 1)
    # each entry relative to sd_i sd_j: sampling sd <= sqrt(2 / S) ~ 0.03
    assert np.all(np.abs(emp - cov) / (sd[:, :, None] * sd[:, None, :]) < 0.15)


def test_posterior_predictive_reconstructs_and_cross_generates():
    # x_m | x_S ~ N(W mu + b, W Sigma W^T + s^2 I), observed m (reconstruction) or not
    model, data, mask, idata = exact_idata()
    post = model.exact_posterior(data, mask)
    mu, cov = post.mean, post.covariance_matrix.detach()
    for m in DIMS:
        w, b, sc = model.linear_parameters(m)
        mean = (mu @ w.T + b).detach().numpy()
        var = (torch.einsum("ij,njk,lk->nil", w, cov, w).diagonal(dim1=-2, dim2=-1)
               + sc ** 2).detach().numpy()
        x = idata.posterior_predictive[f"x_{m}"].values[0]  # (2000, 8, D_m)
        assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / x.shape[0]))
        assert np.all(np.abs(x.var(0) / var - 1) < 0.2)
    assert not all(mk.all() for mk in mask.values())  # some of it was cross-generation


def test_observed_data_is_nan_where_masked_and_log_likelihood_is_the_models():
    model, data, mask, idata = exact_idata(num_samples=20)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (20, N, 2)
    for m in DIMS:
        on = mask[m].numpy()
        obs = idata.observed_data[f"x_{m}"].values
        assert np.isnan(obs[~on]).all()
        np.testing.assert_array_equal(obs[on], data[m].numpy()[on])
        direct = model.decoders[m](z).log_prob(data[m]).detach().numpy()  # (20, N)
        ll = idata.log_likelihood[f"x_{m}"].values[0]
        assert np.isnan(ll[:, ~on]).all()
        np.testing.assert_allclose(ll[:, on], direct[:, on], rtol=1e-10)


def test_log_weights_of_the_exact_posterior_are_the_log_evidence():
    # log p(x_S, z) - log p(z | x_S) = log p(x_S) for every draw
    model, data, mask, idata = exact_idata(num_samples=10)
    evidence = model.exact_log_likelihood(data, mask).detach().numpy()
    stats = idata.sample_stats
    np.testing.assert_allclose(stats["log_weight"].values[0], np.broadcast_to(evidence, (10, 8)),
                               rtol=1e-8)
    np.testing.assert_allclose(stats["lp"].values - stats["log_q"].values,
                               stats["log_weight"].values)


def test_global_latents_have_no_datapoint_dim():
    n = 5

    def model(data, mask):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            observe("a", dist.Normal(z.sum(-1, keepdim=True).expand(z.shape[:-1] + (3,)),
                                     s.unsqueeze(-1)).to_event(1), data, mask)

    def guide(data, mask):
        pyro.sample("s", dist.LogNormal(0.0, 0.1))
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    idata = to_inference_data(model, guide, {"a": torch.randn(n, 3)}, num_samples=4)
    assert idata.posterior["s"].dims == ("chain", "draw")
    assert idata.posterior["z"].dims == ("chain", "draw", "datapoint", "z_dim")
    assert np.isfinite(idata.sample_stats["log_weight"].values).all()


def test_summary_has_one_row_per_datapoint_and_dim():
    model, data, mask, idata = exact_idata(num_samples=200)
    summary = az.summary(idata, var_names=["z"], coords={"datapoint": [0, 3]})
    assert len(summary) == 2 * 2
    assert list(summary.index) == ["z[0, 0]", "z[0, 1]", "z[3, 0]", "z[3, 1]"]
    np.testing.assert_allclose(summary["mean"].values,
                               idata.posterior["z"].values[0][:, [0, 3]].mean(0).reshape(-1),
                               atol=1e-3)


@pytest.mark.filterwarnings(MPL_DEPRECATION)
def test_pair_and_posterior_plots():
    model, data, mask, idata = exact_idata(num_samples=100)
    try:
        az.plot_pair(idata, var_names=["z"], coords={"datapoint": 0})
        axes = az.plot_posterior(idata, var_names=["z"], coords={"datapoint": [0]})
        assert np.size(axes) == 2
    finally:
        plt.close("all")


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_loo_runs_on_the_observed_points():
    model, data, mask, idata = exact_idata(num_samples=200)
    seen = np.flatnonzero(mask["a"].numpy())
    loo = az.loo(idata.isel(datapoint=seen), var_name="x_a", pointwise=True)
    assert np.isfinite(loo["elpd_loo"])
    assert loo["loo_i"].shape == (len(seen),)


def test_log_weights_give_one_pareto_k_per_datapoint():
    # the recipe of the module docstring: PSIS of q as a proposal (Yao et al. 2018)
    model, data = linear_problem(n=6)
    idata = to_inference_data(model, make_guide(), data, random_mask(data), num_samples=100)
    _, khat = az.psislw(idata.sample_stats["log_weight"].stack(__sample__=("chain", "draw")))
    assert khat.dims == ("datapoint",)
    assert np.isfinite(khat.values).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_come_back_as_numpy():
    model, data = private_problem(n=5)
    model.cuda()
    data = {m: x.cuda() for m, x in data.items()}
    mask = {m: mk.cuda() for m, mk in random_mask(data).items()}
    idata = to_inference_data(model, make_guide().cuda(), data, mask, num_samples=6)
    assert isinstance(idata.posterior["z"].values, np.ndarray)
    assert idata.posterior_predictive["x_a"].shape == (1, 6, 5, DIMS["a"])
    assert np.isnan(idata.observed_data["x_b"].values[~mask["b"].cpu().numpy()]).all()


def test_inspect_posterior_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "inspect_posterior", ROOT / "experiments" / "examples" / "inspect_posterior.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    idata = script.main(["--epochs", "1", "--num-points", "100", "--num-samples", "50",
                         "--datapoints", "2", "--output", str(tmp_path)])
    assert idata.posterior["z"].shape == (1, 50, 2, 2)
    assert list(idata.posterior.coords["z_dim"].values) == ["z0", "z1"]
    assert np.isnan(idata.observed_data["x_m2"].values).all()  # hidden: cross-generated
    for name in ("summary.csv", "pair_plot.png", "posterior.png"):
        assert (tmp_path / name).stat().st_size > 0
