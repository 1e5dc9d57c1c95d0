"""Small network helpers shared by ``models`` and ``guides``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def positive_scale(raw: torch.Tensor, min_scale: float) -> torch.Tensor:
    """Map an unconstrained tensor to a scale: ``min_scale + softplus(raw)``."""
    return F.softplus(raw) + min_scale


def inverse_positive_scale(scale: torch.Tensor, min_scale: float) -> torch.Tensor:
    """Inverse of :func:`positive_scale` (for initialising a raw parameter from a scale)."""
    s = torch.as_tensor(scale, dtype=torch.get_default_dtype()) - min_scale
    return s + torch.log(-torch.expm1(-s))


class MLP(nn.Sequential):
    """Fully connected network ``in -> hidden... -> out`` acting on the last dimension.

    Leading dimensions (particles, subsets, batch) broadcast, so an ``MLP`` decoder works under
    vectorised particle plates unchanged.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int,
                 activation: type = nn.ReLU):
        layers = []
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
