r"""Random draws that do not depend on how a batch is split across processes.

Data-parallel training (:mod:`pyro_mmvae.train.distributed`) gives each of ``W`` processes a
contiguous shard of every global mini-batch: rows ``offset .. offset + n`` of ``total``. For a
run on ``W`` processes to take the same steps as the run on one, every random draw a row sees
must be the one it would see in the whole batch. Inside :func:`data_shard` the library's draws
therefore draw for the *whole* batch and keep their shard's rows: with the same seed on every
process (as :func:`~pyro_mmvae.train.fit` sets) the random number streams then stay identical
across processes and equal to the one-process run's, whatever the world size.

The library draws through these helpers: the bounds' subsets (drawn from the whole batch's
mask, :meth:`~pyro_mmvae.infer.MultimodalELBO.draw_subsets`), the mixture bound's component
draws (:func:`categorical`) and the guide's latent sites and the bounds' per-component draws
(:func:`sharded`, for ``Normal``, ``Independent`` and any distribution with a ``pad_rows``
method such as :class:`~pyro_mmvae.guides.distributions.DiagNormalMixture`). Outside a shard
they are exactly the plain draws (the same functions, the same values). A hand-written guide
whose sites draw otherwise still trains correctly across processes (each row's draw is a valid
draw); its runs are then equal in distribution, not draw for draw.

Shapes: the data points are the rightmost batch dimension of a guide site's distribution, the
second-to-last dimension of the logits ``(..., B, K)`` that :func:`categorical` draws from.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
import pyro.distributions as dist
from torch.distributions import Distribution, Independent, Normal


class Shard(NamedTuple):
    """Rows ``offset .. offset + size`` of a global batch of ``total`` data points; ``mask``:
    the whole batch's mask ``{m: (total,)}``, from which the bounds draw their subsets
    (:meth:`~pyro_mmvae.infer.MultimodalELBO.draw_subsets`), or None; ``any_in_batch``: the
    elementwise OR of a bool tensor over every shard of the batch (in a data-parallel run an
    all-reduce over the processes), or None."""

    offset: int
    size: int
    total: int
    mask: Optional[Mapping[str, torch.Tensor]] = None
    any_in_batch: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


_SHARD: list = [None]


@contextmanager
def data_shard(offset: int, size: int, total: int,
               mask: Optional[Mapping[str, torch.Tensor]] = None,
               any_in_batch: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """Within this context the library's draws see rows ``offset .. offset + size`` of a
    ``total``-point batch (whose mask is ``mask``, and whose shards ``any_in_batch`` combines,
    if given: :class:`Shard`)."""
    if not (0 <= offset and size >= 1 and offset + size <= total):
        raise ValueError(f"a shard of rows {offset} .. {offset + size} does not fit a batch "
                         f"of {total}")
    previous, _SHARD[0] = _SHARD[0], Shard(offset, size, total, mask, any_in_batch)
    try:
        yield _SHARD[0]
    finally:
        _SHARD[0] = previous


def current_shard() -> Optional[Shard]:
    """The active :class:`Shard`, or None (the batch is the whole batch)."""
    return _SHARD[0]


def any_in_batch(flags: torch.Tensor) -> torch.Tensor:
    """``flags`` (a bool tensor found from this shard's rows, e.g. which mixture components
    some data point gives weight), OR-ed over the whole batch's shards where the shard knows
    how (:class:`Shard`): a decision about the batch that every shard takes alike."""
    shard = current_shard()
    if shard is None or shard.any_in_batch is None:
        return flags
    return shard.any_in_batch(flags)


def pad_rows(tensor: torch.Tensor, dim: int, shard: Shard, value: float = 0.0) -> torch.Tensor:
    """``tensor`` with its shard's rows at ``dim`` placed in a whole batch filled with
    ``value`` (a dimension of size 1 broadcasts and is left as it is)."""
    if tensor.shape[dim] == 1 and shard.size != 1:
        return tensor
    before = list(tensor.shape)
    before[dim] = shard.offset
    after = list(tensor.shape)
    after[dim] = shard.total - shard.offset - shard.size
    return torch.cat([tensor.new_full(before, value), tensor, tensor.new_full(after, value)],
                     dim)


def categorical(logits: torch.Tensor, sample_shape: Sequence[int] = ()) -> torch.Tensor:
    """``Categorical(logits=logits).sample(sample_shape)``, shard-invariant; ``logits``
    ``(..., B, K)`` with the data points at ``-2``."""
    shard = current_shard()
    if shard is not None:
        logits = pad_rows(logits, -2, shard)
    drawn = _categorical_draw(logits, torch.Size(sample_shape))
    return drawn if shard is None else drawn.narrow(-1, shard.offset, shard.size)


def _categorical_draw(logits: torch.Tensor, sample_shape: torch.Size) -> torch.Tensor:
    """``Categorical(logits=logits).sample(sample_shape)`` — the same operations, so the same
    draws from the same random state — without building the distribution."""
    k = logits.shape[-1]
    probs = torch.softmax(logits - logits.logsumexp(-1, keepdim=True), -1)
    flat = torch.multinomial(probs.reshape(-1, k), sample_shape.numel(), True).T
    return flat.reshape(sample_shape + logits.shape[:-1])


def padded(fn: Distribution, shard: Shard, dim: int) -> Optional[Distribution]:
    """``fn`` (without :func:`sharded`'s draws) with the data-point dimension ``dim`` of its
    draws widened to the whole batch: the shard's rows in place, filler elsewhere. It widens a
    ``Normal``, an ``Independent`` of one and any distribution with a ``pad_rows(shard, dim)``
    method; None for any other."""
    if isinstance(fn, Independent):
        base = padded(fn.base_dist, shard, dim)
        return None if base is None else dist.Independent(base, fn.reinterpreted_batch_ndims)
    if isinstance(fn, Normal) and _plain(type(fn)).__name__ == "Normal":
        return dist.Normal(pad_rows(fn.loc, dim, shard), pad_rows(fn.scale, dim, shard, 1.0),
                           validate_args=False)
    widen = getattr(fn, "pad_rows", None)
    return widen(shard, dim) if widen is not None else None


class _ShardedDraws:
    """Mixed into a distribution's class by :func:`sharded`: its draws inside a shard are the
    whole batch's, narrowed to the shard (outside one, the class's own)."""

    def rsample(self, sample_shape=torch.Size()):
        return self._shard_draw("rsample", sample_shape)

    def sample(self, sample_shape=torch.Size()):
        return self._shard_draw("sample", sample_shape)

    def _shard_draw(self, how: str, sample_shape):
        own = getattr(super(), how)
        shard, dim = current_shard(), -1 - len(self.event_shape)
        if shard is None or len(self.batch_shape) == 0 or self.batch_shape[-1] != shard.size:
            return own(sample_shape)
        wide = padded(self, shard, dim)
        if wide is None:
            return own(sample_shape)
        return getattr(wide, how)(sample_shape).narrow(dim, shard.offset, shard.size)


_SHARDED: dict = {}


def _plain(cls: type) -> type:
    return cls.__mro__[2] if issubclass(cls, _ShardedDraws) else cls


def sharded(fn: Distribution) -> Distribution:
    """``fn``, its draws made shard-invariant: inside a shard they draw for the whole batch
    and keep the shard's rows (the data points are the rightmost batch dimension). The
    instance's class becomes a subclass of its own (``isinstance``, the KL registry and
    ``expand`` see the same distribution); outside a shard nothing changes."""
    if current_shard() is None or isinstance(fn, _ShardedDraws):
        return fn
    cls = type(fn)
    sub = _SHARDED.get(cls)
    if sub is None:
        sub = _SHARDED[cls] = type(cls.__name__, (_ShardedDraws, cls),
                                   {"__module__": cls.__module__})
    fn.__class__ = sub
    return fn


__all__ = ["Shard", "data_shard", "current_shard", "any_in_batch", "pad_rows",
           "categorical", "padded", "sharded"]
