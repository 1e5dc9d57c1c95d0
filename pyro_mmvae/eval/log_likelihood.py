r"""Importance-sampled log-likelihoods (Hirt et al. App. I; Burda et al. 2016).

.. math:: \log p(x_A) \approx \log\frac1K\sum_{k=1}^K
    \frac{p(x_A\mid z_k)\,p(z_k)}{q(z_k\mid x_A)},\qquad z_k\sim q(z\mid x_A),

per data point, with the guide conditioned on the same set ``A`` it scores (the proposal that
keeps the estimate tight). Conditionals are differences of two such estimates,
:math:`\log p(x_T\mid x_S)=\log p(x_{S\cup T})-\log p(x_S)`. Likelihood weights are never
applied here. :func:`log_likelihood` is NaN for data points with nothing to score (no observed
target): average it with ``nanmean``.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch

from pyro_mmvae.eval.memory import chunk_for_budget, trace_nbytes
from pyro_mmvae.infer.traces import (latent_sites, log_density_ratio, reconstruction,
                                     trace_guide, trace_model)
from pyro_mmvae.protocol import (check_positive_int, scoring, stack_mask, unstack_mask,
                                 validate_batch)


@scoring()  # only log-densities are read: no generation of masked-out modalities
@torch.no_grad()
def log_marginal(model, guide, data, mask, num_samples: int = 1000,
                 chunk_size: Optional[int] = None, max_plate_nesting: int = 1,
                 memory_budget: Optional[int] = None) -> torch.Tensor:
    """Per-datapoint importance-sampled ``log p(x_A)`` with ``A = mask`` (``(B,)``).

    Particles are vectorised in chunks of ``chunk_size`` (default: as many as fit in
    ``memory_budget`` bytes, 256 MiB unless given; :mod:`pyro_mmvae.eval.memory`), combined
    with a running log-sum-exp, so memory stays bounded for any K.
    Data points with an empty ``A`` get exactly 0 (the log-probability of observing nothing,
    what the difference of a conditional needs; :func:`log_likelihood` reports them as NaN).
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    mask = validate_batch(data, mask)
    dim = -(max_plate_nesting + 1)

    def traces(size):
        plates = [("particles", size, dim)]
        guide_tr = trace_guide(guide, data, mask, plates)
        return guide_tr, trace_model(model, guide_tr, data, mask, plates)

    chunk = chunk_size or chunk_for_budget(lambda k: trace_nbytes(*traces(k)), num_samples,
                                           memory_budget)
    total = None
    done = 0
    while done < num_samples:
        size = min(chunk, num_samples - done)
        guide_tr, model_tr = traces(size)
        log_w = reconstruction(model_tr, latent_sites(guide_tr)) + log_density_ratio(
            guide_tr, model_tr)
        del guide_tr, model_tr
        part = log_w.logsumexp(dim)
        total = part if total is None else torch.logaddexp(total, part)
        done += size
    observed_any = stack_mask(mask, list(data)).any(-1)
    value = total - math.log(num_samples)
    return torch.where(observed_any, value, torch.zeros_like(value))


def log_likelihood(model, guide, data, mask=None,
                   given: Optional[Union[str, Iterable[str]]] = None,
                   targets: Optional[Union[str, Iterable[str]]] = None, num_samples: int = 1000,
                   chunk_size: Optional[int] = None,
                   memory_budget: Optional[int] = None) -> torch.Tensor:
    r"""Per-datapoint importance-sampled log-likelihood, ``(B,)``.

    - ``given=None``: the joint :math:`\log p(x_T)` of the observed modalities (``T = O``, or
      ``O`` intersected with ``targets``).
    - ``given=S``: :math:`\log p(x_T\mid x_S)` with ``T = targets`` (default: the observed
      modalities outside ``S``), both intersected per data point with what is observed. Where
      none of ``S`` is observed this is :math:`\log p(x_T)`.

    **NaN** marks data points with nothing to score, whose ``T`` is empty once intersected
    with what is observed (a target modality missing there; the joint of a point with nothing
    observed): average with ``torch.nanmean`` / ``numpy.nanmean``, or select with
    ``~result.isnan()``.

    :param given: a modality name or a list of them (``"top"`` is ``["top"]``).
    :param targets: a modality name or a list of them.
    :param num_samples: importance samples K (default 1000), vectorised and chunked.
    :param chunk_size: particles vectorised at once (default: from ``memory_budget``).
    :param memory_budget: bytes a chunk may hold (default 256 MiB;
        :mod:`pyro_mmvae.eval.memory`).
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    mask = validate_batch(data, mask)
    modalities = list(data)
    given, targets = _names(given), _names(targets)
    for name, names in (("given", given), ("targets", targets)):
        for m in names or ():
            if m not in data:
                raise ValueError(f"{name} names unknown modality '{m}': data has {modalities}")
    observed = stack_mask(mask, modalities)
    if given is None:
        t = observed
        if targets is not None:
            t = t & _indicator(targets, modalities, observed)
        joint = log_marginal(model, guide, data, unstack_mask(t, modalities), num_samples,
                             chunk_size, memory_budget=memory_budget)
        return _scored(joint, t)
    s = observed & _indicator(given, modalities, observed)
    t = observed & ~s
    if targets is not None:
        t = t & _indicator(targets, modalities, observed)
    joint = log_marginal(model, guide, data, unstack_mask(s | t, modalities), num_samples,
                         chunk_size, memory_budget=memory_budget)
    marginal = log_marginal(model, guide, data, unstack_mask(s, modalities), num_samples,
                            chunk_size, memory_budget=memory_budget)  # 0 where S is empty
    return _scored(joint - marginal, t)


def _scored(value: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``value`` where a data point has an observed target (``targets (N, M)``), else NaN."""
    return torch.where(targets.any(-1), value, torch.full_like(value, math.nan))


def _names(names) -> Optional[list]:
    """A modality name or an iterable of them as a list (None stays None)."""
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


def _indicator(names, modalities, like):
    names = set(names)
    row = torch.tensor([m in names for m in modalities], dtype=torch.bool, device=like.device)
    return row.expand_as(like)
