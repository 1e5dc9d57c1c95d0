r"""Permutation-equivariant heads for private latents (Hirt et al. §3.2, Examples 3–5, App. E).

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

Every head gives per slot ``2 D_w`` numbers :math:`(\tilde\mu_s, r_s)`; ``scale=`` says how
:math:`r_s` becomes the standard deviation, as for the Gaussian experts
(:func:`~pyro_mmvae.guides.aggregators.gaussian_experts`, through
:func:`~pyro_mmvae.guides.pooling.gaussian_head`):

- ``scale="softplus"`` (default): :math:`\tilde\sigma_s = \text{min\_scale} +
  \log(1 + e^{r_s})`;
- ``scale="logvar"``: :math:`r_s = \log\tilde\sigma_{s,0}^2`, :math:`\tilde\sigma_s =
  \text{min\_scale} + \exp(r_s/2)` (MVAE's and MultiVae's log-variance heads).
"""

from __future__ import annotations

import torch
from pyro.distributions.util import broadcast_shape
from torch import nn

from pyro_mmvae.nn import MLP, lecun_normal_

from .aggregators import check_scale
from .pooling import LeakyReLU, MaskedSelfAttentionBlock, _masked_sum, gaussian_head


class IndependentPrivate(nn.Module):
    r"""PE-PoE private head: features ``[shared_features:]`` are each modality's own Gaussian
    expert :math:`(\tilde\mu_s, r_s)` for its private latent.

    :param scale: how :math:`r_s` gives the standard deviation: ``"softplus"`` (default),
        :math:`\tilde\sigma_s = \text{min\_scale} + \log(1+e^{r_s})`, or ``"logvar"``,
        :math:`\tilde\sigma_s = \text{min\_scale} + e^{r_s/2}` (module docstring).
    """

    def __init__(self, shared_features: int, private_dim: int, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__()
        self.shared_features, self.private_dim, self.min_scale = (shared_features, private_dim,
                                                                  min_scale)
        self.scale = check_scale(scale)

    def forward(self, features, mask, z):
        own = features[..., self.shared_features:]
        if own.shape[-1] != 2 * self.private_dim:
            raise ValueError(f"IndependentPrivate expects {2 * self.private_dim} private "
                             f"features after the first {self.shared_features}, got "
                             f"{own.shape[-1]}")
        return gaussian_head(own, self.min_scale, self.scale)


class PooledPrivate(nn.Module):
    r"""PE-SumPooling private head (Hirt et al. Example 4):
    :math:`(\tilde\mu_s, r_s)=\psi\big(\sum_{t\in S}\chi_0(h_t)+\chi_1(h_s)
    +\chi_2(z)\big)`; χ's have two hidden layers, ψ one, as in the authors' module.

    :param scale: how the last ``D_w`` outputs :math:`r_s` of ψ give the standard deviation:
        ``"softplus"`` (default), :math:`\tilde\sigma_s = \text{min\_scale} + \log(1+e^{r_s})`,
        or ``"logvar"``, :math:`\tilde\sigma_s = \text{min\_scale} + e^{r_s/2}`.
    """

    def __init__(self, feature_dim: int, latent_dim: int, private_dim: int,
                 hidden_dim: int = 256, pooling_dim: int = 256, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__()
        self.chi0 = MLP(feature_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.chi1 = MLP(feature_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.chi2 = MLP(latent_dim, (hidden_dim, hidden_dim), pooling_dim, LeakyReLU)
        self.psi = MLP(pooling_dim, (hidden_dim,), 2 * private_dim, LeakyReLU)
        self.private_dim, self.min_scale = private_dim, min_scale
        self.scale = check_scale(scale)
        lecun_normal_(self)

    def forward(self, features, mask, z):
        context = _masked_sum(self.chi0(features), mask)  # (..., B, P)
        slots = self.chi1(features) + (context + self.chi2(z)).unsqueeze(-2)  # (..., B, M, P)
        return gaussian_head(self.psi(slots), self.min_scale, self.scale)


class AttentionPrivate(nn.Module):
    r"""PE-SelfAttention private head (Hirt et al. Example 5): slots
    :math:`g^0_s=\chi_1(h_s)+\chi_2(z)` go through masked pre-LN attention blocks and a final
    LayerNorm, then a per-slot dense layer gives :math:`(\tilde\mu_s, r_s)`.

    :param scale: how :math:`r_s` gives the standard deviation: ``"softplus"`` (default),
        :math:`\tilde\sigma_s = \text{min\_scale} + \log(1+e^{r_s})`, or ``"logvar"``,
        :math:`\tilde\sigma_s = \text{min\_scale} + e^{r_s/2}`.
    """

    def __init__(self, feature_dim: int, latent_dim: int, private_dim: int,
                 hidden_dim: int = 256, pooling_dim: int = 256, num_heads: int = 4,
                 attention_dim: int = 256, mlp_dim: int = 256, depth: int = 1,
                 min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__()
        self.chi1 = MLP(feature_dim, (hidden_dim,), pooling_dim, LeakyReLU)
        self.chi2 = MLP(latent_dim, (hidden_dim,), pooling_dim, LeakyReLU)
        self.blocks = nn.ModuleList(MaskedSelfAttentionBlock(pooling_dim, num_heads,
                                                             attention_dim, mlp_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(pooling_dim, eps=1e-6)
        self.out = nn.Linear(pooling_dim, 2 * private_dim)
        self.private_dim, self.min_scale = private_dim, min_scale
        self.scale = check_scale(scale)
        lecun_normal_(self)

    def forward(self, features, mask, z):
        g = self.chi1(features) + self.chi2(z).unsqueeze(-2)  # (..., B, M, P)
        shape = torch.Size(broadcast_shape(g.shape[:-1], mask.shape))
        g, mask = g.expand(shape + g.shape[-1:]), mask.expand(shape)
        for block in self.blocks:
            g = block(g, mask)
        return gaussian_head(self.out(self.norm(g)), self.min_scale, self.scale)
