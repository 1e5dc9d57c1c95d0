"""Decode only what is scored (pyro_mmvae.decoding): the fast path gives the values and
gradients of decoding everything, and decodes the rows the issue names."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_mmvae.decoding as decoding
from pyro_mmvae.decoding import Rows, ScoredRows
from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.guides import MoE, MoPoE, PoE
from pyro_mmvae.infer import (MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO)
from pyro_mmvae.models import BernoulliDecoder, MultimodalModel
from pyro_mmvae.models import StandardNormalPrior
from pyro_mmvae.models import multimodal
from pyro_mmvae.protocol import scoring
from tests.helpers import (DIMS, ExactPrivatePosteriorGuide, counted, linear_problem,
                           make_guide, private_problem, random_mask, reset, rows_decoded)


@pytest.fixture
def decode_everything(monkeypatch):
    """Switch the fast path off: every decoder decodes the whole code."""
    def switch():
        for module in (decoding, multimodal):
            monkeypatch.setattr(module, "scored_rows", lambda *args: None)
    return switch


def loss_and_grads(elbo, model, guide, data, mask, seed=0):
    pyro.set_rng_seed(seed)
    params = list(model.parameters()) + list(getattr(guide, "parameters", list)())
    for p in params:
        p.grad = None
    loss = elbo.differentiable_loss(model, guide, data, mask)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


BOUNDS = {
    "subsampled": lambda: SubsampledMultimodalELBO(num_particles=2, num_subsets=1),
    "masked": lambda: MaskedMultimodalELBO(num_particles=2),
    "masked-iwae-dreg": lambda: MaskedMultimodalELBO(num_particles=3, iwae=True,
                                                     estimator="dreg"),
    "mixture-stratified": lambda: MixtureMultimodalELBO(num_particles=2),
    "mixture-average-k": lambda: MixtureMultimodalELBO(num_particles=2, form="average",
                                                       num_subsets=2),
}
AGGREGATORS = {"poe": PoE, "moe": MoE, "mopoe": MoPoE}


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("bound", BOUNDS)
def test_fast_path_equals_decoding_everything(bound, aggregator, decode_everything):
    model, data = linear_problem(n=7)
    model = counted(model)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data, p=0.7)
    fast, fast_grads = loss_and_grads(BOUNDS[bound](), model, guide, data, mask)
    fast_rows = sum(rows_decoded(model).values())
    reset(model)
    decode_everything()
    slow, slow_grads = loss_and_grads(BOUNDS[bound](), model, guide, data, mask)
    assert sum(rows_decoded(model).values()) > fast_rows  # the switch is effective
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    for f, s in zip(fast_grads, slow_grads):
        assert torch.allclose(f, s, rtol=1e-4, atol=1e-5)


def test_log_likelihood_equals_decoding_everything(decode_everything):
    model, data = linear_problem(n=6)
    guide = make_guide()
    mask = random_mask(data, p=0.7)
    pyro.set_rng_seed(3)
    fast = log_likelihood(model, guide, data, mask, given="a", num_samples=20)
    decode_everything()
    pyro.set_rng_seed(3)
    slow = log_likelihood(model, guide, data, mask, given="a", num_samples=20)
    assert torch.allclose(fast, slow, atol=1e-5, equal_nan=True)


def test_mvae_decodes_each_modality_twice_per_point():
    """MVAE's 1 + M terms score modality m in the joint and its own unimodal term only:
    2 decoder rows per point and particle, not 1 + M."""
    n, particles = 5, 2
    model, data = linear_problem(n=n)
    counted(model)
    guide = make_guide()
    elbo = SubsampledMultimodalELBO(num_particles=particles, num_subsets=0)
    elbo.differentiable_loss(model, guide, data, None)
    assert rows_decoded(model) == {m: 2 * n * particles for m in DIMS}


def test_masked_bound_decodes_each_modality_once_per_point():
    """The masked bound scores x_S under z_S and x_{O\\S} under z_O: one row per modality."""
    n, particles = 6, 3
    model, data = linear_problem(n=n)
    counted(model)
    guide = make_guide()
    MaskedMultimodalELBO(num_particles=particles).differentiable_loss(model, guide, data, None)
    assert rows_decoded(model) == {m: n * particles for m in DIMS}


def test_missing_modalities_are_not_decoded():
    n = 8
    model, data = linear_problem(n=n)
    counted(model)
    mask = random_mask(data, p=0.5, seed=4)
    MaskedMultimodalELBO(num_particles=1).differentiable_loss(model, make_guide(), data, mask)
    assert rows_decoded(model) == {m: int(mask[m].sum()) for m in DIMS}


def test_outside_scoring_everything_is_decoded():
    """Generation (Predictive, coherence) needs real decoder draws at masked-out rows."""
    model, data = linear_problem(n=4)
    counted(model)
    mask = {m: torch.zeros(4, dtype=torch.bool) for m in DIMS}
    mask["a"][:2] = True
    pyro.poutine.trace(model).get_trace(data, mask)
    assert rows_decoded(model) == {m: 4 for m in DIMS}
    reset(model)
    with scoring():
        pyro.poutine.trace(model).get_trace(data, mask)
    assert rows_decoded(model) == {"a": 2, "b": 1, "c": 1}  # one row when nothing is scored


FAMILIES = {
    "normal": lambda p: dist.Normal(p, p.exp()).to_event(1),
    "laplace": lambda p: dist.Laplace(p, 0.5 + p.exp()).to_event(1),
    "bernoulli": lambda p: dist.Bernoulli(logits=p).to_event(1),
    "onehot": lambda p: dist.OneHotCategorical(logits=p),
    "categorical": lambda p: dist.Categorical(logits=p),
    "mvn": lambda p: dist.MultivariateNormal(p, scale_tril=torch.diag_embed(p.exp())),
    "lognormal": lambda p: dist.TransformedDistribution(
        dist.Normal(p, 1.0), [dist.transforms.ExpTransform()]).to_event(1),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_scored_rows_distribution(family):
    torch.manual_seed(0)
    params = torch.randn(3, 4, 5, requires_grad=True)  # batch (3, 4), 5 features/categories
    rows = torch.rand(3, 4) < 0.5
    rows[0, 0] = True
    full = FAMILIES[family](params)
    index = rows.flatten().nonzero().squeeze(-1)
    part = ScoredRows(FAMILIES[family](params[rows]), Rows(rows.shape, index))
    assert part.batch_shape == full.batch_shape and part.event_shape == full.event_shape
    x = full.sample()
    lp = part.log_prob(x)
    assert torch.allclose(lp[rows], full.log_prob(x)[rows]) and (lp[~rows] == 0).all()
    # values that broadcast against the rows (the data (N, ...) against rows (T, S, N)) are
    # read at their own rows, not materialised
    event = len(full.event_shape)
    for value in (x[0], x[:1], x[:, :1], x[0, 0], x[:1, :1]):
        if value.dim() < event:
            continue
        lp_value = part.log_prob(value)
        assert torch.allclose(lp_value[rows], full.log_prob(value)[rows]), tuple(value.shape)
        assert (lp_value[~rows] == 0).all()
    g_part, = torch.autograd.grad(lp.sum(), params)
    g_full, = torch.autograd.grad(full.log_prob(x)[rows].sum(), params)
    assert torch.allclose(g_part, g_full)
    draw = part.sample()
    assert draw.shape == x.shape and bool(full.support.check(draw).all())


def test_bernoulli_model_with_missing_data_under_validation(decode_everything):
    """Constrained supports still get a valid draw at rows that are not decoded."""
    torch.manual_seed(0)
    dims = {"a": 5, "b": 6}
    model = MultimodalModel(StandardNormalPrior(2),
                            {m: BernoulliDecoder(nn.Linear(2, d)) for m, d in dims.items()})
    guide = make_guide(dims=dims)
    data = {m: torch.bernoulli(torch.full((6, d), 0.5)) for m, d in dims.items()}
    mask = {"a": torch.tensor([True] * 3 + [False] * 3), "b": torch.ones(6, dtype=torch.bool)}
    with pyro.validation_enabled(True):
        fast = loss_and_grads(MaskedMultimodalELBO(), model, guide, data, mask)[0]
        decode_everything()
        slow = loss_and_grads(MaskedMultimodalELBO(), model, guide, data, mask)[0]
    assert torch.allclose(fast, slow, atol=1e-5)


def test_private_latents_equal_decoding_everything(decode_everything):
    model, data = private_problem(n=5)
    guide = ExactPrivatePosteriorGuide(model)
    mask = random_mask(data, p=0.7)
    elbo = MaskedMultimodalELBO(num_particles=2)
    fast = loss_and_grads(elbo, model, guide, data, mask)[0]
    decode_everything()
    slow = loss_and_grads(elbo, model, guide, data, mask)[0]
    assert torch.allclose(fast, slow, atol=1e-5)
