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


def lecun_normal_(module: nn.Module) -> nn.Module:
    r"""Re-initialise every ``nn.Linear`` in ``module`` as Flax's ``Dense`` default does: weights
    from a normal truncated at two standard deviations and rescaled to standard deviation
    :math:`1/\sqrt{\text{fan\_in}}` (``lecun_normal``), biases zero. Returns ``module``.

    The learnable aggregators use it because the authors' (JAX/Flax) code does (seed 004 spec
    §"Initialisation"): PyTorch's default ``Linear`` init has a third of that variance, which
    through the five dense layers of χ and ρ shrinks the input's effect on q(z | x_S) about
    twentyfold at initialisation, and training then starts from a collapsed posterior.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            # a normal truncated at ±2σ has standard deviation 0.8796σ
            std = layer.in_features ** -0.5 / 0.87962566103423978
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def halving_sizes(size: int, steps: int, rounding: str = "ceil") -> list:
    """Spatial sizes ``[size, size/2, ...]`` (``steps + 1`` entries) of a stride-2 pyramid.

    ``rounding="ceil"`` is what a kernel-3, stride-2, padding-1 convolution does (an odd size
    keeps its border pixel: 28 -> 14 -> 7 -> 4, 15 -> 8 -> 4); ``"floor"`` is what a kernel-4,
    stride-2, padding-1 convolution does (8 -> 4 -> 2).
    """
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    sizes = [int(size)]
    for _ in range(steps):
        s = sizes[-1]
        sizes.append(-(-s // 2) if rounding == "ceil" else max(s // 2, 1))
    return sizes


def num_halvings(size: int, stop: int, rounding: str = "ceil") -> int:
    """How many stride-2 halvings (see :func:`halving_sizes`) bring ``size`` down to ``<= stop``."""
    if size < 1 or stop < 1:
        raise ValueError(f"size and stop must be >= 1, got size={size}, stop={stop}")
    n = 0
    while size > stop:
        size = halving_sizes(size, 1, rounding)[-1]
        n += 1
    return n


def apply_batched(net: nn.Module, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Run ``net`` (which takes one batch dim, ``(N, *event)``) on ``x (..., *event)``.

    The leading dims of ``x`` (particles, subsets, batch; possibly none) are flattened into one
    batch dim for the call and restored on the output: ``(..., *out)``. This is how
    convolutional networks broadcast over particle plates like ``nn.Linear`` does.
    """
    lead = x.shape[:x.dim() - event_dims]
    y = net(x.reshape((-1,) + x.shape[len(lead):]))
    return y.reshape(lead + y.shape[1:])


def check_sizes(name: str, shape: Sequence[int], rank: int) -> tuple:
    """``shape`` as a tuple of ``rank`` positive ints, else a ``ValueError`` naming it."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != rank or min(shape) < 1:
        raise ValueError(f"{name} must be {rank} positive sizes, got {shape}")
    return shape


def image_pyramid(height: int, width: int, final_size: int):
    """Number of stride-2 stages and the per-stage heights and widths (ceil halving).

    Stages halve both sides until the larger one is ``<= final_size``; shared by
    :class:`pyro_mmvae.guides.networks.ConvImageEncoder` and
    :class:`pyro_mmvae.models.networks.ConvImageDecoder`, so the two mirror each other exactly.
    """
    n = num_halvings(max(height, width), final_size)
    return n, halving_sizes(height, n), halving_sizes(width, n)


def text_pyramid(length: int, final_length: int = 4):
    """Per-stage lengths of the text CNN: floor halving (kernel 4, stride 2, padding 1) until
    ``<= final_length``; a last convolution with kernel ``lengths[-1]`` then maps to length 1."""
    return halving_sizes(length, num_halvings(length, final_length, "floor"), "floor")
