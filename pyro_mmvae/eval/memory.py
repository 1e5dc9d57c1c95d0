r"""Chunk sizes from a memory budget: how many particles (draws) the evaluation functions
vectorise at once.

A probe traces model and guide with one and with two particles and counts the bytes of the
distinct tensor storages the two traces hold (sample values, log-densities, the distributions'
parameters: the networks' outputs; parameters of the modules are shared and not counted). The
difference is the memory of one more particle, the rest is fixed; a chunk is as many particles
as fit in the budget with a safety factor for the activations the networks free as they go
(:data:`ACTIVATION_FACTOR`). The estimate is cheap (two small extra calls) and conservative:
the peak also holds one chunk's intermediate activations, which the factor covers for the
library's MLP and convolutional networks.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20  # bytes
ACTIVATION_FACTOR = 4


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


def chunk_for_budget(probe: Callable[[int], int], num_samples: int,
                     memory_budget: Optional[int] = None) -> int:
    """Particles per chunk so that ``probe(size)`` (bytes held by a trace of ``size``
    particles) times :data:`ACTIVATION_FACTOR` stays within ``memory_budget`` (default
    :data:`DEFAULT_MEMORY_BUDGET`); at least 1, at most ``num_samples``."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {budget!r}")
    if num_samples <= 1:
        return 1
    one, two = probe(1), probe(2)
    per_particle = max(two - one, 1)
    fixed = max(one - per_particle, 0)
    room = budget - ACTIVATION_FACTOR * fixed
    return int(max(1, min(num_samples, room // (ACTIVATION_FACTOR * per_particle))))
