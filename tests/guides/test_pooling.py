"""Permutation invariance, masked-content invariance and mixture gradients of the learnable
aggregators (seed 004 Examples 1-2)."""

import pyro
import pytest
import torch

from pyro_mmvae.guides import (DiagNormalMixture, MultimodalGuide, SelfAttention,
                               SelfAttentionMixture, SumPooling, SumPoolingMixture, expert_encoder)

E, D = 6, 3
AGGREGATORS = {
    "SumPooling": lambda **kw: SumPooling(E, D, hidden_dim=16, pooling_dim=8, **kw),
    "SelfAttention": lambda **kw: SelfAttention(E, D, hidden_dim=16, pooling_dim=8,
                                                attention_dim=8, mlp_dim=16, depth=2, **kw),
    "SumPoolingMixture": lambda **kw: SumPoolingMixture(E, D, 4, hidden_dim=16,
                                                        pooling_dim=8, **kw),
    "SelfAttentionMixture": lambda **kw: SelfAttentionMixture(E, D, 4, hidden_dim=16,
                                                              pooling_dim=8, attention_dim=8,
                                                              mlp_dim=16, **kw),
}


def inputs(b=7, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, m, E, generator=g)
    mask = torch.rand(b, m, generator=g) < 0.6
    mask[0] = False  # nothing observed
    mask[1] = False
    mask[1, 2] = True  # all but one masked
    mask[2] = True  # everything observed
    return f, mask


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_permuting_modalities_leaves_q_unchanged(name):
    agg = AGGREGATORS[name]()
    f, mask = inputs()
    perm = torch.tensor([3, 0, 4, 2, 1])
    z = torch.randn(9, 7, D)
    a, b = agg(f, mask).log_prob(z), agg(f[:, perm], mask[:, perm]).log_prob(z)
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_masked_out_features_change_nothing_and_no_nan(name):
    agg = AGGREGATORS[name]()
    f, mask = inputs()
    other = torch.where(mask.unsqueeze(-1), f, 1e3 * torch.randn_like(f))
    z = torch.randn(9, 7, D)
    a, b = agg(f, mask).log_prob(z), agg(other, mask).log_prob(z)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    # gradients reach no masked feature
    f = f.clone().requires_grad_()
    agg(f, mask).log_prob(z).sum().backward()
    assert torch.isfinite(f.grad).all() and (f.grad[~mask] == 0).all()


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_empty_subset_is_a_learned_constant_or_the_prior(name):
    f, mask = inputs()
    none = torch.zeros_like(mask)
    z = torch.randn(4, 1, D).expand(4, 7, D)  # one point per row, evaluated for every item
    learned = AGGREGATORS[name]()(f, none).log_prob(z)
    assert torch.allclose(learned, learned[:, :1].expand_as(learned))  # same for every row
    prior = AGGREGATORS[name](empty="prior")(f, none).log_prob(z)
    assert torch.allclose(prior, torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_stacked_masks_equal_separate_calls(name):
    agg = AGGREGATORS[name]()
    f, _ = inputs()
    masks = torch.rand(3, 7, 5) < 0.5
    z = torch.randn(3, 7, D)
    stacked = agg(f, masks).log_prob(z)
    for t in range(3):
        assert torch.allclose(stacked[t], agg(f, masks[t]).log_prob(z[t]), atol=1e-12)


def test_mixture_aggregators_return_mixtures_and_normals_otherwise():
    f, mask = inputs()
    assert isinstance(AGGREGATORS["SumPoolingMixture"]()(f, mask), DiagNormalMixture)
    assert AGGREGATORS["SelfAttentionMixture"]()(f, mask).num_components == 4
    assert not isinstance(AGGREGATORS["SumPooling"]()(f, mask), DiagNormalMixture)


def test_self_attention_ignores_unobserved_keys_exactly():
    """An observed slot's attention output depends on observed slots only."""
    agg = AGGREGATORS["SelfAttention"]()
    f, mask = inputs()
    slots = agg.encode_slots(f, mask)
    other = torch.where(mask.unsqueeze(-1), f, torch.randn_like(f))
    assert torch.equal(slots[mask], agg.encode_slots(other, mask)[mask])


@pytest.mark.parametrize("d", [1, 3])
def test_mixture_pathwise_gradient_matches_closed_form(d):
    """E[f(z)] for f = sum(sin z + z^2) has a closed form under a diagonal-Gaussian mixture;
    the implicit-reparameterisation gradient must match its gradient in logits, means and
    scales."""
    torch.manual_seed(0)
    logits = torch.randn(3, requires_grad=True)
    locs = torch.randn(3, d, requires_grad=True)
    scales = (torch.rand(3, d) + 0.4).requires_grad_()

    def closed(lg, lc, sc):
        w = lg.softmax(-1)[:, None]
        return (w * (torch.sin(lc) * torch.exp(-sc ** 2 / 2) + lc ** 2 + sc ** 2)).sum()

    exact = torch.autograd.grad(closed(logits, locs, scales), (logits, locs, scales))
    z = DiagNormalMixture(logits, locs, scales).rsample((200000,))
    mc = torch.autograd.grad((torch.sin(z) + z ** 2).sum(-1).mean(), (logits, locs, scales))
    for a, b in zip(exact, mc):
        assert torch.allclose(a, b, atol=0.02), (a, b)


def test_mixture_sample_values_follow_the_mixture():
    q = DiagNormalMixture(torch.tensor([0.0, 1.0], requires_grad=True),
                          torch.tensor([[-2.0], [2.0]]), torch.tensor([[0.5], [0.5]]))
    z = q.rsample((100000,)).detach()
    assert abs((z < 0).double().mean() - torch.tensor([0.0, 1.0]).softmax(0)[0]) < 0.01


def test_multimodal_guide_with_pooling_aggregator_samples_z():
    dims = {"a": 4, "b": 2, "c": 3}
    guide = MultimodalGuide({m: expert_encoder(n, E // 2, (8,)) for m, n in dims.items()},
                            AGGREGATORS["SelfAttention"]())
    data = {m: torch.randn(5, n) for m, n in dims.items()}
    tr = pyro.poutine.trace(guide).get_trace(data, None)
    assert tr.nodes["z"]["value"].shape == (5, D)


def test_stl_density_passes_no_gradient_to_mixture_parameters():
    from pyro_mmvae.infer.traces import site_log_prob
    logits = torch.randn(3, requires_grad=True)
    locs = torch.randn(3, 2, requires_grad=True)
    scales = (torch.rand(3, 2) + 0.5).requires_grad_()
    q = DiagNormalMixture(logits, locs, scales)
    z = q.rsample((4,))
    site = {"fn": q, "value": z.detach(), "scale": 1.0, "mask": None}
    assert not site_log_prob(site, stop_gradient=True).requires_grad
    assert site_log_prob(site).requires_grad
    site["value"] = z  # the path through the sample stays live
    grads = torch.autograd.grad(site_log_prob(site, stop_gradient=True).sum(),
                                (logits, locs, scales))
    assert all(g.abs().sum() > 0 for g in grads)


def test_lecun_normal_matches_flax_dense_init():
    from pyro_mmvae.nn import lecun_normal_
    torch.manual_seed(0)
    layer = lecun_normal_(torch.nn.Linear(400, 300))
    std = 400 ** -0.5
    assert layer.weight.std().item() == pytest.approx(std, rel=0.02)
    assert layer.weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-7
    assert (layer.bias == 0).all()


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregators_use_the_authors_dense_init(name):
    # Flax's lecun_normal keeps the input visible through chi and rho at initialisation;
    # PyTorch's default Linear init (a third of the variance) does not
    aggregator = AGGREGATORS[name]()
    linears = [m for m in aggregator.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for layer in linears:
        bound = 2 * layer.in_features ** -0.5 / 0.87962566103423978
        assert layer.weight.abs().max().item() <= bound + 1e-7
        assert layer.bias is None or (layer.bias == 0).all()
    # weights in units of fan_in^(-1/2): standard deviation 1 (PyTorch's default: 0.58)
    scaled = torch.cat([m.weight.flatten() * m.in_features ** 0.5 for m in linears])
    assert scaled.std().item() == pytest.approx(1.0, abs=0.12)
