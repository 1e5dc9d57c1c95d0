"""Network trunks shared by ``models``, ``guides`` and the evaluation classifiers.

Besides the small helpers (MLP, Flax's Dense init, the image and text size pyramids), the
MoPoE encoder trunks live here: :class:`ConvImageEncoder` (the PolyMNIST CNN generalised to any
image size) and :class:`TextEncoder` (the character-level 1-D CNN over one-hot text), each
``(..., B, ...) -> (..., B, out_dim)``. The guides use them as modality encoders
(:mod:`pyro_mmvae.guides.networks` re-exports them), the decoders of
:mod:`pyro_mmvae.models.networks` mirror them, and :mod:`pyro_mmvae.eval.classifiers` uses
them as label classifiers: the core owns them, so it imports nothing from the packages above it.
"""

from __future__ import annotations

from typing import Optional, Sequence

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

    The learnable aggregators use it because the JAX/Flax code of Hirt et al. does: PyTorch's
    default ``Linear`` init has a third of that variance, which through the five dense layers
    of χ and ρ shrinks the input's effect on q(z | x_S) about twentyfold at initialisation, and
    training then starts from a collapsed posterior.
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
    if x.dim() == event_dims + 1:  # one batch dim already: no reshapes (nor their graph nodes)
        return net(x)
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


def _head(flat: int, out_dim: int, hidden_dim: Optional[int], activation: type) -> list:
    if hidden_dim is None:
        return [nn.Flatten(), nn.Linear(flat, out_dim)]
    return [nn.Flatten(), nn.Linear(flat, hidden_dim), activation(), nn.Linear(hidden_dim, out_dim)]


class ConvImageEncoder(nn.Module):
    r"""Convolutional image encoder ``(B, C, H, W) -> (B, out_dim)``.

    ``Conv2d(k=3, s=2, p=1) + activation`` per entry of ``channels`` (stride 2 for the first
    ``n`` of them, ``n`` = the halvings bringing ``max(H, W)`` to ``<= final_size``; stride 1
    for any further entries; the last channel count is repeated when the image needs more
    stages than ``channels`` lists), then flatten and ``Linear`` to ``out_dim`` (through a
    ``hidden_dim`` layer if given). Sizes: 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4,
    64 -> 32 -> 16 -> 8 -> 4, 16 -> 8 -> 4, 15 -> 8 -> 4.

    :param in_shape: ``(C, H, W)`` of one image.
    :param out_dim: feature size (``2 * latent_dim`` for Gaussian experts).
    :param channels: output channels of the convolutions, from the input up.
    :param hidden_dim: width of a hidden linear layer after the convolutions (PolyMNIST: 512);
        None maps the flattened features to ``out_dim`` directly.
    :param final_size: stop halving once the larger side is ``<= final_size``.
    """

    def __init__(self, in_shape: Sequence[int], out_dim: int,
                 channels: Sequence[int] = (32, 64, 128), hidden_dim: Optional[int] = None,
                 final_size: int = 4, activation: type = nn.ReLU):
        super().__init__()
        self.in_shape = check_sizes("in_shape", in_shape, 3)
        if not channels:
            raise ValueError("channels must list at least one convolution")
        c, h, w = self.in_shape
        n, hs, ws = image_pyramid(h, w, final_size)
        depth = max(len(channels), n)
        layers = []
        for i in range(depth):
            out = channels[min(i, len(channels) - 1)]
            layers += [nn.Conv2d(c, out, 3, 2 if i < n else 1, 1), activation()]
            c = out
        self.net = nn.Sequential(*layers, *_head(c * hs[-1] * ws[-1], out_dim, hidden_dim,
                                                 activation))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != self.in_shape:
            raise ValueError(f"ConvImageEncoder expects images (..., C, H, W) = (..., "
                             f"{', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return apply_batched(self.net, x, 3)


class TextEncoder(nn.Module):
    r"""Character-level 1-D CNN on one-hot text ``(B, L, A) -> (B, out_dim)`` (MoPoE).

    The one-hot sequence is read as ``A`` input channels over ``L`` positions:
    ``Conv1d(A, C, k=1)``, then ``Conv1d(C, C, k=4, s=2, p=1)`` stages halving the length
    until it is ``<= 4``, then ``Conv1d(C, C, k=<remaining length>)`` down to length 1 (each
    followed by the activation), and ``Linear(C, out_dim)`` (through ``hidden_dim`` if given).
    At ``L = 8``: 8 -> 4 -> 1, the MNIST-SVHN-Text text encoder.

    :param length: characters per string ``L``.
    :param out_dim: feature size (``2 * latent_dim`` for Gaussian experts).
    :param alphabet_size: one-hot size ``A`` (MoPoE's alphabet has 71 symbols).
    :param channels: width ``C`` of every convolution (MoPoE: 128).
    """

    def __init__(self, length: int, out_dim: int, alphabet_size: int = 71, channels: int = 128,
                 hidden_dim: Optional[int] = None, activation: type = nn.ReLU):
        super().__init__()
        self.length, self.alphabet_size = check_sizes("(length, alphabet_size)",
                                                      (length, alphabet_size), 2)
        lengths = text_pyramid(self.length)
        layers = [nn.Conv1d(self.alphabet_size, channels, 1), activation()]
        for _ in lengths[1:]:
            layers += [nn.Conv1d(channels, channels, 4, 2, 1), activation()]
        layers += [nn.Conv1d(channels, channels, lengths[-1]), activation()]
        self.net = nn.Sequential(*layers, *_head(channels, out_dim, hidden_dim, activation))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.length, self.alphabet_size):
            raise ValueError(f"TextEncoder expects one-hot text (..., {self.length}, "
                             f"{self.alphabet_size}), got {tuple(x.shape)}")
        return apply_batched(self.net, x.transpose(-1, -2), 2)  # (N, A, L) for Conv1d
