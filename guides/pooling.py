r"""Learnable permutation-invariant aggregators (Hirt et al. §3, Examples 1–2, App. D).

Both compute :math:`(\mu, r) = \rho_\vartheta\big(\sum_{s\in S} g_s\big)` from the
modality features :math:`h_s`, with :math:`g` permutation *equivariant* in the slots and only
the slots in S entering the sum (:math:`r` gives the standard deviation, below):

- :class:`SumPooling` (DeepSets): :math:`g_s=\chi_\vartheta(h_s)`, a shared MLP;
- :class:`SelfAttention` (Set Transformer without inducing points): :math:`g=\chi_\vartheta(h)`
  followed by pre-LayerNorm multi-head self-attention blocks in which a slot attends only to
  observed slots, and a final LayerNorm.

``ρ`` is an MLP giving the Gaussian parameters, or with ``num_components = K`` the ``K`` means,
scales and mixture logits of a diagonal-Gaussian mixture (:class:`SumPoolingMixture`,
:class:`SelfAttentionMixture`). For the empty subset the pooled sum is the zero vector, so
:math:`q(z\mid x_\emptyset)=\rho_\vartheta(0)` is a learned constant distribution
(``empty="learned"``, the authors' code) unless ``empty="prior"`` asks for
:math:`\mathcal N(0,I)` there.

Each Gaussian head (the one Normal, or each mixture component) is ``2D`` outputs
:math:`(\mu, r)` of ρ, with the standard deviation parameterised as the Gaussian experts of
:func:`~pyro_mmvae.guides.aggregators.gaussian_experts` (``scale=``, :func:`gaussian_head`):

- ``scale="softplus"`` (default): :math:`\sigma = \text{min\_scale} + \log(1 + e^{r})`;
- ``scale="logvar"``: :math:`r = \log\sigma_0^2`, :math:`\sigma = \text{min\_scale} +
  \exp(r/2)` (the log-variance heads of MVAE and MultiVae).

Shapes: features ``(B, M, E)``, mask ``(..., B, M)``; outputs have batch ``(..., B)``. Masked
slots are ignored exactly: their features never reach the output, not even as attention keys.
Hyper-parameter defaults follow the linear study of the authors' code (widths 256, 4 heads,
one attention block, leaky-ReLU with slope 0.01 in χ and ρ).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pyro.distributions import Normal
from torch import nn

from pyro_mmvae.nn import MLP, lecun_normal_, positive_scale

from .aggregators import check_scale, gaussian_experts
from .distributions import DiagNormalMixture

Empty = Literal["learned", "prior"]


class LeakyReLU(nn.LeakyReLU):
    """Leaky ReLU with the Flax default slope 0.01 (as the authors' aggregators use)."""

    def __init__(self):
        super().__init__(0.01)


def gaussian_head(out: torch.Tensor, min_scale: float, scale: str = "softplus"):
    r"""Mean and standard deviation ``(..., D)`` of a Gaussian head from its ``2D`` outputs
    ``(..., 2D)``, :math:`(\mu, r)`, parameterised as
    :func:`~pyro_mmvae.guides.aggregators.gaussian_experts`:

    - ``scale="softplus"``: :math:`\sigma = \text{min\_scale} + \log(1 + e^{r})`
      (:func:`~pyro_mmvae.nn.positive_scale`, computed directly so the default heads give
      bit-for-bit the numbers they always gave);
    - ``scale="logvar"``: :math:`\sigma = \text{min\_scale} + \exp(r/2)`, through
      ``gaussian_experts`` (:math:`\sigma = (\sigma^{-2})^{-1/2}`, exact to rounding).

    Used by the pooling aggregators here and the private-latent heads of
    :mod:`pyro_mmvae.guides.private`.
    """
    if check_scale(scale) == "softplus":
        if out.shape[-1] % 2:
            raise ValueError(f"Gaussian heads need an even output size 2D, got {out.shape[-1]}")
        loc, raw = out.chunk(2, dim=-1)
        return loc, positive_scale(raw, min_scale)
    loc, precision = gaussian_experts(out, min_scale, scale)
    return loc, precision.rsqrt()


class PooledAggregator(nn.Module):
    """Shared head of the learnable aggregators: pooled features -> Normal or mixture.

    Subclasses implement :meth:`pool`: ``(features (B, M, E), mask (..., B, M)) -> (..., B, P)``.
    ``scale`` parameterises the standard deviations of the Gaussian head(s)
    (:func:`gaussian_head`: ``"softplus"``, the default, or ``"logvar"``).
    """

    def __init__(self, latent_dim: int, pooling_dim: int, hidden_dim: int,
                 num_components: Optional[int] = None, empty: Empty = "learned",
                 min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__()
        self.scale = check_scale(scale)
        if empty not in ("learned", "prior"):
            raise ValueError(f"empty must be 'learned' or 'prior', got {empty!r}")
        if num_components is not None and num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.latent_dim = latent_dim
        self.num_components = num_components
        self.empty = empty
        self.min_scale = min_scale
        k = num_components or 1
        out = 2 * latent_dim * k + (k if num_components else 0)
        self.rho = MLP(pooling_dim, (hidden_dim, hidden_dim), out, LeakyReLU)

    def pool(self, features, mask):
        raise NotImplementedError

    def forward(self, features, mask):
        out = self.rho(self.pool(features, mask))  # (..., B, out)
        d = self.latent_dim
        nothing = ~mask.any(-1)  # (..., B)
        if self.num_components is None:
            loc, scale = gaussian_head(out, self.min_scale, self.scale)
            if self.empty == "prior":
                loc = torch.where(nothing.unsqueeze(-1), torch.zeros_like(loc), loc)
                scale = torch.where(nothing.unsqueeze(-1), torch.ones_like(scale), scale)
            return Normal(loc, scale).to_event(1)
        k = self.num_components
        params, logits = out.split(2 * d * k, dim=-1)
        params = params.unflatten(-1, (k, 2 * d))  # (..., B, K, 2D)
        loc, scale = gaussian_head(params, self.min_scale, self.scale)
        if self.empty == "prior":
            n = nothing[..., None, None]
            loc = torch.where(n, torch.zeros_like(loc), loc)
            scale = torch.where(n, torch.ones_like(scale), scale)
        return DiagNormalMixture(logits, loc, scale)


def _masked_sum(g, mask):
    """Sum over observed slots: ``g (..., B, M, P)``, ``mask (..., B, M)`` -> ``(..., B, P)``."""
    return torch.where(mask.unsqueeze(-1), g, torch.zeros_like(g)).sum(-2)


class SumPooling(PooledAggregator):
    r"""DeepSets aggregator :math:`\rho\big(\sum_{s\in S}\chi(h_s)\big)` (Hirt et al. Example 1).

    :param feature_dim: ``E``, the modality encoders' output size.
    :param latent_dim: ``D``.
    :param hidden_dim: width of χ (two hidden layers) and ρ (two hidden layers).
    :param pooling_dim: ``P``, the output size of χ.
    :param num_components: ``None`` for a Gaussian ``q``; ``K`` for a ``K``-component mixture.
    :param empty: ``"learned"`` (ρ(0), default) or ``"prior"`` for the empty subset.
    :param min_scale: floor of the standard deviations.
    :param scale: ``"softplus"`` (default), :math:`\sigma = \text{min\_scale} +
        \log(1+e^{r})`, or ``"logvar"``, :math:`\sigma = \text{min\_scale} + e^{r/2}`, for
        the last ``D`` outputs :math:`r` of each Gaussian head (:func:`gaussian_head`).
    """

    def __init__(self, feature_dim: int, latent_dim: int, hidden_dim: int = 256,
                 pooling_dim: int = 256, num_components: Optional[int] = None,
                 empty: Empty = "learned", min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__(latent_dim, pooling_dim, hidden_dim, num_components, empty, min_scale,
                         scale)
        self.chi = MLP(feature_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        lecun_normal_(self)

    def pool(self, features, mask):
        return _masked_sum(self.chi(features), mask)


class MaskedSelfAttentionBlock(nn.Module):
    r"""Pre-LayerNorm transformer block over modality slots with a key-padding mask:

    .. math:: u = g + \mathrm{MHA}(\mathrm{LN}_q(g), \mathrm{LN}_{kv}(g), \mathrm{LN}_{kv}(g);
        \mathbf M),\qquad T(g) = u + W_2\,\mathrm{ReLU}(W_1\mathrm{LN}(u) + c_1) + c_2,

    with bias-free q, k, v and output projections; slot ``t`` attends to slot ``s`` only if
    ``s`` is observed (rows of unobserved query slots are computed but never used). With no
    observed slot at all every score is masked; the block then attends uniformly (no NaN),
    and the caller's masked sum discards the result.
    """

    def __init__(self, dim: int, num_heads: int = 4, attention_dim: int = 256,
                 mlp_dim: int = 256):
        super().__init__()
        head_dim = attention_dim // num_heads
        if head_dim < 1:
            raise ValueError(f"attention_dim {attention_dim} < num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, head_dim
        width = head_dim * num_heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, width, bias=False)
        self.k = nn.Linear(dim, width, bias=False)
        self.v = nn.Linear(dim, width, bias=False)
        self.out = nn.Linear(width, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))

    def _heads(self, x):  # (..., M, H*Dh) -> (..., H, M, Dh)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(self, g, mask):
        """``g (..., M, P)``, ``mask (..., M)`` bool -> ``(..., M, P)``."""
        kv = self.norm_kv(g)
        q, k, v = self._heads(self.q(self.norm_q(g))), self._heads(self.k(kv)), self._heads(
            self.v(kv))
        scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5  # (..., H, M, M)
        keys = mask[..., None, None, :]
        any_key = mask.any(-1)[..., None, None, None]
        scores = torch.where(keys | ~any_key, scores, torch.full_like(scores, -float("inf")))
        attn = (scores.softmax(-1) @ v).transpose(-3, -2).flatten(-2)  # (..., M, H*Dh)
        u = g + self.out(attn)
        return u + self.mlp(self.norm_mlp(u))


class SelfAttention(PooledAggregator):
    r"""Masked self-attention aggregator (Hirt et al. Example 2, App. D):
    :math:`\rho\big(\sum_{s\in S}\mathrm{LN}(T^L(\chi(h)))_s\big)`.

    :param feature_dim: ``E``.
    :param latent_dim: ``D``.
    :param hidden_dim: width of χ's hidden layer and of ρ.
    :param pooling_dim: slot width ``P`` inside the attention blocks.
    :param num_heads, attention_dim, mlp_dim, depth: attention settings (4, 256, 256, 1).
    :param num_components, empty, min_scale, scale: as for :class:`SumPooling`
        (``scale="logvar"``: :math:`\sigma = \text{min\_scale} + e^{r/2}`).
    """

    def __init__(self, feature_dim: int, latent_dim: int, hidden_dim: int = 256,
                 pooling_dim: int = 256, num_heads: int = 4, attention_dim: int = 256,
                 mlp_dim: int = 256, depth: int = 1, num_components: Optional[int] = None,
                 empty: Empty = "learned", min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__(latent_dim, pooling_dim, hidden_dim, num_components, empty, min_scale,
                         scale)
        self.chi = MLP(feature_dim, (hidden_dim,), pooling_dim, LeakyReLU)
        self.blocks = nn.ModuleList(MaskedSelfAttentionBlock(pooling_dim, num_heads,
                                                             attention_dim, mlp_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(pooling_dim, eps=1e-6)
        lecun_normal_(self)

    def encode_slots(self, features, mask):
        """Per-slot outputs ``(..., B, M, P)`` of χ, the attention blocks and the final norm."""
        g = self.chi(features)  # (B, M, P); the blocks broadcast it against the mask
        for block in self.blocks:
            g = block(g, mask)
        return self.norm(g)

    def pool(self, features, mask):
        return _masked_sum(self.encode_slots(features, mask), mask)


class SumPoolingMixture(SumPooling):
    """:class:`SumPooling` whose ρ gives a ``num_components``-component Gaussian mixture
    (``scale=`` and the other keywords as for :class:`SumPooling`)."""

    def __init__(self, feature_dim: int, latent_dim: int, num_components: int = 5, **kwargs):
        super().__init__(feature_dim, latent_dim, num_components=num_components, **kwargs)


class SelfAttentionMixture(SelfAttention):
    """:class:`SelfAttention` whose ρ gives a ``num_components``-component Gaussian mixture
    (``scale=`` and the other keywords as for :class:`SelfAttention`)."""

    def __init__(self, feature_dim: int, latent_dim: int, num_components: int = 5, **kwargs):
        super().__init__(feature_dim, latent_dim, num_components=num_components, **kwargs)


__all__ = ["MaskedSelfAttentionBlock", "gaussian_head", "PooledAggregator", "SelfAttention",
           "SelfAttentionMixture", "SumPooling", "SumPoolingMixture"]
