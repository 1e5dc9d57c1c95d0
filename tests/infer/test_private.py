"""Private latents (seed 004 §3.2, Remark 24, Algorithm 2): exactness at the exact posterior,
permutation equivariance, masked-content invariance and training of the PE guides."""

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_mmvae.guides import (AttentionPrivate, IndependentPrivate, MultimodalGuide, PoE,
                               PooledPrivate, SelfAttention, SumPooling, expert_encoder)
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO
from tests.helpers import DIMS, ExactPrivatePosteriorGuide, private_problem, random_mask

D, P, E = 2, 2, 8
SMALL = dict(hidden_dim=16, pooling_dim=8)


def pe_guide(kind, dims=DIMS):
    if kind == "PE-PoE":
        encoders = {m: expert_encoder(n, D + P, (16,)) for m, n in dims.items()}  # 2D + 2P
        return MultimodalGuide(encoders, PoE(), private=IndependentPrivate(2 * D, P),
                               shared_features=2 * D)
    encoders = {m: expert_encoder(n, E // 2, (16,)) for m, n in dims.items()}
    if kind == "PE-SumPooling":
        return MultimodalGuide(encoders, SumPooling(E, D, **SMALL),
                               private=PooledPrivate(E, D, P, **SMALL))
    return MultimodalGuide(encoders, SelfAttention(E, D, attention_dim=8, mlp_dim=16, **SMALL),
                           private=AttentionPrivate(E, D, P, attention_dim=8, mlp_dim=16,
                                                    **SMALL))


KINDS = ["PE-PoE", "PE-SumPooling", "PE-SelfAttention"]


@pytest.mark.parametrize("vectorize", [None, False])  # False: once per (subset, particle)
@pytest.mark.parametrize("masking", ["iid_half", "hierarchical", "singletons", "all", "none"])
def test_masked_bound_with_private_latents_is_exact_at_the_exact_posterior(masking, vectorize):
    model, data = private_problem(n=6)
    guide = ExactPrivatePosteriorGuide(model)
    mask = random_mask(data)
    exact = model.exact_log_likelihood(data, mask).detach()
    t = MaskedMultimodalELBO(2, masking=masking, analytic_kl=False, vectorize=vectorize).terms(
        model, guide, data, mask)
    assert torch.allclose(t["elbo"], exact, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("vectorize", [None, False])
def test_other_bounds_with_private_latents_at_the_exact_posterior(vectorize):
    model, data = private_problem(n=5, dims={"a": 3, "b": 4})
    guide = ExactPrivatePosteriorGuide(model)
    exact = model.exact_log_likelihood(data).detach()
    mix = MixtureMultimodalELBO(masking="all", analytic_kl=False, vectorize=vectorize).terms(
        model, guide, data)
    assert torch.allclose(mix["elbo"], exact, atol=1e-8)
    gap = MixtureMultimodalELBO(200 if vectorize is False else 2000, masking="singletons",
                                vectorize=vectorize).terms(model, guide, data)["elbo"]
    assert (gap < exact - 1e-2).all()
    only = {m: {k: torch.full((5,), k == m) for k in data} for m in data}
    expected = exact + sum(model.exact_log_likelihood(data, only[m]) for m in data).detach()
    sub = SubsampledMultimodalELBO(analytic_kl=False, vectorize=vectorize).terms(model, guide, data)
    assert torch.allclose(sub["elbo"], expected, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_private_distributions_are_permutation_equivariant(kind):
    guide = pe_guide(kind)
    data = {m: torch.randn(5, n) for m, n in DIMS.items()}
    mask = random_mask(data)
    names = list(DIMS)
    feats = guide.features(data, mask)
    stacked = torch.stack([mask[m] for m in names], -1)
    z = torch.randn(5, D)
    loc, scale = guide.private(feats, stacked, z)
    perm = torch.tensor([2, 0, 1])
    loc_p, scale_p = guide.private(feats[:, perm], stacked[:, perm], z)
    observed = stacked[:, perm]
    assert torch.allclose(loc_p[observed], loc[:, perm][observed], atol=1e-10)
    assert torch.allclose(scale_p[observed], scale[:, perm][observed], atol=1e-10)
    shared = guide.aggregator(feats[..., :guide.shared_features or E], stacked)
    shared_p = guide.aggregator(feats[:, perm][..., :guide.shared_features or E], observed)
    zz = torch.randn(3, 5, D)
    assert torch.allclose(shared.log_prob(zz), shared_p.log_prob(zz), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_out_values_change_no_guide_site_and_private_latent_is_prior(kind):
    guide = pe_guide(kind)
    data = {m: torch.randn(6, n) for m, n in DIMS.items()}
    mask = random_mask(data)
    other = {m: torch.where(mask[m].unsqueeze(-1), x, 30 * torch.randn_like(x))
             for m, x in data.items()}
    traces = []
    for d in (data, other):
        pyro.set_rng_seed(2)
        tr = pyro.poutine.trace(guide).get_trace(d, mask)
        tr.compute_log_prob()
        traces.append(tr)
    for name in ["z"] + [f"w_{m}" for m in DIMS]:
        assert torch.equal(traces[0].nodes[name]["value"], traces[1].nodes[name]["value"])
        assert torch.equal(traces[0].nodes[name]["log_prob"], traces[1].nodes[name]["log_prob"])
    for m in DIMS:  # masked-out private latents come from N(0, I)
        fn = traces[0].nodes[f"w_{m}"]["fn"]
        off = ~mask[m]
        assert torch.equal(fn.mean[off], torch.zeros(int(off.sum()), P))
        assert torch.equal(fn.stddev[off], torch.ones(int(off.sum()), P))


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bound", ["masked", "mixture", "subsampled", "masked-iwae"])
def test_pe_guides_train_under_each_bound(kind, bound):
    _, data = private_problem(n=32)
    model, _ = private_problem(seed=1)
    guide = pe_guide(kind)
    elbo = {"masked": MaskedMultimodalELBO(), "mixture": MixtureMultimodalELBO(masking="iid_half"),
            "subsampled": SubsampledMultimodalELBO(),
            "masked-iwae": MaskedMultimodalELBO(3, iwae=True)}[bound]
    mask = random_mask(data)
    loss = elbo.differentiable_loss(model, guide, data, mask)
    loss.backward()
    for name, p in [*model.named_parameters(), *guide.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    pyro.clear_param_store()
    before = model.exact_log_likelihood(data, mask).sum().item()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss=elbo)
    losses = [svi.step(data, mask) for _ in range(150)]
    assert sum(losses[-30:]) < sum(losses[:30])
    assert model.exact_log_likelihood(data, mask).sum().item() > before + 1.0
