r"""Permutation-equivariant heads for private latents (seed 004 §3.2, Examples 3–5, App. E).

With shared :math:`z` and private :math:`w_s` per modality the guide factorises as :math:`q(z\mid
x_S)\prod_{s\in S} q(w_s\mid z, x_S)` with the second factor *equivariant*: permuting the modalities
permutes the private distributions the same way. A private head is called as ``head(features, mask,
z)`` with features ``(B, M, E)``, mask ``(..., B, M)`` and the sampled shared latent ``z (..., B,
D)``, and returns per-slot means and scales ``(..., B, M, D_w)``;
:class:`~pyro_mmvae.guides.MultimodalGuide` keeps them for the slots in S and uses the prior
:math:`\mathcal N(0, I)` for the others (a masked-out modality's private latent comes from its
prior, eq. 10).

- :class:`IndependentPrivate` (Example 3, PE-PoE): :math:`q(w_s\mid x_s)` from the private part
  of modality ``s``'s own features, independent of the other modalities and of ``z``.
- :class:`PooledPrivate` (Example 4, PE-SumPooling):
  :math:`\psi\big(\sum_{t\in S}\chi_0(h_t)+\chi_1(h_s)+\chi_2(z)\big)`.
- :class:`AttentionPrivate` (Example 5, PE-SelfAttention): masked self-attention over
  :math:`\chi_1(h_s)+\chi_2(z)`, a final LayerNorm and a per-slot dense layer.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_mmvae.nn import MLP, lecun_normal_, positive_scale

from .pooling import LeakyReLU, MaskedSelfAttentionBlock, _masked_sum


class IndependentPrivate(nn.Module):
    """PE-PoE private head: features ``[shared_features:]`` are each modality's own Gaussian
    expert ``(mean, raw scale)`` for its private latent."""

    def __init__(self, shared_features: int, private_dim: int, min_scale: float = 1e-3):
        super().__init__()
        self.shared_features, self.private_dim, self.min_scale = (shared_features, private_dim,
                                                                  min_scale)

    def forward(self, features, mask, z):
        own = features[..., self.shared_features:]
        if own.shape[-1] != 2 * self.private_dim:
            raise ValueError(f"IndependentPrivate expects {2 * self.private_dim} private "
                             f"features after the first {self.shared_features}, got "
                             f"{own.shape[-1]}")
        loc, raw = own.split(self.private_dim, dim=-1)
        return loc, positive_scale(raw, self.min_scale)


class PooledPrivate(nn.Module):
    r"""PE-SumPooling private head (seed 004 Example 4):
    :math:`(\tilde\mu_s,\log\tilde\sigma_s)=\psi\big(\sum_{t\in S}\chi_0(h_t)+\chi_1(h_s)
    +\chi_2(z)\big)`; χ's have two hidden layers, ψ one, as in the authors' module."""

    def __init__(self, feature_dim: int, latent_dim: int, private_dim: int,
                 hidden_dim: int = 256, pooling_dim: int = 256, min_scale: float = 1e-3):
        super().__init__()
        self.chi0 = MLP(feature_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.chi1 = MLP(feature_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.chi2 = MLP(latent_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.psi = MLP(pooling_dim, (hidden_dim,), 2 * private_dim, LeakyReLU)
        self.private_dim, self.min_scale = private_dim, min_scale
        lecun_normal_(self)

    def forward(self, features, mask, z):
        context = _masked_sum(self.chi0(features), mask)  # (..., B, P)
        slots = self.chi1(features) + (context + self.chi2(z)).unsqueeze(-2)  # (..., B, M, P)
        loc, raw = self.psi(slots).split(self.private_dim, dim=-1)
        return loc, positive_scale(raw, self.min_scale)


class AttentionPrivate(nn.Module):
    r"""PE-SelfAttention private head (seed 004 Example 5): slots
    :math:`g^0_s=\chi_1(h_s)+\chi_2(z)` go through masked pre-LN attention blocks and a final
    LayerNorm, then a per-slot dense layer gives :math:`(\tilde\mu_s,\log\tilde\sigma_s)`."""

    def __init__(self, feature_dim: int, latent_dim: int, private_dim: int,
                 hidden_dim: int = 256, pooling_dim: int = 256, num_heads: int = 4,
                 attention_dim: int = 256, mlp_dim: int = 256, depth: int = 1,
                 min_scale: float = 1e-3):
        super().__init__()
        self.chi1 = MLP(feature_dim, (hidden_dim,), pooling_dim, LeakyReLU)
        self.chi2 = MLP(latent_dim, (hidden_dim,), pooling_dim, LeakyReLU)
        self.blocks = nn.ModuleList(MaskedSelfAttentionBlock(pooling_dim, num_heads,
                                                             attention_dim, mlp_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(pooling_dim, eps=1e-6)
        self.out = nn.Linear(pooling_dim, 2 * private_dim)
        self.private_dim, self.min_scale = private_dim, min_scale
        lecun_normal_(self)

    def forward(self, features, mask, z):
        g = self.chi1(features) + self.chi2(z).unsqueeze(-2)  # (..., B, M, P)
        shape = torch.broadcast_shapes(g.shape[:-1], mask.shape)
        g, mask = g.expand(shape + g.shape[-1:]), mask.expand(shape)
        for block in self.blocks:
            g = block(g, mask)
        loc, raw = self.out(self.norm(g)).split(self.private_dim, dim=-1)
        return loc, positive_scale(raw, self.min_scale)
