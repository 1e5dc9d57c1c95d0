r"""Subset-specific encoders, one independent Gaussian encoder network per non-empty subset of
the modalities (the M2VAE, *Deep Generative Models for learning Coherent Latent
Representations from Multi-Modal Data*, ICLR 2019 submission, later Korthals et al.; also
JMVAE's unimodal and joint encoders, Suzuki et al. 2017, arXiv:1611.01891), and the joint
encoder of JMVAE-Zero (:class:`JointEncoder`).

Unlike PoE, MoE or pooling, :math:`q(z\mid x_S)` here is not built from per-modality experts:
each of the :math:`2^M-1` subsets :math:`S` has its own network, multi-branch and concatenated
for multimodal subsets as the paper's Table 2 — a branch per member modality (its own weights),
the branches concatenated, then the subset's own MLP to the mean and scale. A data point is
encoded by the network of the subset its mask names; the empty subset is the prior
:math:`\mathcal N(0, I)`.

All :math:`2^M-1` networks run as **one** batched computation (their weights stacked, an
``einsum`` over the subset index, each branch reading the modality's features zeroed outside
the subset, so a network sees its own modalities only and its weights for the others get no
gradient); the rows of the mask then pick their subset's output. The cost is that of
evaluating every subset's network on the batch, :math:`(2^M-1)\times B`, which suits the few
modalities this family is used with.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from pyro.distributions import Normal
from torch import nn

from pyro_mmvae.nn import positive_scale
from pyro_mmvae.protocol import subset_index, subset_members

from .aggregators import check_scale


class SubsetEncoders(nn.Module):
    r"""One Gaussian encoder network per non-empty subset of ``num_modalities`` modalities
    (module docstring), an aggregator of :class:`~pyro_mmvae.guides.MultimodalGuide`.

    :param feature_dim: ``E``, the width of each modality's features (what the guide's
        modality encoders give; ``nn.Identity`` encoders on equal-width data make the subset
        networks fully independent, shared feature encoders give them a shared first stage).
    :param latent_dim: ``D``.
    :param num_modalities: ``M``; :math:`2^M-1` networks are built.
    :param branch_dim: width of each member's branch (one ``Linear`` + activation per
        (subset, member)).
    :param hidden: widths of each subset's MLP after the concatenated branches.
    :param scale: ``"softplus"`` (:math:`\sigma=\text{min\_scale}+\text{softplus}(r)`) or
        ``"logvar"`` (:math:`\sigma=\text{min\_scale}+e^{r/2}`), as the other Gaussian heads.
    """

    def __init__(self, feature_dim: int, latent_dim: int, num_modalities: int,
                 branch_dim: int = 64, hidden: Sequence[int] = (64,), *,
                 activation: type = nn.ReLU, scale: str = "softplus", min_scale: float = 1e-3):
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        if num_modalities > 10:
            raise ValueError(f"num_modalities={num_modalities} means {2 ** num_modalities - 1} "
                             "subset networks; subset-specific encoders suit a few modalities")
        self.feature_dim, self.latent_dim, self.num_modalities = feature_dim, latent_dim, \
            num_modalities
        self.scale = check_scale(scale)
        self.min_scale = min_scale
        self.activation = activation()
        k = 2 ** num_modalities - 1
        self.register_buffer("members", subset_members(num_modalities),
                             persistent=False)  # (K, M)
        self.branch_weight = nn.Parameter(torch.empty(k, num_modalities, feature_dim, branch_dim))
        self.branch_bias = nn.Parameter(torch.zeros(k, num_modalities, branch_dim))
        dims = [num_modalities * branch_dim, *hidden, 2 * latent_dim]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(k, a, b))
                                        for a, b in zip(dims[:-1], dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(k, b)) for b in dims[1:])
        self.reset_parameters()

    @property
    def subsets(self) -> torch.Tensor:
        """``(2^M - 1, M)`` bool: the members of each subset network, in index order."""
        return self.members

    def reset_parameters(self) -> None:
        """Each subset's layers as ``nn.Linear`` initialises them (Kaiming uniform, fan-in of
        the layer as that subset sees it: the branch's features, the concatenated branches)."""
        with torch.no_grad():
            bound = 1 / math.sqrt(self.feature_dim)
            self.branch_weight.uniform_(-bound, bound)
            self.branch_bias.uniform_(-bound, bound)
            for w, b in zip(self.weights, self.biases):
                bound = 1 / math.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)

    def outputs(self, features: torch.Tensor) -> torch.Tensor:
        """``(K, B, 2D)``: every subset network on ``features`` ``(B, M, E)``."""
        if features.dim() != 3 or features.shape[-2:] != (self.num_modalities, self.feature_dim):
            raise ValueError(f"SubsetEncoders expects features (B, {self.num_modalities}, "
                             f"{self.feature_dim}), got {tuple(features.shape)}")
        on = self.members.to(features.dtype)  # (K, M)
        h = torch.einsum("bme,kmeh->kbmh", features, self.branch_weight) \
            + self.branch_bias.unsqueeze(1)
        h = self.activation(h) * on[:, None, :, None]  # a branch outside the subset is zero
        h = h.flatten(-2)  # (K, B, M * branch)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.einsum("kbi,kio->kbo", h, w) + b.unsqueeze(1)
            if i < len(self.weights) - 1:
                h = self.activation(h)
        return h

    def forward(self, features, mask):
        out = self.outputs(features)  # (K, B, 2D)
        index = subset_index(mask)  # (..., B)
        batch = index.shape
        b = features.shape[0]
        flat = index.reshape(-1, b)  # (R, B)
        picked = out.gather(0, flat.clamp_min(0).unsqueeze(-1).expand(flat.shape + out.shape[-1:]))
        picked = picked.reshape(batch + out.shape[-1:])  # (..., B, 2D)
        loc, raw = picked.chunk(2, dim=-1)
        if self.scale == "logvar":
            sigma = torch.exp(0.5 * raw) + self.min_scale
        else:
            sigma = positive_scale(raw, self.min_scale)
        empty = (index < 0).unsqueeze(-1)
        loc = torch.where(empty, torch.zeros_like(loc), loc)
        sigma = torch.where(empty, torch.ones_like(sigma), sigma)
        return Normal(loc, sigma).to_event(1)


class JointEncoder(nn.Module):
    r"""One Gaussian network on all modalities' features concatenated, those outside the
    subset zeroed: JMVAE's joint encoder and JMVAE-Zero's only one (Suzuki et al. 2017; the
    M2VAE paper's baseline), whose "unimodal encoders" are :math:`q(z\mid x_a, 0)` — train it
    with ``MixtureMultimodalELBO(masking="zero_augmented")`` for JMVAE-Zero. The empty subset
    gives :math:`\mathcal N(0, I)`.

    :param feature_dim: ``E`` per modality; ``latent_dim``: ``D``; ``num_modalities``: ``M``.
    :param hidden: widths of the MLP from the ``M * E`` concatenated features.
    :param scale: ``"softplus"`` or ``"logvar"``, as the other Gaussian heads.
    """

    def __init__(self, feature_dim: int, latent_dim: int, num_modalities: int,
                 hidden: Sequence[int] = (64,), *, activation: type = nn.ReLU,
                 scale: str = "softplus", min_scale: float = 1e-3):
        super().__init__()
        from pyro_mmvae.nn import MLP

        self.num_modalities, self.feature_dim = num_modalities, feature_dim
        self.scale = check_scale(scale)
        self.min_scale = min_scale
        self.net = MLP(num_modalities * feature_dim, tuple(hidden), 2 * latent_dim, activation)

    def forward(self, features, mask):
        if features.shape[-2:] != (self.num_modalities, self.feature_dim):
            raise ValueError(f"JointEncoder expects features (B, {self.num_modalities}, "
                             f"{self.feature_dim}), got {tuple(features.shape)}")
        on = mask.to(features.dtype).unsqueeze(-1)  # (..., B, M, 1)
        loc, raw = self.net((features * on).flatten(-2)).chunk(2, dim=-1)
        if self.scale == "logvar":
            sigma = torch.exp(0.5 * raw) + self.min_scale
        else:
            sigma = positive_scale(raw, self.min_scale)
        empty = ~mask.any(-1, keepdim=True)
        loc = torch.where(empty, torch.zeros_like(loc), loc)
        sigma = torch.where(empty, torch.ones_like(sigma), sigma)
        return Normal(loc, sigma).to_event(1)
