"""DiscreteMoEGuide: a MoE guide whose component is a discrete Pyro site, trained by Pyro's
TraceGraph_ELBO. Its ELBO is the MoE bound exactly, its gate gradient is unbiased, it trains,
and it never picks a masked-out modality."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import Normal
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from pyro_mmvae.guides import MoE, MultimodalGuide, expert_encoder
from pyro_mmvae.guides.discrete_moe import (ComponentDraw, DiscreteMoEGuide, ExpertGate,
                                            MoEBaseline, ScoreFunctionCategorical)
from pyro_mmvae import MixtureMultimodalELBO
from pyro_mmvae.protocol import stack_mask
from tests.helpers import DIMS, linear_problem, random_mask

D = 2
E = 2 * D


def encoders(seed=0):
    torch.manual_seed(seed)
    return {m: expert_encoder(d, D, (8,)) for m, d in DIMS.items()}


def discrete_guide(gated=True, baseline=None, seed=0):
    enc = encoders(seed)
    return DiscreteMoEGuide(enc, ExpertGate(E) if gated else None, baseline=baseline)


def vectorised(num_particles):
    return TraceGraph_ELBO(num_particles=num_particles, vectorize_particles=True,
                           max_plate_nesting=1)


def log_joint(model, z, data, mask):
    """Hand-written log p(x_O, z) of the linear-Gaussian model, ``z`` (..., B, D)."""
    lp = Normal(0.0, 1.0).log_prob(z).sum(-1)
    for m in data:
        w, b, s = model.linear_parameters(m)
        lp = lp + mask[m] * Normal(z @ w.T + b, s).log_prob(data[m]).sum(-1)
    return lp


@pytest.mark.parametrize("gated", [False, True])
def test_trace_elbo_value_is_log_joint_minus_the_mixture_density(gated):
    model, data = linear_problem(n=8)
    mask = random_mask(data)
    guide = discrete_guide(gated)
    pyro.set_rng_seed(1)
    loss = TraceGraph_ELBO().loss(model, guide, data, mask)
    pyro.set_rng_seed(1)
    tr = poutine.trace(guide).get_trace(data, mask)
    tr.compute_log_prob()
    z = tr.nodes["z"]["value"]
    assert torch.equal(tr.nodes["expert"]["log_prob"], torch.zeros(8))  # c adds nothing
    q = guide.distribution(data, mask)  # q_MoE(z | x_O)
    assert torch.allclose(tr.nodes["z"]["log_prob"], q.log_prob(z))
    elbo = (log_joint(model, z, data, mask) - q.log_prob(z)).sum()
    assert loss == pytest.approx(-elbo.item(), abs=1e-9)
    # Trace_ELBO computes the same value from the same draw
    pyro.set_rng_seed(1)
    assert Trace_ELBO().loss(model, guide, data, mask) == pytest.approx(loss, abs=1e-9)


def test_uniform_gate_is_the_moe_aggregator():
    _, data = linear_problem(n=8)
    mask = random_mask(data)
    guide = discrete_guide(gated=False)
    ours = guide.distribution(data, mask)
    ref = MultimodalGuide(guide.encoders, MoE()).distribution(data, mask)
    for name in ("logits", "locs", "scales"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert torch.equal(a.isinf(), b.isinf())
        assert torch.allclose(a[a.isfinite()], b[b.isfinite()])


@pytest.mark.slow
@pytest.mark.parametrize("gated", [False, True])
def test_expected_loss_equals_the_stratified_mixture_bound(gated):
    """Stratifying over c is the exact expectation over c: E[TraceGraph loss] equals
    MixtureMultimodalELBO(masking="all", form="stratified") of the same mixture."""
    model, data = linear_problem(n=8)
    mask = random_mask(data)
    guide = discrete_guide(gated)
    elbo = vectorised(2000)
    losses = torch.tensor([elbo.loss(model, guide, data, mask) for _ in range(8)])
    ref = MixtureMultimodalELBO(50000, masking="all", form="stratified").loss(
        model, guide.mixture_guide(), data, mask)
    se = losses.std() / 8 ** 0.5
    assert abs(losses.mean().item() - ref) < 4 * se + 0.02
    # the expectation over c matters: it is not the loss of any single expert
    assert guide.distribution(data, mask).logits.isfinite().sum(-1).max() > 1


def exact_gate_gradient(model, guide, data, mask, num_samples=20000):
    r"""Gradient of the MoE ELBO w.r.t. the gate, by enumerating c:
    :math:`\nabla\sum_c\pi_c\,\mathbb E_{q_c}[f] = \sum_c\nabla\pi_c\,\mathbb E_{q_c}[f]`
    (the score of q_MoE has mean zero), the expectations by Monte Carlo."""
    q = guide.distribution(data, mask)
    with torch.no_grad():
        z = Normal(q.locs, q.scales).sample((num_samples,))  # (N, B, K, D): from every c
        z = z.movedim(-2, 0)  # (K, N, B, D)
        f = log_joint(model, z, data, mask) - q.log_prob(z)  # (K, N, B)
        value = f.mean(1).T  # (B, K)
    weights = q.logits.softmax(-1)
    value = torch.where(weights > 0, value, torch.zeros_like(value))
    gate = list(guide.aggregator.gate.parameters())
    return torch.autograd.grad((weights * value).sum(), gate)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["decaying_avg", "nn"])
def test_gate_gradient_is_unbiased(baseline):
    model, data = linear_problem(n=8)
    mask = random_mask(data)
    guide = discrete_guide(baseline=MoEBaseline(len(DIMS), E) if baseline == "nn"
                           else baseline)
    gate = list(guide.aggregator.gate.parameters())
    exact = torch.cat([g.flatten() for g in exact_gate_gradient(model, guide, data, mask)])
    elbo = vectorised(1000)
    for _ in range(30 if baseline == "decaying_avg" else 0):  # warm the running average
        elbo.loss_and_grads(model, guide, data, mask)
    grads = []
    for _ in range(12):
        for p in [*gate, *guide.parameters(), *model.parameters()]:
            p.grad = None
        elbo.loss_and_grads(model, guide, data, mask)
        grads.append(-torch.cat([p.grad.flatten() for p in gate]))  # d ELBO / d gate
    grads = torch.stack(grads)
    se = grads.std(0) / grads.shape[0] ** 0.5
    assert ((grads.mean(0) - exact).abs() < 4 * se + 1e-3).all()
    assert ((exact.abs() > 5 * se) & (exact.abs() > 1e-2)).any()  # the check has power


@pytest.mark.slow  # a training run
def test_tracegraph_training_improves_the_moe_bound():
    _, data = linear_problem(n=32)
    model, _ = linear_problem(seed=1)
    mask = random_mask(data, p=0.7)
    guide = discrete_guide(baseline=MoEBaseline(len(DIMS), E))

    def bound():
        pyro.set_rng_seed(123)
        return -MixtureMultimodalELBO(200).loss(model, guide.mixture_guide(), data, mask)

    before = bound()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), vectorised(4))
    svi.step(data, mask)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    for _ in range(300):
        svi.step(data, mask)
    after = bound()
    assert after > before + 20
    store = pyro.get_param_store()
    for prefix in ("aggregator$$$gate", "baseline$$$", "encoders$$$", "decoders$$$"):
        names = [k for k in params if k.startswith(prefix)]
        assert names and all(not torch.equal(params[k], store[k]) for k in names), prefix


@pytest.mark.parametrize("gated", [False, True])
def test_masked_out_modalities_are_never_chosen(gated):
    _, data = linear_problem(n=16)
    mask = random_mask(data, p=0.5, at_least_one=False)
    observed = stack_mask(mask, list(DIMS))  # (B, M)
    empty = ~observed.any(-1)
    assert empty.any() and (observed.sum(-1) > 1).any()
    guide = discrete_guide(gated)
    with pyro.plate("particles", 3000, dim=-2):
        tr = poutine.trace(guide).get_trace(data, mask)
    c = tr.nodes["expert"]["value"]  # (P, B)
    m = len(DIMS)
    chosen = torch.nn.functional.one_hot(c, m + 1).bool()  # (P, B, M + 1)
    allowed = torch.cat([observed, empty.unsqueeze(-1)], -1)
    assert not (chosen & ~allowed).any()
    # every observed modality does get chosen, and the prior exactly where nothing is observed
    assert (chosen.any(0) == allowed).all()
    z = tr.nodes["z"]["value"]
    assert torch.isfinite(tr.nodes["z"]["fn"].log_prob(z)).all()


def test_component_draw_and_score_function_categorical():
    _, data = linear_problem(n=4)
    q = discrete_guide().distribution(data)
    c = torch.tensor([0, 2, 1, 0])
    d = ComponentDraw(q, c)
    z = d.rsample()
    assert z.shape == (4, D)
    assert d.expand((5, 4)).rsample().shape == (5, 4, D)
    assert torch.allclose(d.log_prob(z), q.log_prob(z))
    assert z.requires_grad  # reparameterised
    assert not d.log_prob(z.detach()).requires_grad  # STL: detached parameters
    assert ComponentDraw(q, c, stl=False).log_prob(z.detach()).requires_grad
    logits = torch.randn(4, 3, requires_grad=True)
    cat = ScoreFunctionCategorical(logits=logits)
    lp = cat.log_prob(c.clamp(max=2))
    assert torch.equal(lp, torch.zeros(4))
    (g,) = torch.autograd.grad(lp.sum(), logits)
    ref = torch.autograd.grad(torch.distributions.Categorical(logits=logits).log_prob(
        c.clamp(max=2)).sum(), logits)[0]
    assert torch.allclose(g, ref)
    assert isinstance(cat.expand((2, 4)), ScoreFunctionCategorical)


def test_bad_arguments():
    with pytest.raises(ValueError, match="baseline"):
        DiscreteMoEGuide(encoders(), baseline="average")
    with pytest.raises(ValueError, match="component_site"):
        DiscreteMoEGuide(encoders(), component_site="z")
