"""Mixture guide distributions as the mixture bounds read them: weights and components.

Works for any distribution exposing ``mixture_distribution`` and ``component_distribution``
(the library's :class:`~pyro_mmvae.guides.DiagNormalMixture`, Pyro's ``MixtureSameFamily``)
and for a :class:`~pyro_mmvae.infer.cells.StackedDistribution` of them (a guide traced cell by
cell).

The stratified bound scores every component's draw under the whole mixture, a pairwise
``(draws, ..., components)`` computation; :func:`chunked` evaluates it a block of draws at a
time (checkpointed under autograd), so its memory is one block's, not the whole pairwise
tensor's.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions import Independent, Laplace, Normal
from pyro.distributions.util import broadcast_shape
from torch.utils.checkpoint import checkpoint

from pyro_mmvae.sharding import any_in_batch

from .cells import StackedDistribution

#: Elements of the pairwise (draw x component x latent) tensor one chunk may hold when the
#: chunk size is chosen automatically (:func:`draw_chunk`): 2**22, 16 MiB in float32.
PAIRWISE_BUDGET = 1 << 22


def is_mixture(fn) -> bool:
    """Whether a distribution exposes ``mixture_distribution`` and ``component_distribution``
    (for a :class:`~pyro_mmvae.infer.cells.StackedDistribution`: every part does)."""
    if isinstance(fn, StackedDistribution):
        return all(is_mixture(p) for p in fn.parts)
    cls = type(fn)
    return hasattr(cls, "mixture_distribution") and hasattr(cls, "component_distribution")


def mixture_logits(mixture) -> torch.Tensor:
    """The normalised log mixture weights, ``(*batch, K)``."""
    if isinstance(mixture, StackedDistribution):
        parts = [mixture_logits(p) for p in mixture.parts]
        parts = [p.expand(mixture.cell_batch + p.shape[-1:]) for p in parts]
        return mixture.stack_cells(parts, 1)  # (*grid, *cell_batch, K)
    return mixture.mixture_distribution.logits


def components_first(mixture):
    """The components of a mixture as one distribution with batch ``(K, ...)``."""
    if isinstance(mixture, StackedDistribution):
        parts = [components_first(p) for p in mixture.parts]
        first = parts[0].base_dist if isinstance(parts[0], Independent) else parts[0]
        bases = [p.base_dist if isinstance(p, Independent) else p for p in parts]
        ndims = parts[0].reinterpreted_batch_ndims if isinstance(parts[0], Independent) else 0
        event = parts[0].event_shape
        loc, scale = (mixture.stack_cells([getattr(b, a).expand((-1,) + mixture.cell_batch + event)
                                           for b in bases], len(event))  # (K, *grid, ...)
                      for a in ("loc", "scale"))
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


def gather_components(comps, index: torch.Tensor):
    """The components ``comps`` (batch ``(K, *batch)``, as :func:`components_first` returns
    them) at the indices ``index`` ``(k, *batch)``: a distribution with batch ``(k, *batch)``
    whose entry ``[i, ...]`` is component ``index[i, ...]`` (differentiable in its parameters)."""
    ndims = comps.reinterpreted_batch_ndims if isinstance(comps, Independent) else 0
    base = comps.base_dist if isinstance(comps, Independent) else comps
    loc, scale = base.loc, base.scale
    tail = loc.shape[loc.dim() - ndims:] if ndims else torch.Size()
    batch = torch.Size(broadcast_shape(index.shape[1:], loc.shape[1:loc.dim() - ndims]))
    full = (loc.shape[0],) + batch + tail
    idx = index.expand((index.shape[0],) + batch).reshape((index.shape[0],) + batch
                                                          + (1,) * ndims)
    idx = idx.expand((index.shape[0],) + batch + tail)
    picked = type(base)(loc.expand(full).gather(0, idx), scale.expand(full).gather(0, idx))
    return picked.to_event(ndims) if ndims else picked


def select_components(comps, keep: torch.Tensor):
    """The components ``comps`` (batch ``(K, *batch)``) at the indices ``keep`` ``(k,)``, the
    same for every batch entry: batch ``(k, *batch)``."""
    ndims = comps.reinterpreted_batch_ndims if isinstance(comps, Independent) else 0
    base = comps.base_dist if isinstance(comps, Independent) else comps
    batch = len(base.batch_shape) - ndims - 1
    return gather_components(comps, keep.reshape((-1,) + (1,) * batch))


def live_components(weights: torch.Tensor) -> Optional[torch.Tensor]:
    """Indices ``(k,)`` of the components with a positive weight somewhere in ``weights``
    ``(K, ...)``, or None when every component has one (nothing to drop). Inside a data
    shard, somewhere in the whole batch (:func:`pyro_mmvae.sharding.any_in_batch`), so that
    every shard keeps the same components."""
    alive = any_in_batch((weights > 0).reshape(weights.shape[0], -1).any(1))
    return None if bool(alive.all()) else alive.nonzero().squeeze(-1)


def draw_chunk(value: torch.Tensor, num_components: int, chunk: Optional[int] = None) -> int:
    """Draws per chunk for a pairwise evaluation of ``value`` ``(L, ...)`` against
    ``num_components`` components: ``chunk`` if given, else as many as keep a chunk's
    ``draws x components x value[0].numel()`` within :data:`PAIRWISE_BUDGET` (at least 1)."""
    if chunk is not None:
        return chunk
    per_draw = max(1, value[0].numel() * num_components)
    return max(1, PAIRWISE_BUDGET // per_draw)


def chunked(fn: Callable, *tensors: torch.Tensor, chunk: int):
    """``fn(*tensors)`` evaluated on blocks of ``chunk`` rows of every tensor's dim 0 and
    concatenated along dim 0 (``fn`` must act row by row on that dim; it may return a tensor or
    a tuple of tensors).

    Under autograd every block is checkpointed (``torch.utils.checkpoint``, non-reentrant): its
    intermediates are recomputed in the backward pass instead of stored, so peak memory is one
    block's. One block (``chunk`` >= the rows) is the plain call. The values are those of the
    plain call: every row is computed by the same operations.
    """
    n = tensors[0].shape[0]
    if chunk >= n:
        return fn(*tensors)
    grad = torch.is_grad_enabled()
    blocks = []
    for start in range(0, n, chunk):
        args = [t[start:start + chunk] for t in tensors]
        blocks.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    if isinstance(blocks[0], tuple):
        return tuple(torch.cat(parts, 0) for parts in zip(*blocks))
    return torch.cat(blocks, 0)
