r"""How much the single-source beliefs of a guide disagree: the conflict measure of MSNVI.

Kurle, Günnemann and van der Smagt, *Multi-Source Neural Variational Inference*, AAAI 2019
(arXiv:1811.04451), eq. 2, adapting Bousquet's prior-data conflict criterion (2008):

.. math::
    c(m\,\|\,m') = \frac{\mathrm{KL}\big(q(z\mid x_{m'})\,\|\,q(z\mid x_m)\big)}
                        {\mathrm{KL}\big(q(z\mid x_{m'})\,\|\,p(z)\big)},

the information belief :math:`m'` gains from taking belief :math:`m` as its prior, against what
it gains from the reference prior :math:`p(z)=\mathcal N(0, I)`. A ratio above
:data:`CONFLICT_THRESHOLD` (1) declares a conflict: belief :math:`m` is a worse prior for
:math:`m'` than knowing nothing. It is large when :math:`m` is much more certain than
:math:`m'` and elsewhere, and suits redundant sources (the pendulum's cameras: a failed camera's
belief conflicts with the others); for complementary sources the paper points to other
measures.

The beliefs are the guide's :math:`q(z\mid x_m)` for the one-source subsets, traced in one
guide call with the subsets stacked on a plate (any guide of the multimodal protocol); the KL
divergences are closed-form, so the beliefs must be diagonal Gaussians
(``Normal(loc, scale).to_event(1)``, what :class:`~pyro_mmvae.guides.PoE` returns).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from pyro_mmvae.protocol import LATENT_SITE, validate_batch

CONFLICT_THRESHOLD = 1.0  # c(m || m') > 1: belief m conflicts with belief m' (Bousquet 2008)


def single_source_beliefs(guide, data: Mapping[str, torch.Tensor],
                          mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                          sources: Optional[Sequence[str]] = None,
                          latent_site: str = LATENT_SITE):
    r"""Means and scales ``(M, N, D)`` of the guide's diagonal-Gaussian beliefs
    :math:`q(z\mid x_m)`, one per source ``m`` of ``sources`` (default: the guide's
    ``modalities``, else every modality of ``data``), from one guide call with the one-source
    subsets stacked on a ``"subsets"`` plate. Returns ``(loc, scale, observed)`` with
    ``observed`` ``(M, N)`` bool: where source ``m`` is observed (elsewhere the belief is
    whatever the guide gives an empty subset)."""
    from pyro_mmvae.infer.traces import trace_guide

    mask = validate_batch(data, mask)
    sources = list(sources if sources is not None else
                   getattr(guide, "modalities", None) or list(data))
    unknown = [m for m in sources if m not in data]
    if unknown:
        raise ValueError(f"source '{unknown[0]}' is not in data (modalities {sorted(data)})")
    n = next(iter(data.values())).shape[0]
    observed = torch.stack([mask[m] for m in sources])  # (M, N)
    eye = torch.eye(len(sources), dtype=torch.bool, device=observed.device)
    rows = eye.unsqueeze(-1) & observed.unsqueeze(0)  # (M subsets, M sources, N)
    masks = {m: rows[:, i] for i, m in enumerate(sources)}  # {m: (M, N)}
    g_data = {m: data[m] for m in sources}
    tr = trace_guide(guide, g_data, masks, [("subsets", len(sources), -2)])
    site = tr.nodes.get(latent_site)
    if site is None or site["type"] != "sample":
        raise ValueError(f"the guide samples no site '{latent_site}'")
    fn = site["fn"]
    base = getattr(fn, "base_dist", None)
    if not isinstance(base, torch.distributions.Normal) or fn.reinterpreted_batch_ndims != 1:
        raise ValueError(f"conflict_matrix needs diagonal-Gaussian beliefs (Normal(loc, "
                         f"scale).to_event(1)), got {type(fn).__name__}; the KL divergences "
                         "are closed-form")
    shape = (len(sources), n) + tuple(fn.event_shape)
    return base.loc.expand(shape), base.scale.expand(shape), observed


def _kl_diag(loc_a, scale_a, loc_b, scale_b):
    """KL(N(a) || N(b)) of diagonal Gaussians, summed over the last dim."""
    var_ratio = (scale_a / scale_b).pow(2)
    t = ((loc_a - loc_b) / scale_b).pow(2)
    return 0.5 * (var_ratio + t - 1 - var_ratio.log()).sum(-1)


def conflict_matrix(guide, data: Mapping[str, torch.Tensor],
                    mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                    sources: Optional[Sequence[str]] = None,
                    latent_site: str = LATENT_SITE) -> torch.Tensor:
    r"""The conflict measure of MSNVI (eq. 2; module docstring) for every pair of sources.

    :param guide: a guide of the multimodal protocol whose one-source beliefs are diagonal
        Gaussians.
    :param data, mask: the batch (``{source: (N, ...)}``, ``{source: (N,)}`` bool).
    :param sources: the sources in the order of the matrix (default: the guide's
        ``modalities``, else ``data``'s).
    :returns: ``(N, M, M)``: ``c[n, i, j]`` is :math:`c(m_i\,\|\,m_j)` =
        :math:`\mathrm{KL}(q_{m_j}\|q_{m_i}) / \mathrm{KL}(q_{m_j}\|p)` at data point ``n``,
        0 on the diagonal, NaN where either source is not observed. Entries above
        :data:`CONFLICT_THRESHOLD` are conflicts: ``conflict_matrix(...) > 1``. Per source, the
        paper plots how much it conflicts with the others; ``c.nanmean(-1)`` (row ``i``:
        belief ``i`` as the prior of the others) and ``c.nanmean(-2)`` are the two summaries.
    """
    loc, scale, observed = single_source_beliefs(guide, data, mask, sources=sources,
                                                 latent_site=latent_site)
    with torch.no_grad():
        loc, scale = loc.transpose(0, 1), scale.transpose(0, 1)  # (N, M, D)
        # KL(q_j || q_i): [n, i, j] with q_j the first argument
        kl = _kl_diag(loc.unsqueeze(-3), scale.unsqueeze(-3), loc.unsqueeze(-2),
                      scale.unsqueeze(-2))
        kl_prior = _kl_diag(loc, scale, torch.zeros_like(loc), torch.ones_like(scale))  # (N, M)
        c = kl / kl_prior.unsqueeze(-2)
        m = c.shape[-1]
        c = c.masked_fill(torch.eye(m, dtype=torch.bool, device=c.device), 0.0)
        seen = observed.transpose(0, 1)  # (N, M)
        both = seen.unsqueeze(-1) & seen.unsqueeze(-2)
        return c.masked_fill(~both, float("nan"))


def poe_agreement(guide, data: Mapping[str, torch.Tensor],
                  mask: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
    r"""``(N,)``: the log-normaliser of the guide's product of experts over the observed
    sources of each data point (:meth:`~pyro_mmvae.guides.PoE.log_normalizer`), MSNVI's
    agreement score: with ``PoE(prior_expert="divide")`` and exact single-source posteriors
    it is :math:`\log p(x_S) - \sum_{m\in S}\log p(x_m)` — positive where the sources explain
    each other, negative where they conflict.

    :param guide: a :class:`~pyro_mmvae.guides.MultimodalGuide` whose aggregator is a
        :class:`~pyro_mmvae.guides.PoE`.
    """
    aggregator = getattr(guide, "aggregator", None)
    if not hasattr(aggregator, "log_normalizer") or not hasattr(guide, "features"):
        raise ValueError("poe_agreement needs a MultimodalGuide whose aggregator is a PoE "
                         f"(got {type(guide).__name__} with {type(aggregator).__name__})")
    mask = validate_batch(data, mask)
    with torch.no_grad():
        features = guide.features(data, mask)
        stacked = torch.stack([mask[m] for m in guide.modalities], -1)
        if getattr(guide, "shared_features", None) is not None:
            features = features[..., :guide.shared_features]
        return aggregator.log_normalizer(features, stacked)
