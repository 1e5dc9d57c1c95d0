"""Plain programs and the vectorised path: the contract of ``pyro_mmvae.protocol.vectorized``.

A model and guide written for plain ``(N,)`` masks (no broadcasting over extra leading dims) are
called once per (subset, particle) cell; the library's own, which declare ``vectorized``, once
with everything stacked. Both must give the same values and gradients, and every closed form of
the bounds must hold for plain programs too.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal

from pyro_mmvae import (MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO,
                        observe)
from pyro_mmvae.eval import log_likelihood, rate_distortion
from pyro_mmvae.eval.coherence import decoded_value
from pyro_mmvae.guides import (DiscreteMoEGuide, MoE, MoPoE, PoE, SelfAttention, SumPooling,
                               expert_encoder)
from pyro_mmvae.infer.cells import StackedDistribution
from pyro_mmvae.protocol import DATA_PLATE, is_vectorized
from tests.helpers import DIMS as LG_DIMS
from tests.helpers import linear_problem, make_guide, random_mask

SMALL = dict(hidden_dim=16, pooling_dim=8)
AGGREGATORS = {
    "PoE": PoE, "MoE": MoE, "MoPoE": MoPoE,
    "SumPooling": lambda: SumPooling(4, 2, **SMALL),
    "SelfAttention": lambda: SelfAttention(4, 2, **SMALL, attention_dim=8, mlp_dim=16),
}
BOUNDS = {
    "masked": lambda **k: MaskedMultimodalELBO(**k),
    "mixture-stratified": lambda **k: MixtureMultimodalELBO(masking="iid_half", **k),
    "mixture-average": lambda **k: MixtureMultimodalELBO(form="average", **k),
    "mixture-average-drawn": lambda **k: MixtureMultimodalELBO(form="average", num_subsets=2,
                                                               **k),
    "mixture-sampled": lambda **k: MixtureMultimodalELBO(masking="iid_half", form="sampled",
                                                         **k),
    "subsampled": lambda **k: SubsampledMultimodalELBO(num_subsets=2, **k),
}
ESTIMATORS = {"elbo-3": dict(num_particles=3), "iwae-3": dict(num_particles=3, iwae=True),
              "standard": dict(estimator="standard", analytic_kl=False)}


class CommonRandomNumbers:
    """Every Gaussian and categorical draw from two fixed streams, consumed in call order.

    A vectorised draw of shape ``(T, S, N, D)`` and T*S per-cell draws of ``(N, D)`` in
    row-major order then read the same numbers, so the two paths see the same samples.
    """

    def __init__(self, size=1 << 16):
        g = torch.Generator().manual_seed(11)
        self.normal = torch.randn(size, generator=g, dtype=torch.float64)
        self.uniform = torch.rand(size, generator=g, dtype=torch.float64)
        self.reset()

    def reset(self):
        self.offsets = {"normal": 0, "uniform": 0}

    def take(self, stream, shape, dtype=None, device=None):
        shape = torch.Size(shape)
        start = self.offsets[stream]
        self.offsets[stream] = start + shape.numel()
        values = getattr(self, stream)[start:start + shape.numel()]
        return values.reshape(shape).to(dtype=dtype or torch.get_default_dtype())


@pytest.fixture
def crn(monkeypatch):
    streams = CommonRandomNumbers()
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: streams.take("normal", shape, dtype))
    real_randn = torch.randn

    def randn(*shape, dtype=None, device=None, **kwargs):
        if kwargs.get("generator") is not None:
            return real_randn(*shape, dtype=dtype, device=device, **kwargs)
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return streams.take("normal", shape, dtype)
    monkeypatch.setattr(torch, "randn", randn)

    def categorical_sample(self, sample_shape=torch.Size()):
        probs = self.probs
        u = streams.take("uniform", torch.Size(sample_shape) + self.batch_shape, probs.dtype)
        cdf = probs.cumsum(-1)
        return (u.unsqueeze(-1) > cdf).sum(-1).clamp(max=probs.shape[-1] - 1)
    monkeypatch.setattr(torch.distributions.Categorical, "sample", categorical_sample)
    return streams


def loss_and_grads(elbo, model, guide, data, mask, streams, seed=3):
    pyro.set_rng_seed(seed)  # the masking draws
    streams.reset()
    loss = elbo.differentiable_loss(model, guide, data, mask)
    params = [p for p in list(guide.parameters()) + list(model.parameters()) if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("bound", sorted(BOUNDS))
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_vectorised_and_per_cell_paths_agree(aggregator, bound, estimator, crn):
    if estimator == "iwae-3" and bound in ("mixture-average",):
        pytest.skip("form='average' is an ELBO of each component")
    model, data = linear_problem(n=8)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data)
    assert is_vectorized(model) and is_vectorized(guide)
    ref = loss_and_grads(BOUNDS[bound](**ESTIMATORS[estimator]), model, guide, data, mask, crn)
    got = loss_and_grads(BOUNDS[bound](vectorize=False, **ESTIMATORS[estimator]), model, guide,
                         data, mask, crn)
    assert torch.allclose(got[0], ref[0], rtol=1e-10, atol=1e-10), (got[0], ref[0])
    for g, r in zip(got[1], ref[1]):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-10)
    # the library's (vectorised) guide beside a user's plain model: the model alone is looped
    mixed = loss_and_grads(BOUNDS[bound](**ESTIMATORS[estimator]), PlainModel(model), guide,
                           data, mask, crn)
    assert torch.allclose(mixed[0], ref[0], rtol=1e-10, atol=1e-10), (mixed[0], ref[0])
    for g, r in zip(mixed[1], ref[1]):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-10)


class PlainModel(torch.nn.Module):
    """A library model behind a wrapper that declares nothing (and checks it gets (N,) masks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, data, mask):
        n = next(iter(mask.values())).shape[-1]
        assert all(m.shape == (n,) for m in mask.values())
        return self.model(data, mask)


def test_per_cell_path_calls_plain_programs_once_per_cell():
    model, data = linear_problem(n=8)
    calls = []

    def plain_guide(data, mask):
        assert all(m.shape == (8,) for m in mask.values())  # plain masks only
        calls.append("guide")
        q = model.exact_posterior(data, mask)
        with pyro.plate(DATA_PLATE, 8):
            z = pyro.sample("z", q)
        assert z.shape == (8, 2)  # no particle or subset dims either
        return z

    def plain_model(data, mask):
        assert all(m.shape == (8,) for m in mask.values())
        calls.append("model")
        return model(data, mask)

    MaskedMultimodalELBO(3).loss(plain_model, plain_guide, data, random_mask(data))
    assert calls.count("guide") == 2 * 3 and calls.count("model") == 2 * 3
    calls.clear()
    SubsampledMultimodalELBO(2, num_subsets=1).loss(plain_model, plain_guide, data)
    assert calls.count("guide") == (1 + 3 + 1) * 2 == calls.count("model")


# --------------------------------------------------------------------------- plain exact guide

def plain_exact_guide(model):
    """The exact posterior p(z | x_S) written for plain (N,) masks, declaring nothing."""
    def guide(data, mask):
        n = next(iter(mask.values())).shape[0]
        assert all(m.shape == (n,) for m in mask.values())
        with pyro.plate(DATA_PLATE, n):
            return pyro.sample("z", model.exact_posterior(data, mask))
    return guide


def plain(model):
    def program(data, mask):
        n = next(iter(mask.values())).shape[0]
        assert all(m.shape == (n,) for m in mask.values())
        return model(data, mask)
    return program


def test_masked_bound_is_exact_for_a_plain_exact_posterior_guide():
    model, data = linear_problem(n=6)
    guide, pmodel = plain_exact_guide(model), plain(model)
    for seed in (1, 2):
        mask = random_mask(data, seed=seed)
        exact = model.exact_log_likelihood(data, mask).detach()
        for masking in ("iid_half", "hierarchical", "singletons", "none", "all"):
            for particles in (1, 3):
                terms = MaskedMultimodalELBO(particles, masking=masking, analytic_kl=False).terms(
                    pmodel, guide, data, mask)
                assert torch.allclose(terms["elbo"], exact, atol=1e-9), (masking, particles)
        iw = MaskedMultimodalELBO(3, iwae=True).terms(pmodel, guide, data, mask)
        assert torch.allclose(iw["elbo"], exact, atol=1e-9)


def test_mixture_bound_is_strictly_below_for_a_plain_exact_posterior_guide():
    model, data = linear_problem(n=6)
    guide, pmodel = plain_exact_guide(model), plain(model)
    exact = model.exact_log_likelihood(data).detach()
    t = MixtureMultimodalELBO(200, masking="iid_half", analytic_kl=False).terms(
        pmodel, guide, data)
    proper = t["subset_size"] < 3
    assert proper.any() and (t["elbo"][proper] < exact[proper] - 1e-2).all()
    assert torch.allclose(t["elbo"][~proper], exact[~proper], atol=1e-9)


def test_masked_out_values_change_nothing_for_plain_programs():
    model, data = linear_problem(n=6)
    guide, pmodel = plain_exact_guide(model), plain(model)
    mask = random_mask(data, seed=4)
    noisy = {m: torch.where(mask[m].unsqueeze(-1), x, 1e3 * torch.randn_like(x))
             for m, x in data.items()}
    for make in (MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO):
        a = (pyro.set_rng_seed(5), make(2).loss(pmodel, guide, data, mask))[1]
        b = (pyro.set_rng_seed(5), make(2).loss(pmodel, guide, noisy, mask))[1]
        assert a == b, make.__name__


def test_importance_sampled_likelihood_is_exact_for_a_plain_exact_proposal():
    model, data = linear_problem(n=6)
    guide, pmodel = plain_exact_guide(model), plain(model)
    mask = random_mask(data, seed=2)
    exact = model.exact_log_likelihood(data, mask)
    assert torch.allclose(log_likelihood(pmodel, guide, data, mask, num_samples=5), exact,
                          atol=1e-9)
    pyro.set_rng_seed(3)
    rd = rate_distortion(pmodel, guide, data, mask, num_samples=2)  # model per cell
    pyro.set_rng_seed(3)
    ref = rate_distortion(model, guide, data, mask, num_samples=2)  # model vectorised
    assert set(rd) == set(ref)
    for key in ref:
        torch.testing.assert_close(rd[key], ref[key], rtol=1e-10, atol=1e-10)
    assert (ref["cross_rate"] >= -1e-9).all()  # a closed-form KL here


def test_stacked_distribution_scores_cell_by_cell():
    parts = [dist.Normal(torch.full((3,), float(i)), 1.0 + i).to_event(0) for i in range(6)]
    stacked = StackedDistribution(parts, (2, 3), (3,))
    assert stacked.batch_shape == (2, 3, 3)
    value = torch.randn(4, 2, 3, 3)  # an extra leading dim, as a mixture's components
    ref = torch.stack([p.log_prob(value[:, i // 3, i % 3]) for i, p in enumerate(parts)], 1)
    assert torch.allclose(stacked.log_prob(value), ref.reshape(4, 2, 3, 3))
    assert torch.allclose(stacked.mean[1, 2], torch.full((3,), 5.0))
    flipped = stacked.reordered([1, 0])
    assert flipped.parts[:3] == parts[3:] and flipped.parts[3:] == parts[:3]


# --------------------------------------------------------------------------- global latents

DIMS = {"a": 3, "b": 4}


def sigma_model(weights, sigma=None):
    """z_n ~ N(0, I), x_mn ~ N(z_n W_m, sigma) with a global noise scale sigma ~ LogNormal
    (or the constant ``sigma``)."""
    def model(data, mask):
        scale = pyro.sample("sigma", dist.LogNormal(0.0, 1.0)) if sigma is None else sigma
        n = next(iter(mask.values())).shape[0]
        with pyro.plate(DATA_PLATE, n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            for m, w in weights.items():
                observe(m, dist.Normal(z @ w, scale).to_event(1), data, mask)
    return model


def sigma_problem(n=16, seed=0):
    torch.manual_seed(seed)
    weights = {m: torch.randn(2, d) for m, d in DIMS.items()}
    z = torch.randn(n, 2)
    data = {m: z @ w + 0.5 * torch.randn(n, w.shape[1]) for m, w in weights.items()}
    return sigma_model(weights), data, weights


ALL_BOUNDS = {
    "masked": lambda: MaskedMultimodalELBO(2, analytic_kl=False),
    "masked-analytic": lambda: MaskedMultimodalELBO(),
    "mixture": lambda: MixtureMultimodalELBO(2, masking="iid_half"),
    "mixture-moe": lambda: MixtureMultimodalELBO(2),
    "subsampled": lambda: SubsampledMultimodalELBO(2, num_subsets=2),
}


@pytest.mark.parametrize("bound", sorted(ALL_BOUNDS))
def test_global_latent_log_ratio_is_counted_once(bound):
    """With a point-mass guide for sigma the bound is the bound of the model conditioned on
    that sigma, plus log p(sigma) once (not once per subset term)."""
    model, data, weights = sigma_problem()
    guide = make_guide(MoE() if bound == "mixture-moe" else PoE(), dims=DIMS)
    sigma = torch.tensor(0.7)

    def with_sigma(data, mask):
        pyro.sample("sigma", dist.Delta(sigma))
        return guide(data, mask)
    with_sigma.vectorized = True  # it broadcasts: the two runs then draw z alike

    fixed = sigma_model(weights, sigma)
    mask = random_mask(data, seed=3)
    for vectorize in (None, False):
        pyro.set_rng_seed(1)
        with_global = ALL_BOUNDS[bound]()
        with_global.vectorize = vectorize
        t = with_global.terms(model, with_sigma, data, mask)
        pyro.set_rng_seed(1)
        ref = ALL_BOUNDS[bound]()
        ref.vectorize = vectorize
        r = ref.terms(fixed, guide, data, mask)
        prior = dist.LogNormal(0.0, 1.0).log_prob(sigma)
        assert torch.allclose(t["global"], prior, atol=1e-12)
        assert torch.allclose(t["elbo"].sum(), r["elbo"].sum() + prior, atol=1e-9), vectorize


def autonormal_beside(model, guide):
    auto = AutoNormal(poutine.block(model, expose=["sigma"]))

    def composed(data, mask):
        auto(data, mask)
        return guide(data, mask)
    return composed, auto


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("bound", sorted(ALL_BOUNDS) + ["Trace_ELBO"])
def test_global_sigma_trains_with_an_autonormal_beside_the_library_guide(bound):
    model, data, _ = sigma_problem(n=64)
    guide = make_guide(MoE() if bound == "mixture-moe" else PoE(), dims=DIMS, hidden=(16,))
    composed, auto = autonormal_beside(model, guide)
    loss = Trace_ELBO() if bound == "Trace_ELBO" else ALL_BOUNDS[bound]()
    svi = SVI(model, composed, pyro.optim.Adam({"lr": 0.03}), loss=loss)
    pyro.set_rng_seed(0)
    mask = {m: torch.ones(64, dtype=torch.bool) for m in data}
    first = sum(svi.step(data, mask) for _ in range(10))
    for _ in range(140):
        svi.step(data, mask)
    last = sum(svi.step(data, mask) for _ in range(10))
    assert last < first
    scale = auto.median()["sigma"].item()
    if bound == "mixture":  # cross-reconstructions from random subsets: a looser fit
        assert 0.9 < scale < 1.6
    else:
        assert 0.3 < scale < 0.9  # the data's noise is 0.5 (plus what z does not explain)


@pytest.mark.slow
def test_autoguidelist_holds_an_autonormal_and_a_multimodal_guide():
    model, data, _ = sigma_problem(n=64)
    guide = make_guide(PoE(), dims=DIMS, hidden=(16,))
    listed = AutoGuideList(model)
    listed.append(AutoNormal(poutine.block(model, expose=["sigma"])))
    listed.append(guide)
    mask = {m: torch.ones(64, dtype=torch.bool) for m in data}
    for loss in (Trace_ELBO(), MaskedMultimodalELBO()):
        pyro.set_rng_seed(0)
        svi = SVI(model, listed, pyro.optim.Adam({"lr": 0.03}), loss=loss)
        first = svi.step(data, mask)
        for _ in range(100):
            last = svi.step(data, mask)
        assert last < first
    sites = poutine.trace(listed).get_trace(data, mask).nodes
    assert "sigma" in sites and "z" in sites


def test_iwae_with_a_global_latent_is_refused_with_a_clear_message():
    model, data, _ = sigma_problem()
    composed, _ = autonormal_beside(model, make_guide(PoE(), dims=DIMS))
    with pytest.raises(ValueError, match="iwae=True with global latents"):
        MaskedMultimodalELBO(2, iwae=True).loss(model, composed, data,
                                                {m: torch.ones(16, dtype=torch.bool) for m in data})


# --------------------------------------------------------------------------- review follow-ups

@pytest.mark.parametrize("vectorize", [None, False])
def test_global_sigma_autonormal_equals_trace_elbo_with_full_subsets(vectorize, crn):
    """masking='all' makes every bound the ELBO: with the same draws the library's bounds give
    Trace_ELBO's value exactly, AutoNormal's auxiliary site and Delta included, sigma's
    log p - log q counted once (not once per subset term)."""
    model, data, _ = sigma_problem()
    guide = make_guide(PoE(), dims=DIMS)
    composed, _ = autonormal_beside(model, guide)
    mask = {m: torch.ones(16, dtype=torch.bool) for m in data}
    composed(data, mask)  # the autoguide's set-up traces the model (and draws) once, first
    kwargs = dict(analytic_kl=False, estimator="standard", vectorize=vectorize)
    values = {}
    for name, elbo in {"Trace_ELBO": Trace_ELBO(),
                       "masked": MaskedMultimodalELBO(masking="all", **kwargs),
                       "mixture": MixtureMultimodalELBO(masking="all", **kwargs)}.items():
        pyro.set_rng_seed(0)
        crn.reset()
        values[name] = elbo.loss(model, composed, data, mask)
    assert values["masked"] == pytest.approx(values["Trace_ELBO"], abs=1e-9)
    assert values["mixture"] == pytest.approx(values["Trace_ELBO"], abs=1e-9)


@pytest.mark.parametrize("vectorize", [None, False])
def test_factors_count_once_as_pyro_counts_them(vectorize):
    """A global pyro.factor is counted once and a per-datapoint factor on z belongs to the
    prior (not to every subset term): with full subsets the bounds equal Trace_ELBO."""
    weights = {m: torch.randn(2, d) for m, d in DIMS.items()}

    def model(data, mask):
        pyro.factor("anchor", torch.tensor(-1.5))
        with pyro.plate(DATA_PLATE, 8):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.factor("shrink", -0.1 * (z ** 2).sum(-1))
            for m, w in weights.items():
                observe(m, dist.Normal(z @ w, 1.0).to_event(1), data, mask)

    def guide(data, mask):
        with pyro.plate(DATA_PLATE, 8):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    data = {m: torch.randn(8, d) for m, d in DIMS.items()}
    mask = {m: torch.ones(8, dtype=torch.bool) for m in data}
    pyro.set_rng_seed(0)
    ref = Trace_ELBO().loss(model, guide, data, mask)
    for make in (MaskedMultimodalELBO, MixtureMultimodalELBO):
        pyro.set_rng_seed(0)
        value = make(masking="all", analytic_kl=False, vectorize=vectorize).loss(
            model, guide, data, mask)
        assert value == pytest.approx(ref, abs=1e-9), make.__name__


def test_bounds_refuse_what_they_cannot_score():
    model, data = linear_problem(n=8)
    with pytest.raises(ValueError, match="max_plate_nesting must be 1"):
        MaskedMultimodalELBO(max_plate_nesting=2)

    def subsampling(data, mask):
        with pyro.plate(DATA_PLATE, 8, subsample_size=3):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pytest.raises(ValueError, match="subsample_size"):
        MaskedMultimodalELBO().loss(model, subsampling, data)

    def other_plate(data, mask):
        with pyro.plate("batch", 8):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    for make in (MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO):
        with pytest.raises(ValueError, match=r"no latent inside pyro.plate\('data', N\)"):
            make().loss(model, other_plate, data)

    discrete = DiscreteMoEGuide({m: expert_encoder(d, 2, (8,)) for m, d in LG_DIMS.items()})
    with pytest.raises(ValueError, match="guide site 'expert'.*cannot be reparameterised"):
        MixtureMultimodalELBO().loss(model, discrete, data)


def test_log_likelihood_and_rate_distortion_with_an_autonormal_beside_the_guide(crn):
    """Auxiliary sites in the importance weights: AutoNormal's q(sigma) (a Normal on log sigma
    and a Delta with the Jacobian) gives the same estimate as the LogNormal it amounts to."""
    model, data, _ = sigma_problem(n=8)
    guide = make_guide(PoE(), dims=DIMS)
    composed, auto = autonormal_beside(model, guide)
    mask = random_mask(data, seed=2)
    composed(data, mask)  # set up the autoguide
    loc = pyro.param("AutoNormal.locs.sigma").detach()
    scale = pyro.param("AutoNormal.scales.sigma").detach()

    def lognormal(data, mask):
        pyro.sample("sigma", dist.LogNormal(loc, scale))
        return guide(data, mask)

    values = []
    for g in (composed, lognormal):
        pyro.set_rng_seed(0)
        crn.reset()
        values.append(log_likelihood(model, g, data, mask, num_samples=4))
    torch.testing.assert_close(values[0], values[1])
    rd = rate_distortion(model, composed, data, mask, num_samples=2)
    assert torch.isfinite(rd["full_rate"]).all() and torch.isfinite(rd["cross_rate"]).all()


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("bound", sorted(ALL_BOUNDS))
def test_autoguidelist_trains_under_every_bound(bound):
    model, data, _ = sigma_problem(n=64)
    listed = AutoGuideList(model)
    listed.append(AutoNormal(poutine.block(model, expose=["sigma"])))
    listed.append(make_guide(MoE() if bound == "mixture-moe" else PoE(), dims=DIMS, hidden=(16,)))
    mask = {m: torch.ones(64, dtype=torch.bool) for m in data}
    pyro.set_rng_seed(0)
    svi = SVI(model, listed, pyro.optim.Adam({"lr": 0.03}), loss=ALL_BOUNDS[bound]())
    first = sum(svi.step(data, mask) for _ in range(5))
    for _ in range(60):
        svi.step(data, mask)
    assert sum(svi.step(data, mask) for _ in range(5)) < first


def test_decoded_values_of_a_plain_model_are_decoded_cell_by_cell():
    logits = torch.randn(2, 3, 5, 4)  # a (2, 3) grid of cells with batch (5,), 4 categories
    parts = [dist.OneHotCategorical(logits=logits[i, j]) for i in range(2) for j in range(3)]
    stacked = StackedDistribution(parts, (2, 3), (5,))
    value = stacked.sample()
    decoded = decoded_value({"fn": stacked, "value": value})
    expected = torch.nn.functional.one_hot(logits.argmax(-1), 4).to(value.dtype)
    assert torch.equal(decoded, expected)
    cat = StackedDistribution([dist.Categorical(logits=logits[i, j]) for i in range(2)
                               for j in range(3)], (2, 3), (5,))
    assert torch.equal(decoded_value({"fn": cat, "value": cat.sample()}),
                       logits.argmax(-1).to(value.dtype))


@pytest.mark.parametrize("bound", ["masked", "mixture-stratified", "subsampled"])
def test_paths_agree_with_a_gaussian_mixture_prior(bound, crn):
    from pyro_mmvae.models import GaussianMixturePrior, MultimodalModel
    base, data = linear_problem(n=8)
    model = MultimodalModel(GaussianMixturePrior(3, 2), dict(base.decoders))
    guide = make_guide(PoE())
    mask = random_mask(data)
    ref = loss_and_grads(BOUNDS[bound](num_particles=2), model, guide, data, mask, crn)
    got = loss_and_grads(BOUNDS[bound](num_particles=2, vectorize=False), model, guide, data,
                         mask, crn)
    assert torch.allclose(got[0], ref[0], rtol=1e-10, atol=1e-10), (got[0], ref[0])
    for g, r in zip(got[1], ref[1]):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-10)
