r"""Encoder networks for images and text: one modality ``(B, ...) -> (B, E)`` features.

For the Gaussian experts of :class:`~pyro_mmvae.guides.PoE`, :class:`~pyro_mmvae.guides.MoE` and
:class:`~pyro_mmvae.guides.MoPoE` use ``out_dim = 2 * latent_dim`` (mean, unconstrained scale); for
the learnable aggregators (:class:`~pyro_mmvae.guides.SumPooling`,
:class:`~pyro_mmvae.guides.SelfAttention`) any feature size ``E``.

The architectures follow MoPoE (Sutter et al. 2021, App. C–D; notes A3.2–A3.3), generalised to
any size; the matching decoders are in :mod:`pyro_mmvae.models.networks`:

- :class:`ConvImageEncoder` is the PolyMNIST CNN (kernel 3, stride 2, padding 1 convolutions,
  then linear layers). The number of stride-2 convolutions is computed from the image size
  (halve until ``<= final_size``), so 16x16, 28x28, 32x32, 64x64 and odd sizes all work; at
  ``(3, 28, 28)`` with ``hidden_dim=512`` it is layer for layer the PolyMNIST encoder.
- :class:`TextEncoder` is the MoPoE character-level 1-D CNN over one-hot text ``(B, L, A)``; at
  ``L = 8`` it is layer for layer the MNIST-SVHN-Text text encoder.

Both also accept extra leading dims ``(..., B, ...)``; the guide passes ``(B, ...)`` only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from pyro_mmvae.nn import apply_batched, check_sizes, image_pyramid, text_pyramid


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
