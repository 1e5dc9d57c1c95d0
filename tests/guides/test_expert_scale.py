"""``scale="softplus" | "logvar"`` of every Gaussian head outside guides/aggregators.py: the gated
MoE, the private-latent heads and the pooling aggregators (and their mixtures).

Each head's parameters are forced to known values (the last dense layer's weights zeroed, its
bias set to chosen ``(mu, r)``), so the expected means and standard deviations are computed by
hand: ``sigma = min_scale + exp(r / 2)`` for ``"logvar"``, ``min_scale + softplus(r)`` (bit for
bit what the heads always gave) for the default.
"""

import pytest
import torch
from torch import nn

from pyro_mmvae.guides import (AttentionPrivate, DiscreteMoEGuide, GatedMoE, IndependentPrivate,
                               PooledPrivate, SelfAttention, SelfAttentionMixture, SumPooling,
                               SumPoolingMixture, expert_encoder)
from pyro_mmvae.guides.pooling import gaussian_head
from pyro_mmvae.nn import positive_scale

B, M, D, E, K = 3, 4, 2, 6, 3
MIN = 1e-3


def expected_sigma(r, scale, min_scale=MIN):
    if scale == "logvar":
        return min_scale + torch.exp(r / 2)
    return min_scale + torch.nn.functional.softplus(r)


def check_sigma(got, r, scale, min_scale=MIN):
    want = expected_sigma(r, scale, min_scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    if scale == "softplus":  # the default path is unchanged, bit for bit
        assert torch.equal(got, positive_scale(r, min_scale).expand_as(got))


def fix_last_linear(module, bias):
    """Zero the weights of ``module``'s last ``nn.Linear`` and set its bias: the head's output
    is then ``bias`` whatever its input."""
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias)


def masks():
    mask = torch.rand(B, M) < 0.6
    mask[0] = True
    return mask


SCALES = ["softplus", "logvar"]


# --------------------------------------------------------------------------- gaussian_head

@pytest.mark.parametrize("scale", SCALES)
def test_gaussian_head(scale):
    torch.manual_seed(0)
    out = torch.randn(5, 2 * D) * 3
    loc, sigma = gaussian_head(out, MIN, scale)
    assert torch.equal(loc, out[..., :D])
    check_sigma(sigma, out[..., D:], scale)
    # min_scale = 0: the plain log-variance head, sigma^2 = exp(r)
    if scale == "logvar":
        torch.testing.assert_close(gaussian_head(out, 0.0, scale)[1].log() * 2, out[..., D:])


# --------------------------------------------------------------------------- gated MoE

@pytest.mark.parametrize("scale", SCALES)
def test_gated_moe(scale):
    torch.manual_seed(1)
    features = torch.randn(B, M, 2 * D) * 2
    logits, locs, scales = GatedMoE(min_scale=MIN, scale=scale).components(features, masks())
    assert torch.equal(locs[..., :M, :], features[..., :D])
    torch.testing.assert_close(scales[..., :M, :], expected_sigma(features[..., D:], scale),
                               rtol=1e-12, atol=0)
    assert torch.equal(scales[..., M, :], torch.ones(B, D))  # the prior component
    guide = DiscreteMoEGuide({f"m{i}": expert_encoder(3, D) for i in range(M)}, scale=scale)
    assert guide.aggregator.scale == scale
    assert guide.mixture_guide().aggregator.scale == scale


# --------------------------------------------------------------------------- private heads

@pytest.mark.parametrize("scale", SCALES)
def test_independent_private(scale):
    torch.manual_seed(2)
    shared, dw = 4, 3
    features = torch.randn(B, M, shared + 2 * dw) * 2
    loc, sigma = IndependentPrivate(shared, dw, min_scale=MIN, scale=scale)(
        features, masks(), torch.randn(B, D))
    assert torch.equal(loc, features[..., shared:shared + dw])
    check_sigma(sigma, features[..., shared + dw:], scale)


@pytest.mark.parametrize("cls", [PooledPrivate, AttentionPrivate])
@pytest.mark.parametrize("scale", SCALES)
def test_pooled_and_attention_private(cls, scale):
    torch.manual_seed(3)
    dw = 3
    head = cls(E, D, dw, hidden_dim=8, pooling_dim=8, min_scale=MIN, scale=scale,
               **({"attention_dim": 8, "mlp_dim": 8} if cls is AttentionPrivate else {}))
    mu, r = torch.randn(dw), torch.randn(dw) * 3
    fix_last_linear(head.psi if cls is PooledPrivate else head.out, torch.cat([mu, r]))
    loc, sigma = head(torch.randn(B, M, E), masks(), torch.randn(B, D))
    assert loc.shape == sigma.shape == (B, M, dw)
    assert torch.equal(loc, mu.expand(B, M, dw))
    check_sigma(sigma, r.expand(B, M, dw), scale)


# --------------------------------------------------------------------------- pooling aggregators

def pooled(cls, scale, **kwargs):
    extra = {"attention_dim": 8, "mlp_dim": 8} if "Attention" in cls.__name__ else {}
    return cls(E, D, hidden_dim=8, pooling_dim=8, min_scale=MIN, scale=scale, **extra, **kwargs)


@pytest.mark.parametrize("cls", [SumPooling, SelfAttention])
@pytest.mark.parametrize("scale", SCALES)
def test_pooling_gaussian_head(cls, scale):
    torch.manual_seed(4)
    agg = pooled(cls, scale)
    mu, r = torch.randn(D), torch.randn(D) * 3
    fix_last_linear(agg.rho, torch.cat([mu, r]))
    q = agg(torch.randn(B, M, E), masks())
    assert torch.equal(q.base_dist.loc, mu.expand(B, D))
    check_sigma(q.base_dist.scale, r.expand(B, D), scale)


@pytest.mark.parametrize("cls", [SumPoolingMixture, SelfAttentionMixture])
@pytest.mark.parametrize("scale", SCALES)
def test_pooling_mixture_heads(cls, scale):
    torch.manual_seed(5)
    agg = pooled(cls, scale, num_components=K)
    params = torch.randn(K, 2 * D) * 2
    logits = torch.randn(K)
    fix_last_linear(agg.rho, torch.cat([params.flatten(), logits]))
    q = agg(torch.randn(B, M, E), masks())
    assert torch.equal(q.locs, params[:, :D].expand(B, K, D))
    check_sigma(q.scales, params[:, D:].expand(B, K, D), scale)
    assert torch.equal(q.logits, logits.expand(B, K))


@pytest.mark.parametrize("num_components", [None, K])
def test_logvar_with_the_prior_for_the_empty_subset(num_components):
    agg = pooled(SumPooling, "logvar", num_components=num_components, empty="prior")
    mask = torch.zeros(B, M, dtype=torch.bool)
    q = agg(torch.randn(B, M, E), mask)
    scales = q.base_dist.scale if num_components is None else q.scales
    assert torch.equal(scales, torch.ones_like(scales))


# --------------------------------------------------------------------------- bad scale

@pytest.mark.parametrize("build", [
    lambda s: GatedMoE(scale=s),
    lambda s: DiscreteMoEGuide({"a": expert_encoder(3, D)}, scale=s),
    lambda s: IndependentPrivate(2, 2, scale=s),
    lambda s: PooledPrivate(E, D, 2, hidden_dim=4, pooling_dim=4, scale=s),
    lambda s: AttentionPrivate(E, D, 2, hidden_dim=4, pooling_dim=4, attention_dim=4,
                               mlp_dim=4, scale=s),
    lambda s: pooled(SumPooling, s),
    lambda s: pooled(SelfAttention, s),
    lambda s: pooled(SumPoolingMixture, s),
    lambda s: pooled(SelfAttentionMixture, s),
], ids=["GatedMoE", "DiscreteMoEGuide", "IndependentPrivate", "PooledPrivate",
        "AttentionPrivate", "SumPooling", "SelfAttention", "SumPoolingMixture",
        "SelfAttentionMixture"])
def test_bad_scale_is_a_value_error_naming_it(build):
    with pytest.raises(ValueError, match=r"scale must be one of \('softplus', 'logvar'\), "
                                         r"got 'log_scale'"):
        build("log_scale")


def test_gaussian_head_refuses_a_bad_scale_and_an_odd_size():
    with pytest.raises(ValueError, match="scale must be one of"):
        gaussian_head(torch.zeros(4), MIN, "exp")
    for scale in SCALES:
        with pytest.raises(ValueError, match="even"):
            gaussian_head(torch.zeros(5), MIN, scale)
