r"""Data-parallel training on ``torch.distributed``: the same steps on one process or many.

Launch with ``torchrun`` (gloo on CPU, NCCL on GPU); :func:`fit` then trains data-parallel
(``distributed=None`` detects an initialised process group, :func:`from_environment` and
:func:`initialize` set one up from the launcher's variables). Each step:

- every process builds the same global mini-batch (the shuffling generator is seeded alike)
  and takes its contiguous shard of it (:func:`shard_rows`: rows split as
  ``torch.tensor_split`` splits them);
- the loss of the shard, summed over its rows, runs through
  ``DistributedDataParallel(loss(model, guide))`` (Pyro's ``ELBOModule``), and is multiplied by
  the world size ``W`` before the backward pass: DDP averages the gradients over the
  processes, so they become the gradient of the loss summed over the whole batch, the
  objective of one process;
- the draws of the library's bounds and guides are shard-invariant
  (:mod:`pyro_mmvae.sharding`): with the same seed every process draws each row's subsets and
  latents as the one-process run does, so the runs on 1, 2 or 4 processes take the same steps
  to float tolerance (the sums are added in another order);
- the optimiser (one ``torch.optim.Adam``) steps the all-reduced gradients, identical on every
  process, so every process makes the same update and the same decision on a non-finite
  loss or gradient: they all stop together, keeping the last good checkpoint.

Only the main process (rank 0) writes run files (checkpoints, metrics, plots) and shows
progress; every process resumes from the same checkpoint. The model's and guide's parameters
must belong to their modules (``nn.Module`` / ``PyroModule`` parameters, which DDP
all-reduces); a ``pyro.param`` outside them is an error.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pyro_mmvae.sharding import data_shard

from .step import SVIStep

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: how long a process of :func:`initialize`'s group waits at a collective: the others wait
#: for rank 0's part of an evaluation (classifiers, plots), longer than torch's default
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: ``rank`` of ``world_size`` processes,
    ``local_rank`` on its machine (the GPU it uses)."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @classmethod
    def current(cls) -> Optional["Distributed"]:
        """The initialised default process group's place, or None (none, or one process)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return cls(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[Distributed]:
    """The place ``torchrun`` gives this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    or None when it was not launched so (or with one process)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or int(env["WORLD_SIZE"]) <= 1:
        return None
    missing = [k for k in ENVIRONMENT if k not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE is {env['WORLD_SIZE']} but {', '.join(missing)} is not "
                         "set: launch the data-parallel run with torchrun")
    return Distributed(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))


def initialize(device: str = "cpu") -> Optional[Distributed]:
    """Join the process group of the launcher's environment (gloo for ``device="cpu"``,
    NCCL for CUDA, ``init_method="env://"``, collectives waiting up to :data:`TIMEOUT`)
    unless already joined; None when not launched by ``torchrun`` with more than one
    process."""
    place = from_environment()
    if place is None:
        return None
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:  # NCCL's communicator of this process on its own GPU
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", rank=place.rank,
                                world_size=place.world_size, timeout=TIMEOUT)
    return place


def resolve(distributed) -> Optional[Distributed]:
    """:func:`fit`'s ``distributed``: None (the initialised process group's place, if any),
    False (one process), or a :class:`Distributed`."""
    if distributed is False:
        return None
    if distributed is None or distributed is True:
        place = Distributed.current()
        if place is None and distributed is True:
            raise ValueError("distributed=True but no torch.distributed process group with "
                             "more than one process is initialised (launch with torchrun)")
        return place
    if not isinstance(distributed, Distributed):
        raise TypeError(f"distributed must be None, a bool or a Distributed, got "
                        f"{type(distributed).__name__}")
    if not dist.is_initialized():
        raise ValueError("distributed names a place but no torch.distributed process group is "
                         "initialised (torch.distributed.init_process_group)")
    return distributed


def shard_bounds(total: int, place: Distributed) -> Tuple[int, int]:
    """``(offset, size)`` of this process's rows of a ``total``-row batch: contiguous, sizes
    differing by at most one (``torch.tensor_split``)."""
    if total < place.world_size:
        raise ValueError(f"a batch of {total} data points cannot be split over "
                         f"{place.world_size} processes: raise batch_size")
    base, extra = divmod(total, place.world_size)
    size = base + (place.rank < extra)
    return place.rank * base + min(place.rank, extra), size


def shard_rows(batch: Mapping[str, torch.Tensor], mask: Optional[Mapping[str, torch.Tensor]],
               place: Distributed):
    """This process's rows of a global ``(batch, mask)``: ``(batch, mask, rows, total)``,
    ``rows`` the shard's ``slice`` of the ``total`` points."""
    total = next(iter(batch.values())).shape[0]
    offset, size = shard_bounds(total, place)
    rows = slice(offset, offset + size)
    local = {m: x[rows] for m, x in batch.items()}
    local_mask = None if mask is None else {m: v[rows] for m, v in mask.items()}
    return local, local_mask, rows, total


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over the processes of ``values`` (a new tensor, on every process)."""
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@contextmanager
def local_shard(data: Mapping[str, torch.Tensor],
                mask: Optional[Mapping[str, torch.Tensor]] = None,
                place: Optional[Distributed] = None):
    """This process's contiguous shard of ``N`` data points, under
    :func:`~pyro_mmvae.sharding.data_shard` (so the library's draws are those of the whole
    evaluation): yields ``(data, mask, rows)``, ``rows`` the shard's ``slice`` of the points
    (for labels and other per-point arrays). Without a process group, everything."""
    place = place or Distributed.current()
    if place is None:
        yield data, mask, slice(None)
        return
    local, local_mask, rows, total = shard_rows(data, mask, place)
    whole = mask if mask is not None else {
        m: torch.ones(total, dtype=torch.bool, device=x.device) for m, x in data.items()}
    with data_shard(rows.start, rows.stop - rows.start, total, whole,
                    any_in_batch=_any_over_processes):
        yield local, local_mask, rows


def _any_over_processes(flags: torch.Tensor) -> torch.Tensor:
    """The elementwise OR of a bool tensor over the processes (an all-reduce)."""
    out = flags.to(torch.uint8)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.bool()


def gather_rows(fn, data: Mapping[str, torch.Tensor],
                mask: Optional[Mapping[str, torch.Tensor]] = None,
                place: Optional[Distributed] = None) -> torch.Tensor:
    """``fn(data, mask)``, a per-data-point result ``(N, ...)``, evaluated data-parallel:
    every process evaluates its shard of the ``N`` points (:func:`local_shard`) and the
    shards are gathered, in order, on every process. Without a process group (``place`` None
    and none initialised), ``fn(data, mask)`` itself.

    The result equals the one-process evaluation where ``fn``'s draws are shard-invariant and
    do not depend on the number of points otherwise: for
    :func:`~pyro_mmvae.eval.log_likelihood` give ``chunk_size`` (its default chunk follows
    the memory a shard's points need, so each process may chunk its particles differently;
    the estimates then agree in distribution).
    """
    place = place or Distributed.current()
    if place is None:
        return fn(data, mask)
    with local_shard(data, mask, place) as (local, local_mask, rows):
        part = fn(local, local_mask)
    total = next(iter(data.values())).shape[0]
    most = -(-total // place.world_size)  # the largest shard: all_gather wants equal sizes
    padded = part.new_zeros((most,) + part.shape[1:])
    padded[:rows.stop - rows.start] = part
    parts = [torch.empty_like(padded) for _ in range(place.world_size)]
    dist.all_gather(parts, padded.contiguous())
    sizes = [shard_bounds(total, Distributed(r, place.world_size))[1]
             for r in range(place.world_size)]
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class DataParallelStep(SVIStep):
    """:class:`~pyro_mmvae.train.SVIStep` on this process's shard of every global batch, with
    the gradients of the whole batch's summed loss (module docstring); returns that loss.

    Called as ``step(batch, mask)`` with the *global* batch and mask; each process computes
    its shard (:func:`shard_rows`) under :func:`pyro_mmvae.sharding.data_shard`.
    """

    def __init__(self, model, guide, loss, optim, place: Distributed, gradient_transform=None,
                 device_ids=None):
        super().__init__(model, guide, loss, optim, gradient_transform)
        self.place = place
        self.ddp = DistributedDataParallel(loss(model, guide), device_ids=device_ids,
                                           find_unused_parameters=True)
        self.module_params = {id(p) for p in self.ddp.parameters()}
        self.checked = None

    def __call__(self, batch, mask=None) -> float:
        with local_shard(batch, mask, self.place) as (local, local_mask, _):
            value = super().__call__(local, local_mask)
        if self.params is not self.checked:
            self.checked = self.params
            outside = [p for p in self.params if id(p) not in self.module_params]
            if outside:
                raise ValueError(
                    f"{len(outside)} parameter(s) of the param store are not parameters of the "
                    "model's or the guide's modules, so data-parallel training cannot "
                    "all-reduce their gradients: make them nn.Parameters of a module (a "
                    "PyroModule, or pyro.module)")
        return value

    def _loss_and_grads(self, data, mask):
        local = self.ddp(data, mask)  # the shard's loss, summed over its rows
        (local * self.place.world_size).backward()  # DDP averages: the whole batch's gradient
        return float(all_reduce_sum(local))


__all__ = ["Distributed", "DataParallelStep", "ENVIRONMENT", "all_reduce_sum", "gather_rows",
           "local_shard", "from_environment", "initialize", "resolve", "shard_bounds",
           "shard_rows"]
