"""Mixture guide distributions as the mixture bounds read them: weights and components.

Works for any distribution exposing ``mixture_distribution`` and ``component_distribution``
(the library's :class:`~pyro_mmvae.guides.DiagNormalMixture`, Pyro's ``MixtureSameFamily``)
and for a :class:`~pyro_mmvae.infer.cells.StackedDistribution` of them (a guide traced cell by
cell).
"""

from __future__ import annotations

import torch
from pyro.distributions import Independent, Laplace, Normal

from .cells import StackedDistribution


def is_mixture(fn) -> bool:
    """Whether a distribution exposes ``mixture_distribution`` and ``component_distribution``
    (for a :class:`~pyro_mmvae.infer.cells.StackedDistribution`: every part does)."""
    if isinstance(fn, StackedDistribution):
        return all(is_mixture(p) for p in fn.parts)
    cls = type(fn)
    return hasattr(cls, "mixture_distribution") and hasattr(cls, "component_distribution")


def _stack_parts(tensors, grid, lead: int):
    """Per-cell tensors ``(*lead, *rest)`` stacked into ``(*lead, *grid, *rest)``."""
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    out = torch.stack([t.expand(shape) for t in tensors], dim=lead)
    return out.reshape(shape[:lead] + tuple(grid) + shape[lead:])


def mixture_logits(mixture) -> torch.Tensor:
    """The normalised log mixture weights, ``(*batch, K)``."""
    if isinstance(mixture, StackedDistribution):
        parts = [mixture_logits(p) for p in mixture.parts]
        parts = [p.expand(mixture.cell_batch + p.shape[-1:]) for p in parts]
        return _stack_parts(parts, mixture.grid, 0)
    return mixture.mixture_distribution.logits


def components_first(mixture):
    """The components of a mixture as one distribution with batch ``(K, ...)``."""
    if isinstance(mixture, StackedDistribution):
        parts = [components_first(p) for p in mixture.parts]
        first = parts[0].base_dist if isinstance(parts[0], Independent) else parts[0]
        bases = [p.base_dist if isinstance(p, Independent) else p for p in parts]
        ndims = parts[0].reinterpreted_batch_ndims if isinstance(parts[0], Independent) else 0
        event = parts[0].event_shape
        loc, scale = (_stack_parts([getattr(b, a).expand((-1,) + mixture.cell_batch + event)
                                    for b in bases], mixture.grid, 1) for a in ("loc", "scale"))
        moved = type(first)(loc, scale)
        return moved.to_event(ndims) if ndims else moved
    comp = mixture.component_distribution
    ndims = comp.reinterpreted_batch_ndims if isinstance(comp, Independent) else 0
    base = comp.base_dist if isinstance(comp, Independent) else comp
    if not isinstance(base, (Normal, Laplace)):
        raise ValueError(f"form='stratified'/'average' needs Normal or Laplace mixture components, "
                         f"got {type(base).__name__}; use form='sampled'")
    k_dim = -(ndims + 1)
    moved = type(base)(base.loc.movedim(k_dim, 0), base.scale.movedim(k_dim, 0))
    return moved.to_event(ndims) if ndims else moved
