r"""Chunk sizes from a memory budget: how many particles (draws) the evaluation functions
vectorise at once.

A probe traces model and guide with one and with two particles and counts the bytes of the
distinct tensor storages the two traces hold (sample values, log-densities, the distributions'
parameters: the networks' outputs; parameters of the modules are shared and not counted). The
difference is the memory of one more particle, the rest is fixed; a chunk is as many particles
as fit in the budget with a safety factor for the activations the networks free as they go
(:data:`ACTIVATION_FACTOR`). The estimate is cheap (two small extra calls) and conservative:
the peak also holds one chunk's intermediate activations, which the factor covers for the
library's MLP and convolutional networks. The factor 5 also leaves room for what the
allocator keeps of freed chunks: ``log_likelihood`` of 1000 points x 1000 particles at the
default budget peaks at about 120 MiB of live tensors and 270 MiB of resident memory with
glibc's default allocator (``benchmarks/results/memory.md``); with 4 its resident peak was
320-340 MiB.

Probes run with the random state saved and restored (:func:`rng_preserved`), so a chunked
evaluation draws the same random numbers whatever budget chose its chunks. Functions that chunk
over data points as well as particles (:func:`chunks_for_budget`: rate-distortion, coherence)
probe one and two data points with all particles, and split the particles only where a single
data point does not fit.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Optional, Tuple

import pyro.util
import torch

DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20  # bytes
ACTIVATION_FACTOR = 5  # bytes held per byte a probe counts (see the module docstring)


def trace_nbytes(*traces) -> int:
    """Bytes of the distinct tensor storages held by the sample sites of ``traces``."""
    seen, total = set(), 0

    def visit(obj, depth):
        nonlocal total
        if torch.is_tensor(obj):
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif depth < 4 and isinstance(obj, torch.distributions.Distribution):
            for value in vars(obj).values():
                visit(value, depth + 1)
        elif depth < 4 and isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value, depth + 1)

    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for key in ("value", "log_prob", "fn"):
                    visit(site.get(key), 0)
    return total


def check_memory_budget(memory_budget) -> int:
    """``memory_budget`` in bytes as an ``int`` (None: :data:`DEFAULT_MEMORY_BUDGET`).

    Any finite real number of at least one byte is accepted (``1e9``, ``2 ** 28``, numpy
    scalars; fractions of a byte are dropped); ``TypeError`` naming ``memory_budget`` for
    anything else (strings, bools, tensors), ``ValueError`` for zero, negative or non-finite
    values."""
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real):
        raise TypeError(f"memory_budget must be a positive number of bytes (or None for "
                        f"{DEFAULT_MEMORY_BUDGET // 2 ** 20} MiB), got "
                        f"{type(memory_budget).__name__} {memory_budget!r}")
    if not math.isfinite(memory_budget) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got "
                         f"{memory_budget!r}")
    return int(memory_budget)


@contextlib.contextmanager
def rng_preserved():
    """Run the body with the random state of torch (CPU and initialised CUDA devices), Python
    and numpy saved and restored afterwards: probes leave the random stream untouched."""
    state = pyro.util.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and \
        torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _fit(one: int, two: int, num: int, budget: int) -> Tuple[int, bool]:
    """``(chunk, fits)`` from the bytes of one and of two units: as many units as fit (1 to
    ``num``), and whether even one unit fits."""
    per_unit = max(two - one, 1)
    fixed = max(one - per_unit, 0)
    room = budget - ACTIVATION_FACTOR * fixed
    fits = room >= ACTIVATION_FACTOR * per_unit
    return int(max(1, min(num, room // (ACTIVATION_FACTOR * per_unit)))), fits


def chunk_for_budget(probe: Callable[[int], int], num_samples: int,
                     memory_budget: Optional[int] = None) -> int:
    """Particles per chunk so that ``probe(size)`` (bytes held by a trace of ``size``
    particles) times :data:`ACTIVATION_FACTOR` stays within ``memory_budget`` (default
    :data:`DEFAULT_MEMORY_BUDGET`; :func:`check_memory_budget`); at least 1, at most
    ``num_samples``. The probes do not consume random numbers (:func:`rng_preserved`)."""
    budget = check_memory_budget(memory_budget)
    if num_samples <= 1:
        return 1
    with rng_preserved():
        one, two = probe(1), probe(2)
    return _fit(one, two, num_samples, budget)[0]


def chunks_for_budget(probe: Callable[[int, int], int], num_points: int, num_samples: int,
                      memory_budget: Optional[int] = None) -> Tuple[int, int]:
    """``(points, particles)`` per chunk for an evaluation vectorised over data points and
    particles: ``probe(points, particles)`` gives the bytes its traces hold. Data points are
    chunked first, each chunk with all ``num_samples`` particles; only where one data point
    with all of them exceeds the budget is it one point at a time with the particles chunked
    (:func:`chunk_for_budget`). Random numbers are left untouched (:func:`rng_preserved`)."""
    budget = check_memory_budget(memory_budget)
    with rng_preserved():
        one = probe(1, num_samples)
        if num_points > 1:
            points, fits = _fit(one, probe(2, num_samples), num_points, budget)
        else:
            points, fits = 1, ACTIVATION_FACTOR * one <= budget
    if fits or num_samples <= 1:
        return points, num_samples
    return 1, chunk_for_budget(lambda k: probe(1, k), num_samples, budget)
