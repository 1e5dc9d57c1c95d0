r"""Aggregators: turn per-modality features and a mask into the guide distribution q(z | x_S).

Every aggregator is an ``nn.Module`` called as ``aggregator(features, mask)`` with

- ``features``: ``(B, M, E)`` stacked outputs of the modality encoders (``M`` modalities in the
  guide's order). For the Gaussian experts of PoE / MoE / MoPoE, ``E = 2D``: the first ``D``
  entries are the expert mean, the last ``D`` an unconstrained scale mapped through
  :func:`~pyro_mmvae.nn.positive_scale` (``min_scale + softplus``; ``scale="softplus"``,
  the default) or a log-variance (``scale="logvar"``: :math:`\sigma = \text{min\_scale} +
  \exp(\tfrac12 \log\sigma^2)`, the parameterisation of MVAE's and MultiVae's encoders; see
  :func:`gaussian_experts`).
- ``mask``: bool ``(..., B, M)``, True where a modality is in the conditioning subset S. Leading
  dimensions (stacked subsets) broadcast.

and returns a distribution with batch shape ``(..., B)`` and event shape ``(D,)``. Masked-out
slots are ignored exactly: the output does not depend on their features.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

import torch
from pyro.distributions import Normal
from torch import nn

from pyro_mmvae.nn import positive_scale

from .distributions import DiagNormalMixture

PriorExpert = Union[bool, str]


SCALES = ("softplus", "logvar")


def check_scale(scale: str) -> str:
    """``scale`` if it names a parameterisation of :func:`gaussian_experts`, else ValueError."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def gaussian_experts(features: torch.Tensor, min_scale: float, scale: str = "softplus"):
    r"""Split expert features ``(..., M, 2D)`` into means and precisions ``(..., M, D)``.

    The first ``D`` features are the means :math:`\mu`, the last ``D`` (:math:`r`) give the
    standard deviations, floored at ``min_scale`` the same way for both parameterisations:

    - ``scale="softplus"``: :math:`\sigma = \text{min\_scale} + \log(1 + e^{r})`;
    - ``scale="logvar"``: :math:`r = \log\sigma_0^2` and
      :math:`\sigma = \text{min\_scale} + \exp(r/2)` (``min_scale=0`` gives the plain
      log-variance head of MVAE and MultiVae, :math:`\sigma = e^{r/2}`).

    Returns :math:`\mu` and the precisions :math:`\sigma^{-2}`.
    """
    if features.shape[-1] % 2:
        raise ValueError(f"Gaussian experts need an even feature size 2D, got {features.shape[-1]}")
    loc, raw = features.chunk(2, dim=-1)
    if scale == "logvar":
        sigma = torch.exp(0.5 * raw) + min_scale
    else:
        sigma = positive_scale(raw, min_scale)
    return loc, sigma.pow(-2)


def product_of_gaussians(locs, precisions, weights, prior_expert):
    r"""Precision-form product of diagonal Gaussian experts (Wu & Goodman 2018, eq. 5).

    .. math:: \Lambda = \lambda_0 + \sum_s a_s \Lambda_s, \qquad
              \mu = \Lambda^{-1} \sum_s a_s \Lambda_s \mu_s,

    with ``a`` the (0/1) ``weights`` ``(..., K, M)`` selecting experts per product and
    :math:`\lambda_0` the prior expert :math:`\mathcal N(0, I)` (1 where ``prior_expert``
    ``(K,)`` or scalar is on, else 0). ``locs`` and ``precisions`` are ``(..., B, M, D)``.
    Returns mean and scale ``(..., B, K, D)``.
    """
    prec = torch.einsum("...km,...bmd->...bkd", weights, precisions)
    eta = torch.einsum("...km,...bmd->...bkd", weights, precisions * locs)
    prec = prec + prior_expert.unsqueeze(-1)
    return eta / prec, prec.rsqrt()


class PoE(nn.Module):
    r"""Gaussian product of experts (MVAE, Wu & Goodman 2018; seed 004 §3, eq. for PoE):

    .. math:: q(z\mid x_S) \propto p(z)\prod_{s\in S} q(z\mid x_s),

    computed in precision form. The prior expert :math:`p(z)=\mathcal N(0,I)` is on by default
    (``prior_expert=False`` drops it); the empty subset gives the standard-normal prior (the
    prior expert alone, or by convention when there is no prior expert). Returns
    ``Normal(loc, scale).to_event(1)``, so every analytic Gaussian KL in the registry applies.

    ``scale``: how an expert's second half of features becomes its standard deviation,
    ``"softplus"`` (default) or ``"logvar"`` (:func:`gaussian_experts`).
    """

    def __init__(self, prior_expert: bool = True, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__()
        self.prior_expert = prior_expert
        self.min_scale = min_scale
        self.scale = check_scale(scale)

    def forward(self, features, mask):
        locs, precisions = gaussian_experts(features, self.min_scale, self.scale)
        mask = mask.to(precisions.dtype)
        # (..., B, M) mask -> product over the selected experts, one product per row.
        prec = (mask.unsqueeze(-1) * precisions).sum(-2) + float(self.prior_expert)
        eta = (mask.unsqueeze(-1) * precisions * locs).sum(-2)
        if not self.prior_expert:  # an empty product is undefined: use N(0, I) there
            empty = prec == 0
            prec = torch.where(empty, torch.ones_like(prec), prec)
        return Normal(eta / prec, prec.rsqrt()).to_event(1)


class SubsetMixture(nn.Module):
    r"""Uniform mixture over the PoEs of a family of modality subsets (the MoPoE family):

    .. math:: q(z\mid x_S) = \frac{1}{|\mathcal F_S|}\sum_{A\in\mathcal F_S}
        q_{\rm PoE}(z\mid x_A), \qquad \mathcal F_S = \{A\in\mathcal F : A\subseteq S\}.

    All subset products are computed in one batched operation (no loop over subsets); a
    component is switched off (logit ``-inf``) for data points where its subset is not inside
    S. When no component is available (S empty, or ``include_empty``), the prior
    :math:`\mathcal N(0,I)` is a component.

    :param subsets: the family :math:`\mathcal F` as tuples of modality indices, or None for
        the default of the subclass.
    :param prior_expert: add the standard-normal expert to every product (True), to none
        (False), or only to the product over all ``M`` modalities (``"full_set"``, as the MoPoE
        code does).
    :param include_empty: keep the prior as a component even when S is not empty (the paper's
        :math:`2^M` components instead of the code's :math:`2^M-1`).
    :param scale: the experts' parameterisation, ``"softplus"`` (default) or ``"logvar"``
        (:func:`gaussian_experts`).
    """

    def __init__(self, subsets: Optional[Sequence[Sequence[int]]] = None,
                 prior_expert: PriorExpert = False, include_empty: bool = False,
                 min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__()
        if prior_expert not in (True, False, "full_set"):
            raise ValueError(
                f"prior_expert must be True, False or 'full_set', got {prior_expert!r}")
        self.subsets = None if subsets is None else [tuple(sorted(s)) for s in subsets]
        if self.subsets is not None and any(len(s) == 0 for s in self.subsets):
            raise ValueError("subsets must be non-empty; use include_empty=True for the prior")
        self.prior_expert = prior_expert
        self.include_empty = include_empty
        self.min_scale = min_scale
        self.scale = check_scale(scale)
        self._cache = {}

    def default_subsets(self, num_modalities: int):
        raise NotImplementedError

    def subset_matrix(self, num_modalities: int, like: torch.Tensor):
        """Bool ``(K, M)`` membership matrix of the family and the prior-expert flags ``(K,)``."""
        key = (num_modalities, like.dtype, like.device)
        if key not in self._cache:
            subsets = self.subsets or self.default_subsets(num_modalities)
            if any(i >= num_modalities for s in subsets for i in s):
                raise ValueError(f"subsets {subsets} name a modality index >= M={num_modalities}")
            a = torch.zeros(len(subsets), num_modalities, dtype=torch.bool, device=like.device)
            for k, s in enumerate(subsets):
                a[k, list(s)] = True
            if self.prior_expert == "full_set":
                prior = a.all(-1)
            else:
                prior = torch.full((len(subsets),), bool(self.prior_expert), device=like.device)
            self._cache[key] = (a, prior.to(like.dtype))
        return self._cache[key]

    def forward(self, features, mask):
        locs, precisions = gaussian_experts(features, self.min_scale, self.scale)
        m = features.shape[-2]
        a, prior = self.subset_matrix(m, features)
        loc, scale = product_of_gaussians(locs, precisions, a.to(features.dtype), prior)
        # Components: K subset products, then the prior N(0, I) as component K+1.
        d = loc.shape[-1]
        loc = torch.cat([loc, loc.new_zeros(loc.shape[:-2] + (1, d))], dim=-2)
        scale = torch.cat([scale, scale.new_ones(scale.shape[:-2] + (1, d))], dim=-2)
        # subset A available iff A is inside S: no member of A outside the mask.
        outside = a & ~mask.unsqueeze(-2)  # (..., B, K, M)
        available = ~outside.any(-1)  # (..., B, K)
        empty = ~available.any(-1, keepdim=True) | self.include_empty
        available = torch.cat([available, empty.expand(available.shape[:-1] + (1,))], dim=-1)
        logits = torch.zeros_like(available, dtype=features.dtype).masked_fill(
            ~available, -float("inf"))
        return DiagNormalMixture(logits, loc, scale)


class MoE(SubsetMixture):
    r"""Uniform mixture of the unimodal experts of the observed modalities (MMVAE, Shi et al.
    2019):

    .. math:: q(z\mid x_S) = \frac{1}{|S|}\sum_{s\in S} q(z\mid x_s);

    with S empty it is the standard-normal prior.
    """

    def __init__(self, prior_expert: bool = False, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__(None, prior_expert=prior_expert, min_scale=min_scale, scale=scale)

    def default_subsets(self, num_modalities):
        return [(i,) for i in range(num_modalities)]


class MoPoE(SubsetMixture):
    r"""Mixture of products of experts over all non-empty subsets (Sutter et al. 2021, Def. 1):

    .. math:: q(z\mid x_S) = \frac{1}{2^{|S|}-1}\sum_{\emptyset\neq A\subseteq S}
        q_{\rm PoE}(z\mid x_A).

    Every subset PoE is computed in one batched einsum. Defaults follow the MoPoE code:
    non-empty subsets only and the prior expert in the full-set product only.
    """

    def __init__(self, subsets=None, prior_expert: PriorExpert = "full_set",
                 include_empty: bool = False, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__(subsets, prior_expert=prior_expert, include_empty=include_empty,
                         min_scale=min_scale, scale=scale)

    def default_subsets(self, num_modalities):
        idx = range(num_modalities)
        return [s for r in range(1, num_modalities + 1) for s in itertools.combinations(idx, r)]
