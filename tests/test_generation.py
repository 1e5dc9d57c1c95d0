"""Generation through the protocol (observe generates what is not observed), missing targets
in log_likelihood, placeholders that are always valid, and from_nan."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from pyro_mmvae import MaskedMultimodalELBO, observe
from pyro_mmvae.diagnostics import to_inference_data
from pyro_mmvae.diagnostics.plots import (conditional_generations, save_generation_grid,
                                          save_samples_grid, unconditional_samples)
from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.eval.coherence import conditional_coherence, joint_coherence
from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import (BernoulliDecoder, CategoricalDecoder, GaussianDecoder,
                               LinearGaussianModel, MultimodalModel, StandardNormalPrior)
from pyro_mmvae.protocol import from_nan, num_points, validate_batch
from tests.helpers import ExactPosteriorGuide

N = 6


def none_observed(modalities, n=N):
    return {m: torch.zeros(n, dtype=torch.bool) for m in modalities}


# --------------------------------------------------------------------------- README's model

W_A = torch.tensor([[4.0, 0.5, -1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)  # (D=2, 3)
W_B = torch.tensor([[4.0, -2.0, 0.0, 1.0], [0.0, 1.0, 3.0, -1.0]], dtype=torch.float64)


def readme_model(data, mask):
    """The README's hand-written model, with N from the mask."""
    with pyro.plate("data", num_points(data, mask)):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        observe("a", dist.Normal(z @ W_A, 1.0).to_event(1), data, mask)
        observe("b", dist.Bernoulli(logits=z @ W_B).to_event(1), data, mask)


def readme_posterior_given_a(x_a):
    """The exact p(z | x_a) of readme_model: N(Sigma W_A x_a, Sigma), Sigma = (I + W W^T)^-1."""
    cov = torch.linalg.inv(torch.eye(2) + W_A @ W_A.T)
    return x_a @ W_A.T @ cov, cov


def readme_guide(data, mask):
    """A hand-written guide: the exact posterior given ``a`` where ``a`` is observed, the prior
    elsewhere (it ignores ``b``). Written for plain ``(N,)`` masks, as a user would."""
    n = num_points(data, mask)
    loc, cov = readme_posterior_given_a(data["a"])
    on = mask["a"][:, None]
    loc = torch.where(on, loc, torch.zeros_like(loc))
    scale = torch.where(on, cov.diagonal().sqrt().expand(n, 2), torch.ones(n, 2))
    with pyro.plate("data", n):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def readme_data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    a = z @ W_A + torch.randn(n, 3, generator=g)
    b = torch.bernoulli(torch.sigmoid(z @ W_B), generator=g)
    return {"a": a, "b": b}, z


def test_num_points_comes_from_the_mask():
    assert num_points({}, none_observed("ab", 5)) == 5
    assert num_points({"a": torch.zeros(3, 2)}, None) == 3
    stacked = {"a": torch.zeros(4, 1, 7, dtype=torch.bool)}
    assert num_points({"a": torch.zeros(7, 2)}, stacked) == 7
    with pytest.raises(ValueError, match="pass a mask"):
        num_points({}, {})


def test_predictive_cross_generates_the_hand_written_model_from_a_subset():
    data, _ = readme_data()
    data["b"] = torch.full((N, 4), 0.5)  # a placeholder outside the Bernoulli support
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool)}
    k = 4000
    out = Predictive(readme_model, guide=readme_guide, num_samples=k, parallel=True)(data, mask)
    assert out["x_a"].shape == (k, N, 3) and out["x_b"].shape == (k, N, 4)
    assert torch.equal(out["x_a"], data["a"].expand(k, N, 3))  # observed: the data
    x_b = out["x_b"]
    assert ((x_b == 0) | (x_b == 1)).all()  # generated: never the 0.5 placeholder
    # and they follow the model at the guide's z: E[x_b] = E[sigmoid(z W_B)]
    expected = torch.sigmoid(out["z"] @ W_B).mean(0)
    assert (x_b.mean(0) - expected).abs().max() < 4 * 0.5 / math.sqrt(k)
    # sequential Predictive (one model call per sample) gives the same layout
    seq = Predictive(readme_model, guide=readme_guide, num_samples=3)(data, mask)
    assert seq["x_b"].shape == (3, N, 4) and torch.equal(seq["x_a"][1], data["a"])
    assert ((seq["x_b"] == 0) | (seq["x_b"] == 1)).all()


def test_predictive_generates_a_modality_absent_from_data():
    data, _ = readme_data()
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool)}
    out = Predictive(readme_model, guide=readme_guide, num_samples=5)({"a": data["a"]}, mask)
    assert out["x_b"].shape == (5, N, 4) and ((out["x_b"] == 0) | (out["x_b"] == 1)).all()
    with pytest.raises(ValueError, match="modality 'b' is marked observed .* has no data"):
        readme_model({"a": data["a"]}, {"a": mask["a"], "b": ~mask["b"]})


def test_predictive_unconditional_samples_of_the_hand_written_model():
    k = 20000
    for data in ({}, readme_data()[0]):  # nothing observed: data={} or all-False masks
        out = Predictive(readme_model, num_samples=k, parallel=True)(data, none_observed("ab"))
        x_a = out["x_a"].reshape(-1, 3)
        # x_a = z W_A + e: mean 0, covariance W_A^T W_A + I
        cov = W_A.T @ W_A + torch.eye(3)
        assert x_a.mean(0).abs().max() < 4 * cov.diagonal().max().sqrt() / math.sqrt(len(x_a))
        assert torch.allclose(torch.cov(x_a.T), cov, rtol=0.05, atol=0.05)
        if data:
            assert not torch.equal(out["x_a"][0], data["a"])
        x_b = out["x_b"].reshape(-1, 4)
        assert ((x_b == 0) | (x_b == 1)).all()
        assert (x_b.mean(0) - 0.5).abs().max() < 0.02  # symmetric logits: P(b = 1) = 1/2


def test_generations_leave_the_global_random_stream_alone_and_are_reproducible():
    data, z = readme_data()
    mask = {"a": torch.arange(N) < 3, "b": torch.zeros(N, dtype=torch.bool)}
    conditioned = pyro.poutine.condition(readme_model, {"z": z})

    def values():
        tr = pyro.poutine.trace(conditioned).get_trace(data, mask)
        return tr.nodes["x_a"]["value"], tr.nodes["x_b"]["value"]

    pyro.set_rng_seed(1)
    state = torch.get_rng_state()
    first = values()
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from torch's stream
    second = values()  # same global state: still new draws
    assert not torch.equal(first[0][3:], second[0][3:])
    pyro.set_rng_seed(1)
    again = values()
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert torch.equal(first[0][:3], data["a"][:3])


def test_hand_written_model_with_coherence_grids_and_arviz(tmp_path):
    data, z = readme_data(n=400, seed=1)
    labels = (z[:, 0] > 0).long()  # z_0 drives a_0 and b_0 alike
    classifiers = {"a": lambda x: (x[:, 0] > 0).long(), "b": lambda x: (x[:, 0] > 0.5).long()}
    # unconditional: P(1[a_0 > 0] = b_0) under the model, computed here without the library
    g = torch.Generator().manual_seed(5)
    zz = torch.randn(200000, generator=g)
    a0 = 4 * zz + torch.randn(200000, generator=g)
    b0 = torch.bernoulli(torch.sigmoid(4 * zz), generator=g)
    agree = ((a0 > 0).double() == b0).double().mean().item()
    got = joint_coherence(readme_model, classifiers, num_samples=4000, use_mean=False,
                          modalities=["a", "b"])
    assert abs(got - agree) < 0.03 and agree > 0.8  # placeholders would give 1/2
    # means: a_0 = 4 z_0 and P(b_0) = sigmoid(4 z_0) always agree
    assert joint_coherence(readme_model, classifiers, num_samples=500,
                           modalities=["a", "b"]) == 1.0
    # conditional: from a, q(z | x_a) is the exact posterior; from b alone the guide is p(z)
    out = conditional_coherence(readme_model, readme_guide, data, labels, classifiers,
                                subsets=["a", "b"], use_mean=False)
    assert out["coherence"]["a"]["a"] > 0.85 and out["coherence"]["a"]["b"] > 0.8
    assert abs(out["coherence"]["b"]["a"] - 0.5) < 0.1  # the guide ignores b: chance
    # generation grid: the recon. of a is its posterior mean decoded, b the Bernoulli mean
    gen = conditional_generations(readme_model, readme_guide, data, ["a"])["a"]
    assert gen["b"].shape == (400, 4) and ((gen["b"] > 0) & (gen["b"] < 1)).all()
    assert save_generation_grid(tmp_path / "g.png", readme_model, readme_guide, data,
                                "a").is_file()
    samples = unconditional_samples(readme_model, 5, use_mean=False, modalities=["a", "b"])
    assert samples["a"].shape == (5, 3) and ((samples["b"] == 0) | (samples["b"] == 1)).all()
    assert save_samples_grid(tmp_path / "s.png", readme_model, 4,
                             modalities=["a", "b"]).is_file()
    with pytest.raises(ValueError, match="pass modalities"):
        unconditional_samples(readme_model, 5)
    # arviz: b masked out for half the points
    small = {m: x[:8].clone() for m, x in data.items()}
    mask = {"a": torch.ones(8, dtype=torch.bool), "b": torch.arange(8) < 4}
    small["b"][4:] = 0.5
    idata = to_inference_data(readme_model, readme_guide, small, mask, num_samples=50)
    zs = torch.as_tensor(idata.posterior["z"].values[0])  # (draw, N, 2)
    lp_a = dist.Normal(zs @ W_A, 1.0).log_prob(small["a"]).sum(-1)
    assert np.allclose(idata.log_likelihood["x_a"].values[0], lp_a.numpy())
    lp_b = dist.Bernoulli(logits=zs[:, :4] @ W_B).log_prob(small["b"][:4]).sum(-1)
    got_b = idata.log_likelihood["x_b"].values[0]
    assert np.allclose(got_b[:, :4], lp_b.numpy()) and np.isnan(got_b[:, 4:]).all()
    pp = idata.posterior_predictive["x_b"].values
    assert set(np.unique(pp)) <= {0.0, 1.0}
    obs = idata.observed_data["x_b"].values
    assert np.array_equal(obs[:4], small["b"][:4].numpy()) and np.isnan(obs[4:]).all()


# --------------------------------------------------------------------------- library models

def linear_gaussian(dims=None, n=N, seed=0):
    torch.manual_seed(seed)
    dims = dims or {"a": 3, "b": 2, "c": 4}
    model = LinearGaussianModel(dims, latent_dim=2, noise_scale=0.5)
    z = torch.randn(n, 2)
    data = {}
    for m, d in dims.items():
        w, b, s = model.linear_parameters(m)
        data[m] = (z @ w.T + b + s * torch.randn(n, d)).detach()
    return model, data


def test_predictive_cross_generation_follows_the_exact_conditional():
    model, data = linear_gaussian()
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.arange(N) < 3,
            "c": torch.zeros(N, dtype=torch.bool)}
    data = dict(data, c=torch.zeros(N, 4))  # a zero placeholder, masked out
    k = 20000
    with torch.no_grad():
        out = Predictive(model, guide=ExactPosteriorGuide(model), num_samples=k,
                         parallel=True)(data, mask)
        post = model.exact_posterior(data, mask)
    assert torch.equal(out["x_a"], data["a"].expand(k, N, 3))
    assert torch.equal(out["x_b"][:, :3], data["b"][:3].expand(k, 3, 2))
    for m, where in (("b", slice(3, None)), ("c", slice(None))):
        w, b, s = (t.detach() for t in model.linear_parameters(m))
        x = out[f"x_{m}"][:, where]
        assert (x != 0).all()
        # p(x_m | x_S) = N(W mu + b, W Sigma W^T + s^2 I)
        mean = post.mean[where] @ w.T + b
        cov = w @ post.covariance_matrix[where] @ w.T + s ** 2 * torch.eye(len(b))
        sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        assert ((x.mean(0) - mean).abs() < 4 * sd / math.sqrt(k)).all(), m
        var = x.var(0)
        assert torch.allclose(var, sd ** 2, rtol=0.05), m


def test_library_model_unconditional_and_absent_modalities():
    model, data = linear_gaussian()
    k = 20000
    with torch.no_grad():
        out = Predictive(model, num_samples=k, parallel=True)({}, none_observed(data))
    for m in data:
        w, b, s = (t.detach() for t in model.linear_parameters(m))
        x = out[f"x_{m}"].reshape(-1, len(b))
        cov = w @ w.T + s ** 2 * torch.eye(len(b))
        assert (x.mean(0) - b).abs().max() < 4 * cov.diagonal().max().sqrt() / math.sqrt(len(x))
        assert torch.allclose(torch.cov(x.T), cov, rtol=0.05, atol=0.05), m
    # a modality absent from data is generated; the exact posterior ignores it
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.ones(N, dtype=torch.bool),
            "c": torch.zeros(N, dtype=torch.bool)}
    partial = {m: data[m] for m in "ab"}
    with torch.no_grad():
        post = model.exact_posterior(partial, mask)
        full = model.exact_posterior(data, mask)
        out = Predictive(model, guide=ExactPosteriorGuide(model), num_samples=2000,
                         parallel=True)(dict(partial, c=data["c"]), mask)
        tr = pyro.poutine.trace(model).get_trace(partial, mask)
    torch.testing.assert_close(post.mean, full.mean)
    assert tr.nodes["x_c"]["is_observed"] and tr.nodes["x_c"]["value"].shape == (N, 4)
    tr.compute_log_prob()
    assert torch.equal(tr.nodes["x_c"]["log_prob"], torch.zeros(N))  # contributes nothing
    assert out["x_c"].shape == (2000, N, 4)
    # the deprecated num_samples= still works (with a warning): n joint samples
    with pytest.warns(DeprecationWarning, match="num_samples=n"):
        tr = pyro.poutine.trace(model).get_trace({}, num_samples=7)
    assert tr.nodes["x_a"]["value"].shape == (7, 3)


def test_library_model_cross_generation_with_a_multimodal_guide():
    model, data = linear_gaussian()
    guide = MultimodalGuide({m: expert_encoder(x.shape[1], 2, (8,)) for m, x in data.items()},
                            PoE())
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool),
            "c": torch.arange(N) % 2 == 0}
    data = dict(data, b=torch.zeros(N, 2))
    with torch.no_grad():
        out = Predictive(model, guide=guide, num_samples=10)(data, mask)
    assert torch.equal(out["x_a"], data["a"].expand(10, N, 3))
    assert torch.equal(out["x_c"][:, mask["c"]], data["c"][mask["c"]].expand(10, 3, 4))
    assert (out["x_b"] != 0).all() and (out["x_c"][:, ~mask["c"]] != data["c"][~mask["c"]]).all()


# --------------------------------------------------------------------------- missing targets

def test_log_likelihood_is_nan_where_no_target_is_observed():
    model, data = linear_gaussian(dims={"top": 3, "bottom": 2}, n=8)
    guide = ExactPosteriorGuide(model)
    mask = {"top": torch.tensor([True] * 4 + [False] * 4),
            "bottom": torch.tensor([True, False] * 4)}
    exact = {k: model.exact_log_likelihood(data, {m: mask[m] & (m in k) for m in data}).detach()
             for k in (("top", "bottom"), ("top",), ("bottom",))}
    # log p(x_bottom | x_top): NaN where bottom is missing, log p(x_bottom) where top is
    got = log_likelihood(model, guide, data, mask, given="top", num_samples=5)
    has_bottom = mask["bottom"]
    assert torch.isnan(got[~has_bottom]).all() and torch.isfinite(got[has_bottom]).all()
    expected = exact[("top", "bottom")] - exact[("top",)]
    torch.testing.assert_close(got[has_bottom], expected[has_bottom], rtol=0, atol=1e-9)
    torch.testing.assert_close(got[4:][has_bottom[4:]], exact[("bottom",)][4:][has_bottom[4:]],
                               rtol=0, atol=1e-9)
    # a name is one modality, not its letters
    same = log_likelihood(model, guide, data, mask, given=["top"], num_samples=5)
    torch.testing.assert_close(got, same, rtol=0, atol=1e-9, equal_nan=True)
    tgt = log_likelihood(model, guide, data, mask, given="top", targets="bottom", num_samples=5)
    torch.testing.assert_close(got, tgt, rtol=0, atol=1e-9, equal_nan=True)
    # the joint: NaN with nothing observed (points 5 and 7), else log p(x_O)
    nothing = ~(mask["top"] | mask["bottom"])
    assert nothing.tolist() == [False] * 5 + [True, False, True]
    joint = log_likelihood(model, guide, data, mask, num_samples=5)
    assert torch.isnan(joint[nothing]).all() and torch.isfinite(joint[~nothing]).all()
    exact_joint = model.exact_log_likelihood(data, mask).detach()
    torch.testing.assert_close(joint[~nothing], exact_joint[~nothing], rtol=0, atol=1e-9)
    # joint restricted to a target: NaN where that target is missing
    only = log_likelihood(model, guide, data, mask, targets="bottom", num_samples=5)
    assert torch.isnan(only[~has_bottom]).all()
    torch.testing.assert_close(only[has_bottom], exact[("bottom",)][has_bottom], rtol=0,
                               atol=1e-9)


def test_missing_binary_target_is_nan_not_a_positive_number():
    # binary data: a log-likelihood is <= 0; the old difference of two estimates was noise
    torch.manual_seed(0)
    model = MultimodalModel(StandardNormalPrior(2), {
        "g": GaussianDecoder(nn.Linear(2, 3)), "b": BernoulliDecoder(nn.Linear(2, 5))})
    guide = MultimodalGuide({"g": expert_encoder(3, 2, (8,)), "b": expert_encoder(5, 2, (8,))},
                            PoE())
    data = {"g": torch.randn(10, 3), "b": torch.bernoulli(torch.full((10, 5), 0.5))}
    mask = {"g": torch.ones(10, dtype=torch.bool), "b": torch.arange(10) < 5}
    got = log_likelihood(model, guide, data, mask, given="g", num_samples=20)
    assert torch.isnan(got[5:]).all() and (got[:5] < 0).all()


# --------------------------------------------------------------------------- placeholders

def _validated_model(data, mask):
    """A user's model with Pyro's own (validated) discrete likelihoods."""
    lin = pyro.module("lin", nn.Linear(2, 4 + 3 + 5))
    with pyro.plate("data", num_points(data, mask)):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        h = lin(z)
        observe("onehot", dist.OneHotCategorical(logits=h[..., :4]), data, mask)
        observe("cat", dist.Categorical(logits=h[..., 4:7]), data, mask)
        observe("bin", dist.Bernoulli(logits=h[..., 7:]).to_event(1), data, mask)


def _validated_guide(data, mask):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", num_points(data, mask)):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def _discrete_batch(n=8):
    g = torch.Generator().manual_seed(0)
    data = {"onehot": F.one_hot(torch.randint(4, (n,), generator=g), 4).double(),
            "cat": torch.randint(3, (n,), generator=g).double(),
            "bin": torch.bernoulli(torch.full((n, 5), 0.5), generator=g)}
    mask = {m: torch.arange(n) % 2 == i for i, m in enumerate(data)}
    mask["bin"] = torch.arange(n) < 6
    for m, x in data.items():  # zero placeholders where masked out; bin even 0.5
        x[~mask[m]] = 0.5 if m == "bin" else 0.0
    return data, mask


def test_zero_placeholders_of_discrete_modalities_train_under_validation():
    assert torch.distributions.Distribution._validate_args  # tests/conftest.py turns it on
    data, mask = _discrete_batch()
    for loss in (Trace_ELBO(), MaskedMultimodalELBO()):
        pyro.clear_param_store()
        svi = SVI(_validated_model, _validated_guide, pyro.optim.Adam({"lr": 0.1}), loss=loss)
        assert math.isfinite(svi.step(data, mask))
        loc = pyro.param("loc").detach()  # initialised at zeros: one step moved it
        assert torch.isfinite(loc).all() and not torch.equal(loc, torch.zeros(2))
    # the masked-out entries contribute nothing: the loss equals that of other placeholders
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    one = Trace_ELBO().loss(_validated_model, _validated_guide, data, mask)
    other = {m: x.clone() for m, x in data.items()}
    other["onehot"][~mask["onehot"]] = F.one_hot(torch.tensor(2), 4).double()
    other["cat"][~mask["cat"]] = 1.0
    other["bin"][~mask["bin"]] = 1.0
    pyro.set_rng_seed(3)
    two = Trace_ELBO().loss(_validated_model, _validated_guide, other, mask)
    assert one == pytest.approx(two, abs=1e-12)


def test_zero_placeholders_with_the_library_decoders_and_guide():
    torch.manual_seed(0)
    n = 8
    data = {"onehot": F.one_hot(torch.randint(4, (n,)), 4).double(),
            "bin": torch.bernoulli(torch.full((n, 5), 0.5)),
            "g": torch.randn(n, 2)}
    mask = {"onehot": torch.arange(n) < 5, "bin": torch.arange(n) >= 3,
            "g": torch.ones(n, dtype=torch.bool)}
    for m in ("onehot", "bin"):
        data[m][~mask[m]] = 0.0
    model = MultimodalModel(StandardNormalPrior(2), {
        "onehot": CategoricalDecoder(nn.Linear(2, 4)), "bin": BernoulliDecoder(nn.Linear(2, 5)),
        "g": GaussianDecoder(nn.Linear(2, 2))})
    guide = MultimodalGuide({m: expert_encoder(x.shape[1], 2, (8,)) for m, x in data.items()},
                            PoE())
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=MaskedMultimodalELBO())
    assert all(math.isfinite(svi.step(data, mask)) for _ in range(2))
    tr = pyro.poutine.trace(model).get_trace(data, mask)
    onehot = tr.nodes["x_onehot"]["value"]
    assert torch.equal(onehot.sum(-1), torch.ones(n))  # a valid one-hot everywhere
    assert torch.equal(onehot[mask["onehot"]], data["onehot"][mask["onehot"]])


# --------------------------------------------------------------------------- from_nan

def test_from_nan_round_trip():
    x = np.arange(12, dtype=float).reshape(4, 3)
    x[1, 2] = np.nan  # partly NaN: missing with how="any"
    x[3] = np.nan
    onehot = np.eye(3)[[0, 2, 1, 1]]
    onehot[0] = np.nan
    label = np.array([1.0, np.nan, 0.0, 2.0])
    data, mask = from_nan({"x": x, "onehot": onehot, "label": label})
    assert mask["x"].tolist() == [True, False, True, False]
    assert mask["onehot"].tolist() == [False, True, True, True]
    assert mask["label"].tolist() == [True, False, True, True]
    validate_batch(data, mask)  # finite placeholders, consistent shapes
    for m in data:
        assert data[m].dtype == torch.get_default_dtype()
    # round trip: NaN back where masked out gives the input (any-NaN rows fully NaN)
    for m, a in (("x", x), ("onehot", onehot), ("label", label)):
        back = data[m].clone()
        back[~mask[m]] = float("nan")
        expected = torch.tensor(a)
        expected[~mask[m]] = float("nan")
        torch.testing.assert_close(back, expected, equal_nan=True)
    # default placeholder: the first observed point (in the support: a one-hot row)
    assert torch.equal(data["onehot"][0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(data["x"][1], data["x"][0]) and torch.equal(data["x"][3], data["x"][0])
    # a number, per modality; pandas; how="all"; dtype
    pd = pytest.importorskip("pandas")
    data2, mask2 = from_nan({"x": pd.DataFrame(x), "label": pd.Series(label)},
                            placeholder={"x": 0.0}, dtype=torch.float32)
    assert data2["x"].dtype == torch.float32 and torch.equal(data2["x"][3], torch.zeros(3))
    assert torch.equal(mask2["x"], mask["x"]) and torch.equal(data2["label"][1],
                                                              torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"modality 'x': data points \[1\] are partly NaN"):
        from_nan({"x": x}, how="all")
    _, mask3 = from_nan({"x": np.where(np.isnan(x), 0.0, x)[:3], "y": x[[0, 2, 3]]}, how="all")
    assert mask3["y"].tolist() == [True, True, False] and mask3["x"].all()
    with pytest.raises(ValueError, match="different numbers of data points"):
        from_nan({"x": x, "y": x[:2]})
    with pytest.raises(ValueError, match="placeholder must be finite"):
        from_nan({"x": x}, placeholder=float("inf"))


def test_from_nan_output_trains_a_validated_discrete_model():
    onehot = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    onehot[[1, 4]] = np.nan
    cat = np.array([0.0, 1.0, np.nan, 2.0, 1.0, np.nan])
    binary = np.array([[0, 1, 0, 1, 1], [1, 1, 0, 0, 0], [np.nan] * 5, [0, 0, 0, 1, 1],
                       [1, 0, 1, 0, 1], [0, 0, 1, 1, 0]], dtype=float)
    data, mask = from_nan({"onehot": onehot, "cat": cat, "bin": binary}, placeholder=0.0)
    svi = SVI(_validated_model, _validated_guide, pyro.optim.Adam({"lr": 0.1}),
              loss=MaskedMultimodalELBO())
    assert math.isfinite(svi.step(data, mask))


def test_multimodal_guide_takes_modalities_absent_from_data_as_unobserved():
    model, data = linear_gaussian()
    guide = MultimodalGuide({m: expert_encoder(x.shape[1], 2, (8,)) for m, x in data.items()},
                            PoE())
    mask = {"a": torch.ones(N, dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool),
            "c": torch.zeros(N, dtype=torch.bool)}
    with torch.no_grad():
        placeholder = guide.distribution(data, mask)  # b, c present but masked out
        absent = guide.distribution({"a": data["a"]}, mask)  # b, c absent from data
        torch.testing.assert_close(absent.mean, placeholder.mean)
        torch.testing.assert_close(absent.variance, placeholder.variance)
        nothing = guide.distribution({}, none_observed(data))  # PoE with no expert: the prior
        torch.testing.assert_close(nothing.mean, torch.zeros(N, 2))
        torch.testing.assert_close(nothing.variance, torch.ones(N, 2))
        out = Predictive(model, guide=guide, num_samples=5)({}, none_observed(data))
    assert out["z"].shape == (5, N, 2) and out["x_b"].shape == (5,) + data["b"].shape
    with pytest.raises(ValueError, match="modality 'b' is marked observed in the mask but has no"):
        guide.distribution({"a": data["a"]}, dict(mask, b=torch.ones(N, dtype=torch.bool)))


def test_bounds_do_not_generate_masked_out_real_valued_modalities():
    """Inside the bounds observe only scores (protocol.scoring): a Gaussian modality keeps its
    placeholder, a Bernoulli one still gets a draw (its placeholder may be outside the support);
    outside them (Predictive, coherence) both are generated."""
    seen = {}

    def model(data, mask):
        with pyro.plate("data", num_points(data, mask)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            seen["a"] = observe("a", dist.Normal(z @ W_A, 1.0).to_event(1), data, mask)
            seen["b"] = observe("b", dist.Bernoulli(logits=z @ W_B).to_event(1), data, mask)

    def guide(data, mask):
        with pyro.plate("data", num_points(data, mask)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    data = {"a": torch.full((N, 3), 7.0), "b": torch.full((N, 4), 7.0)}  # 7: not a binary value
    mask = {"a": torch.zeros(N, dtype=torch.bool), "b": torch.ones(N, dtype=torch.bool)}
    mask["a"][0], mask["b"][0] = True, False  # point 0: a observed, b generated
    data["a"][0], data["b"][1:] = 0.5, 1.0
    MaskedMultimodalELBO(masking="all", analytic_kl=False).loss(model, guide, data, mask)
    assert torch.equal(seen["a"][..., 1:, :], data["a"][1:])  # scored only: placeholders stay
    assert set(seen["b"][0].tolist()) <= {0.0, 1.0}  # constrained support: drawn
    pyro.poutine.trace(model).get_trace(data, mask)
    assert not torch.equal(seen["a"][1:], data["a"][1:])  # generation outside the bounds
