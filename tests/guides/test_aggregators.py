import math

import pyro
import pytest
import torch
from pyro.distributions import Normal

from pyro_mmvae.guides import DiagNormalMixture, MoE, MoPoE, PoE
from pyro_mmvae.guides.aggregators import gaussian_experts
from pyro_mmvae.nn import inverse_positive_scale
from tests.helpers import make_guide, random_mask


def expert_features(locs, scales, min_scale=1e-3):
    """Features (B, M, 2D) whose experts have exactly these means and scales."""
    return torch.cat([locs, inverse_positive_scale(scales, min_scale)], dim=-1)


def grid_density(fn, grid):
    return fn.log_prob(grid.unsqueeze(-1)).exp()


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_is_normalised_product_by_numerical_integration(prior_expert):
    locs = torch.tensor([[[0.7], [-1.3], [2.0]]])  # (B=1, M=3, D=1)
    scales = torch.tensor([[[0.5], [1.5], [0.8]]])
    mask = torch.tensor([[True, True, False]])
    q = PoE(prior_expert=prior_expert)(expert_features(locs, scales), mask)
    grid = torch.linspace(-10, 10, 20001)
    product = Normal(0.7, 0.5).log_prob(grid) + Normal(-1.3, 1.5).log_prob(grid)
    if prior_expert:
        product = product + Normal(0.0, 1.0).log_prob(grid)
    density = product.exp()
    density = density / torch.trapezoid(density, grid)
    got = q.log_prob(grid.reshape(-1, 1, 1)).exp().squeeze(-1)
    assert torch.allclose(got, density, atol=1e-8)


def test_poe_single_expert_without_prior_is_that_expert():
    locs, scales = torch.randn(4, 1, 3), torch.rand(4, 1, 3) + 0.2
    q = PoE(prior_expert=False)(expert_features(locs, scales), torch.ones(4, 1, dtype=torch.bool))
    assert torch.allclose(q.mean, locs[:, 0]) and torch.allclose(q.stddev, scales[:, 0])


def test_poe_empty_subset_is_standard_normal():
    f = torch.randn(5, 3, 4)
    for prior_expert in (True, False):
        q = PoE(prior_expert=prior_expert)(f, torch.zeros(5, 3, dtype=torch.bool))
        assert torch.equal(q.mean, torch.zeros(5, 2)) and torch.equal(q.stddev, torch.ones(5, 2))


def test_mopoe_over_full_set_only_equals_poe():
    f = torch.randn(6, 3, 4)
    mask = torch.ones(6, 3, dtype=torch.bool)
    poe = PoE(prior_expert=True)(f, mask)
    mopoe = MoPoE(subsets=[(0, 1, 2)], prior_expert=True)(f, mask)
    z = torch.randn(10, 6, 2)
    assert torch.allclose(mopoe.log_prob(z), poe.log_prob(z), atol=1e-12)


def test_mopoe_default_components_and_full_set_prior_expert():
    f = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    q = MoPoE()(f, mask)
    weights = q.mixture_distribution.probs
    assert q.num_components == 2 ** 3  # 7 subsets + the prior component
    assert torch.allclose(weights[0, :7], torch.full((7,), 1 / 7)) and weights[0, 7] == 0
    # second row: subsets of {0, 2} only -> {0}, {2}, {0, 2}
    assert (weights[1] > 0).sum() == 3
    # the full-set component carries the prior expert: same as PoE(prior_expert=True)
    poe = PoE(prior_expert=True)(f, torch.ones_like(mask))
    assert torch.allclose(q.locs[:, 6], poe.mean) and torch.allclose(q.scales[:, 6], poe.stddev)


def test_moe_log_prob_is_log_mean_exp_of_observed_experts():
    locs, scales = torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.3
    mask = torch.tensor([[True, True, False, True], [False, True, False, False],
                         [True, True, True, True]])
    q = MoE()(expert_features(locs, scales), mask)
    z = torch.randn(7, 3, 2)
    comp = Normal(locs, scales).log_prob(z.unsqueeze(-2)).sum(-1)  # (7, 3, 4)
    comp = comp.masked_fill(~mask, -math.inf)
    expected = comp.logsumexp(-1) - mask.sum(-1).log()
    assert torch.allclose(q.log_prob(z), expected, atol=1e-10)


def test_moe_empty_subset_is_standard_normal():
    q = MoE()(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    z = torch.randn(5, 2, 2)
    assert torch.allclose(q.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_mixture_log_prob_integrates_to_one_in_1d():
    q = DiagNormalMixture(torch.tensor([0.3, -1.0, 0.5]), torch.tensor([[-2.0], [0.5], [3.0]]),
                          torch.tensor([[0.4], [1.0], [0.7]]))
    grid = torch.linspace(-15, 15, 30001)
    assert abs(torch.trapezoid(grid_density(q, grid), grid).item() - 1) < 1e-8


def test_mixture_sampling_moments_and_expand():
    q = DiagNormalMixture(torch.tensor([0.0, 1.0]), torch.tensor([[-1.0, 2.0], [3.0, 0.0]]),
                          torch.tensor([[0.5, 1.0], [1.0, 0.3]]))
    z = q.sample((200000,))
    assert torch.allclose(z.mean(0), q.mean, atol=0.02)
    assert torch.allclose(z.var(0), q.variance, atol=0.05)
    e = q.expand((4, 3))
    assert isinstance(e, DiagNormalMixture) and e.batch_shape == (4, 3)
    assert e.rsample((2,)).shape == (2, 4, 3, 2)


@pytest.mark.parametrize("aggregator", [PoE(), MoE(), MoPoE()], ids=["PoE", "MoE", "MoPoE"])
def test_masked_out_values_change_nothing_in_the_guide(aggregator):
    guide = make_guide(aggregator)
    data = {m: torch.randn(6, d) for m, d in {"a": 3, "b": 4, "c": 2}.items()}
    mask = random_mask(data)
    other = {m: torch.where(mask[m].unsqueeze(-1), x, 100 * torch.randn_like(x))
             for m, x in data.items()}
    q1, q2 = guide.distribution(data, mask), guide.distribution(other, mask)
    z = torch.randn(5, 6, 2)
    assert torch.equal(q1.log_prob(z), q2.log_prob(z))
    pyro.set_rng_seed(3)
    s1 = q1.rsample((4,))
    pyro.set_rng_seed(3)
    assert torch.equal(s1, q2.rsample((4,)))


@pytest.mark.parametrize("aggregator", [PoE(), MoE(), MoPoE()], ids=["PoE", "MoE", "MoPoE"])
def test_stacked_masks_equal_separate_calls(aggregator):
    f = torch.randn(5, 3, 4)
    masks = torch.rand(4, 5, 3) < 0.5
    stacked = aggregator(f, masks)
    z = torch.randn(4, 5, 2)
    for t in range(4):
        assert torch.allclose(stacked.log_prob(z)[t], aggregator(f, masks[t]).log_prob(z[t]))


def test_gaussian_experts_rejects_odd_features():
    with pytest.raises(ValueError, match="even feature size"):
        gaussian_experts(torch.randn(2, 3, 5), 1e-3)


def test_guide_rejects_unknown_and_missing_modalities():
    guide = make_guide()
    data = {m: torch.randn(4, d) for m, d in {"a": 3, "b": 4, "c": 2}.items()}
    with pytest.raises(ValueError, match="unknown modality 'd'"):
        guide.distribution({**data, "d": torch.randn(4, 1)})
    # absent from data is fine when the mask says it is not observed; the mask must name it
    with pytest.raises(ValueError, match="modality 'c' has no mask entry"):
        guide.distribution({"a": data["a"], "b": data["b"]})
    on = {m: torch.ones(4, dtype=torch.bool) for m in data}
    with pytest.raises(ValueError, match="modality 'c' is marked observed in the mask but has no"):
        guide.distribution({"a": data["a"], "b": data["b"]}, on)


@pytest.mark.parametrize("aggregator", [PoE(), MoE(), MoPoE()], ids=["PoE", "MoE", "MoPoE"])
def test_permuting_modalities_leaves_q_unchanged(aggregator):
    f = torch.randn(6, 4, 4)
    mask = torch.rand(6, 4) < 0.6
    perm = torch.tensor([2, 0, 3, 1])
    z = torch.randn(5, 6, 2)
    a = aggregator(f, mask).log_prob(z)
    b = aggregator(f[:, perm], mask[:, perm]).log_prob(z)
    assert torch.allclose(a, b, atol=1e-10)
