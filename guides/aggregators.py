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
import math
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
    r"""Gaussian product of experts, in precision form, with the prior :math:`p(z)=\mathcal
    N(0, I)` in one of three roles (``prior_expert``):

    - ``True`` (default; MVAE, Wu & Goodman 2018, eq. 5; Hirt et al. §3):
      :math:`q(z\mid x_S) \propto p(z)\prod_{s\in S} q_s(z\mid x_s)`, the experts being
      factors of the posterior that the prior completes;
    - ``False``: :math:`q(z\mid x_S) \propto \prod_{s\in S} q_s(z\mid x_s)`;
    - ``"divide"`` (MSNVI, Kurle et al., AAAI 2019, arXiv:1811.04451, eq. 3):
      :math:`q(z\mid x_S) \propto p(z)^{1-|S|}\prod_{s\in S} q_s(z\mid x_s)`, each expert a
      full posterior approximation ("belief", which already contains the prior), so the
      prior is divided out :math:`|S|-1` times: precision
      :math:`\Lambda = \sum_{s\in S}\Lambda_s - (|S|-1)\Lambda_0` and mean
      :math:`\Lambda^{-1}\sum_{s\in S}\Lambda_s\mu_s`. For a model whose observations are
      independent given :math:`z`, exact single-source posteriors give the exact joint
      posterior (Bayes' rule applied twice). The one-source subset is the belief itself.

    ``Λ`` must stay positive under ``"divide"``, which it does when every belief is at least
    as precise as the prior; ``positivity`` says how that is ensured:

    - ``"floor"`` (default): the belief's precision is the prior's plus the expert head's,
      :math:`\Lambda_s = \Lambda_0 + \sigma_s^{-2}` with :math:`\sigma_s` from the features
      (:func:`gaussian_experts`), so every belief is at least as certain as the prior and the
      product is always a density (:math:`\Lambda = \Lambda_0 + \sum_{s\in S}\sigma_s^{-2}`);
    - ``"clamp"``: the head's :math:`\sigma_s` is the belief's own scale (beliefs may be
      broader than the prior) and :math:`\Lambda` is clamped at ``min_precision`` where the
      division would make it smaller (the product is then broader than the exact one).

    The empty subset gives the prior (the prior expert alone, or by convention when there is
    none). Returns ``Normal(loc, scale).to_event(1)``, so every analytic Gaussian KL in the
    registry applies; :meth:`log_normalizer` gives the product's normalising constant.

    ``scale``: how an expert's second half of features becomes its standard deviation,
    ``"softplus"`` (default) or ``"logvar"`` (:func:`gaussian_experts`).
    """

    def __init__(self, prior_expert: PriorExpert = True, min_scale: float = 1e-3,
                 scale: str = "softplus", positivity: str = "floor",
                 min_precision: float = 1e-3):
        super().__init__()
        if prior_expert not in (True, False, "divide"):
            raise ValueError(f"prior_expert must be True, False or 'divide', got "
                             f"{prior_expert!r}")
        if positivity not in ("floor", "clamp"):
            raise ValueError(f"positivity must be 'floor' or 'clamp', got {positivity!r}")
        if not min_precision > 0:
            raise ValueError(f"min_precision must be positive, got {min_precision!r}")
        self.prior_expert = prior_expert
        self.min_scale = min_scale
        self.scale = check_scale(scale)
        self.positivity = positivity
        self.min_precision = float(min_precision)

    def natural_parameters(self, features, mask):
        r"""``(eta, prec, expert_eta, expert_prec, on)``: the product's natural parameters
        :math:`\eta = \Lambda\mu` and :math:`\Lambda` ``(..., B, D)``, the experts' (beliefs')
        ``(..., B, M, D)`` and the float mask ``(..., B, M)``."""
        locs, precisions = gaussian_experts(features, self.min_scale, self.scale)
        on = mask.to(precisions.dtype)
        divide = self.prior_expert == "divide"
        if divide and self.positivity == "floor":
            precisions = 1.0 + precisions  # the belief: prior precision plus the head's
        expert_eta = precisions * locs
        # (..., B, M) mask -> product over the selected experts, one product per row
        prec = (on.unsqueeze(-1) * precisions).sum(-2)
        eta = (on.unsqueeze(-1) * expert_eta).sum(-2)
        if divide:
            prec = prec - (on.sum(-1, keepdim=True) - 1.0)  # p(z)^(1 - |S|), Lambda_0 = 1
            if self.positivity == "clamp":
                prec = prec.clamp_min(self.min_precision)
        elif self.prior_expert:
            prec = prec + 1.0
        else:  # an empty product is undefined: use N(0, I) there
            prec = torch.where(prec == 0, torch.ones_like(prec), prec)
        return eta, prec, expert_eta, precisions, on

    def forward(self, features, mask):
        eta, prec, *_ = self.natural_parameters(features, mask)
        return Normal(eta / prec, prec.rsqrt()).to_event(1)

    def log_normalizer(self, features, mask) -> torch.Tensor:
        r"""``(..., B)``: :math:`\log\int p(z)^{a}\prod_{s\in S}q_s(z\mid x_s)\,dz`, the
        normalising constant of the product before it is normalised (:math:`a=1-|S|` for
        ``"divide"``, 1 with the prior expert, 0 without): with
        :math:`A(\eta,\Lambda)=\sum_d\big[\tfrac12\eta_d^2/\Lambda_d-\tfrac12\log\Lambda_d
        +\tfrac12\log 2\pi\big]` the log-partition function of a diagonal Gaussian in natural
        parameters,

        .. math:: \log Z_S = A(\eta,\Lambda) - \sum_{s\in S} A(\eta_s,\Lambda_s) - a\,A(0, I).

        Under ``"divide"`` with exact single-source posteriors this is
        :math:`\log p(x_S) - \sum_{s\in S}\log p(x_s)` (MSNVI eq. 3): high where the sources
        agree (explain each other), low where they conflict — an agreement score. With
        ``positivity="clamp"`` it is that of the clamped product. The empty subset gives 0.
        """
        eta, prec, expert_eta, expert_prec, on = self.natural_parameters(features, mask)
        half_log_2pi = 0.5 * math.log(2 * math.pi)

        def log_partition(e, lam):
            return (0.5 * e.pow(2) / lam - 0.5 * lam.log() + half_log_2pi).sum(-1)

        size = on.sum(-1)
        a = (1.0 - size) if self.prior_expert == "divide" else float(bool(self.prior_expert))
        d = eta.shape[-1]
        experts = (on * log_partition(expert_eta, expert_prec)).sum(-1)
        value = log_partition(eta, prec) - experts - a * d * half_log_2pi
        if not self.prior_expert:  # the empty product is no density: 0 by convention
            value = torch.where(size > 0, value, torch.zeros_like(value))
        return value


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
