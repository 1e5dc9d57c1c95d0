"""Gaussian-mixture prior with the optimal cluster factor (seed 004 §4.2, App. G)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_mmvae.guides import MultimodalGuide, SumPooling, expert_encoder
from pyro_mmvae.models import GaussianDecoder, GaussianMixturePrior, MultimodalModel
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO
from pyro_mmvae.nn import MLP


def test_optimal_cluster_factor_gives_the_log_sum_exp_and_others_are_lower():
    prior = GaussianMixturePrior(4, 3, init_scale=1.0)
    z = torch.randn(50, 3)
    log_p = prior().log_prob(z)
    best = prior.cluster_factor_bound(z, prior.cluster_posterior(z))
    assert torch.allclose(best, log_p, atol=1e-10)
    for q in (torch.full((50, 4), 0.25), torch.softmax(torch.randn(50, 4), -1),
              torch.nn.functional.one_hot(torch.randint(0, 4, (50,)), 4).double()):
        assert (prior.cluster_factor_bound(z, q) <= log_p + 1e-12).all()
        assert (prior.cluster_factor_bound(z, q) < log_p - 1e-6).any()


def test_cluster_posterior_rows_sum_to_one_and_recover_separated_clusters():
    prior = GaussianMixturePrior(3, 2)
    with torch.no_grad():
        prior.locs.copy_(torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]]))
        prior.log_scales.zero_()
    labels = torch.randint(0, 3, (300,))
    z = prior.locs.detach()[labels] + torch.randn(300, 2)
    r = prior.cluster_posterior(z)
    assert torch.allclose(r.sum(-1), torch.ones(300))
    assert (r.argmax(-1) == labels).all()


def model_pair(dims={"a": 3, "b": 2}, latent=2, k=3):
    torch.manual_seed(0)
    prior = GaussianMixturePrior(k, latent, init_scale=1.0)
    decoders = {m: GaussianDecoder(MLP(latent, (8,), d)) for m, d in dims.items()}
    marginal = MultimodalModel(prior, decoders)
    enumerated = MultimodalModel(prior, decoders, enumerate_clusters=True)
    guide = MultimodalGuide({m: expert_encoder(d, latent, (8,)) for m, d in dims.items()},
                            SumPooling(2 * latent, latent, hidden_dim=8, pooling_dim=8))
    data = {m: torch.randn(16, d) for m, d in dims.items()}
    return marginal, enumerated, guide, data


def test_enumerated_cluster_model_equals_the_marginal_form():
    marginal, enumerated, guide, data = model_pair()
    params = list(marginal.parameters()) + list(guide.parameters())
    results = []
    for model, elbo in ((marginal, Trace_ELBO()),
                        (enumerated, TraceEnum_ELBO(max_plate_nesting=1))):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model, guide, data)
        results.append((loss, torch.autograd.grad(loss, params)))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-8)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("elbo", [MaskedMultimodalELBO(),
                                  MixtureMultimodalELBO(masking="iid_half")])
def test_mixture_prior_trains_under_the_multimodal_bounds(elbo):
    marginal, _, guide, data = model_pair()
    loss = elbo.differentiable_loss(marginal, guide, data)
    loss.backward()
    prior = marginal.prior
    for p in (prior.logits, prior.locs, prior.log_scales):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_assign_clusters_through_the_guide():
    marginal, _, guide, data = model_pair()
    labels = marginal.prior.assign_clusters(guide, data)
    assert labels.shape == (16,) and labels.dtype == torch.long
    assert ((labels >= 0) & (labels < 3)).all()


def test_training_with_missing_modalities_ignores_missing_entries():
    marginal, _, guide, data = model_pair()
    g = torch.Generator().manual_seed(0)
    mask = {m: torch.rand(16, generator=g) < 0.6 for m in data}
    mask["a"] = mask["a"] | ~mask["b"]
    other = {m: torch.where(mask[m].unsqueeze(-1), x, 1e3 * torch.randn_like(x))
             for m, x in data.items()}
    params = list(marginal.parameters()) + list(guide.parameters())
    out = []
    for d in (data, other):
        pyro.set_rng_seed(5)
        loss = MaskedMultimodalELBO().differentiable_loss(marginal, guide, d, mask)
        out.append((loss, torch.autograd.grad(loss, params)))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))
