r"""Decoder networks for images and text, likelihood weights, and modality builders.

The networks map ``z (..., B, D)`` to the parameters of the modality's likelihood,
``(..., B, C, H, W)`` or ``(..., B, L, A)``, broadcasting over any leading (particle, subset)
dims, and are wrapped by the decoders of :mod:`pyro_mmvae.models.decoders`
(:class:`~pyro_mmvae.models.decoders.LaplaceDecoder` etc.). They mirror the encoders of
:mod:`pyro_mmvae.guides.networks` and follow MoPoE (Sutter et al. 2021, App. C–D):

- :class:`ConvImageDecoder`: ``Linear`` then transposed convolutions (kernel 3, stride 2,
  padding 1, ``output_padding`` chosen per stage) that reach exactly ``(C, H, W)``, odd sizes
  included; at ``(3, 28, 28)`` with ``hidden_dim=None`` it is layer for layer the PolyMNIST
  decoder.
- :class:`TextDecoder`: the MoPoE 1-D transposed CNN giving per-character logits; at
  ``L = 8`` layer for layer the MNIST-SVHN-Text text decoder (which returns log-softmax
  values; logits are equivalent under :class:`~pyro_mmvae.models.decoders.CategoricalDecoder`).

:func:`image_modality` and :func:`text_modality` return matching ``(encoder, decoder)`` pairs,
and :func:`dimension_likelihood_weights` gives MoPoE's per-modality likelihood weights.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pyro_mmvae.nn import ConvImageEncoder, TextEncoder
from pyro_mmvae.nn import apply_batched, check_sizes, image_pyramid, text_pyramid

from .decoders import BernoulliDecoder, CategoricalDecoder, GaussianDecoder, LaplaceDecoder

ImageLikelihood = Literal["laplace", "gaussian", "bernoulli"]


class ConvImageDecoder(nn.Module):
    r"""Transposed-convolution image decoder ``z (..., B, D) -> (..., B, C, H, W)``.

    ``Linear(D, c_0 h_0 w_0) + activation`` (through a ``hidden_dim`` layer if given), reshape to
    ``(c_0, h_0, w_0)``, then ``ConvTranspose2d(k=3, p=1)`` stages through ``channels`` to ``C``
    output channels, each followed by the activation except the last. The stage sizes mirror
    :class:`~pyro_mmvae.nn.ConvImageEncoder` with the same ``final_size``
    (28: 4 -> 7 -> 14 -> 28); each stride-2 stage takes ``output_padding`` 1 for an even target
    size and 0 for an odd one, so no cropping is needed. When ``channels`` lists more stages
    than the image needs halvings, the extra (stride-1) stages come first, at the bottleneck;
    when fewer, the first channel count is repeated.

    The output is a parameter map (Laplace/Gaussian mean, Bernoulli logits); no output
    activation unless ``output_activation`` (e.g. ``nn.Sigmoid()``, as MoPoE's MNIST decoder
    uses for the Laplace mean) is given.

    :param latent_dim: size ``D`` of ``z``.
    :param out_shape: ``(C, H, W)`` of one image.
    :param channels: channels entering each transposed convolution, from the bottleneck up.
    :param hidden_dim: width of a hidden linear layer before the reshape (None: none).
    :param final_size: bottleneck size, as in the encoder.
    """

    def __init__(self, latent_dim: int, out_shape: Sequence[int],
                 channels: Sequence[int] = (128, 64, 32), hidden_dim: Optional[int] = None,
                 final_size: int = 4, activation: type = nn.ReLU,
                 output_activation: Optional[nn.Module] = None):
        super().__init__()
        self.latent_dim = latent_dim
        self.out_shape = check_sizes("out_shape", out_shape, 3)
        if not channels:
            raise ValueError("channels must list at least one transposed convolution")
        c, h, w = self.out_shape
        n, hs, ws = image_pyramid(h, w, final_size)
        hs, ws = hs[::-1], ws[::-1]  # bottleneck first
        chans = [channels[0]] * max(n - len(channels), 0) + list(channels)
        flat = chans[0] * hs[0] * ws[0]
        layers = ([nn.Linear(latent_dim, flat)] if hidden_dim is None else
                  [nn.Linear(latent_dim, hidden_dim), activation(), nn.Linear(hidden_dim, flat)])
        layers += [activation(), nn.Unflatten(-1, (chans[0], hs[0], ws[0]))]
        still = len(chans) - n  # stride-1 stages at the bottleneck
        for i, c_in in enumerate(chans):
            c_out = chans[i + 1] if i + 1 < len(chans) else c
            if i < still:
                layers.append(nn.ConvTranspose2d(c_in, c_out, 3, 1, 1))
            else:
                j = i - still
                pad = (hs[j + 1] - 2 * hs[j] + 1, ws[j + 1] - 2 * ws[j] + 1)
                layers.append(nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=pad))
            if i + 1 < len(chans):
                layers.append(activation())
        if output_activation is not None:
            layers.append(output_activation)
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"ConvImageDecoder expects z (..., {self.latent_dim}), got "
                             f"{tuple(z.shape)}")
        return apply_batched(self.net, z, 1)


class TextDecoder(nn.Module):
    r"""1-D transposed CNN ``z (..., B, D) -> logits (..., B, L, A)`` for one-hot text (MoPoE).

    ``Linear(D, C)``, reshape to ``(C, 1)``, ``ConvTranspose1d(C, C, k=l_0)`` up to the
    bottleneck length ``l_0 <= 4``, then ``ConvTranspose1d(C, C, k=4, s=2, p=1)`` stages
    doubling the length (``output_padding`` 1 where the target is odd) to ``L``, each followed
    by the activation, and ``Conv1d(C, A, k=1)`` to per-character logits. Mirrors
    :class:`~pyro_mmvae.nn.TextEncoder`; wrap it in
    :class:`~pyro_mmvae.models.decoders.CategoricalDecoder`.

    :param latent_dim: size ``D`` of ``z``.
    :param length: characters per string ``L``.
    :param alphabet_size: one-hot size ``A`` (MoPoE: 71).
    :param channels: width ``C`` of every layer (MoPoE: 128).
    """

    def __init__(self, latent_dim: int, length: int, alphabet_size: int = 71,
                 channels: int = 128, activation: type = nn.ReLU):
        super().__init__()
        self.latent_dim = latent_dim
        self.length, self.alphabet_size = check_sizes("(length, alphabet_size)",
                                                      (length, alphabet_size), 2)
        lengths = text_pyramid(self.length)[::-1]  # bottleneck first
        layers = [nn.Linear(latent_dim, channels), nn.Unflatten(-1, (channels, 1)),
                  nn.ConvTranspose1d(channels, channels, lengths[0]), activation()]
        for short, long in zip(lengths[:-1], lengths[1:]):
            layers += [nn.ConvTranspose1d(channels, channels, 4, 2, 1,
                                          output_padding=long - 2 * short), activation()]
        layers.append(nn.Conv1d(channels, self.alphabet_size, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"TextDecoder expects z (..., {self.latent_dim}), got "
                             f"{tuple(z.shape)}")
        return apply_batched(self.net, z, 1).transpose(-1, -2)  # (..., B, L, A)


def dimension_likelihood_weights(shapes: Mapping[str, Sequence[int]],
                                 reference: Union[None, int, str] = None,
                                 one_hot: Sequence[str] = ()) -> dict:
    r"""MoPoE's per-modality likelihood weights :math:`\lambda_m = D_{\mathrm{ref}} / D_m`.

    Sutter et al. (2021, App. B) weight :math:`\log p(x_m\mid z)` so that "the most
    dominant modality is set to 1.0" and "the remaining ones are scaled up by the ratio of their
    data dimensions": :math:`D_m` is the number of entries of one data point and
    :math:`D_{\mathrm{ref}} = \max_m D_m`. On MNIST-SVHN-Text SVHN gets 1 and MNIST
    3072 / 784 = 3.92. Pass the result as ``likelihood_weights=`` to any bound; evaluation
    never weights.

    :param shapes: ``{modality: shape of one data point}`` (no batch dim), e.g.
        ``{m: x.shape[1:] for m, x in data.items()}``.
    :param reference: :math:`D_{\mathrm{ref}}`: None for the largest :math:`D_m`, an int, or a
        modality name. The CelebA code uses 64 * 64 = 4096, giving images (3, 64, 64) 1/3 and
        256-character text 16.
    :param one_hot: modalities whose last axis is a one-hot alphabet, counted as one dimension
        per position. The released MoPoE code counts text of 8 characters as 8 dimensions
        (MNIST-SVHN-Text text weight 3072 / 8 = 384, ``one_hot=("text",)``); counting every
        one-hot entry, the default, gives 3072 / 568 = 5.41. The paper does not say which.
    :returns: ``{modality: weight}`` as floats.
    """
    if not shapes:
        raise ValueError("shapes must name at least one modality")
    unknown = sorted(set(one_hot) - set(shapes))
    if unknown:
        raise ValueError(f"one_hot names unknown modality '{unknown[0]}': shapes has "
                         f"{sorted(shapes)}")
    dims = {}
    for m, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        if m in one_hot:
            if not shape:
                raise ValueError(f"modality '{m}': a one-hot modality needs a last (alphabet) "
                                 "axis, got shape ()")
            shape = shape[:-1]
        dims[m] = math.prod(shape)
        if dims[m] < 1:
            raise ValueError(f"modality '{m}': shape {tuple(shapes[m])} has no entries")
    if reference is None:
        ref = max(dims.values())
    elif isinstance(reference, str):
        if reference not in dims:
            raise ValueError(f"reference names unknown modality '{reference}': shapes has "
                             f"{sorted(shapes)}")
        ref = dims[reference]
    else:
        ref = reference
        if ref <= 0:
            raise ValueError(f"reference must be positive, got {reference}")
    return {m: ref / d for m, d in dims.items()}


def image_modality(in_shape: Sequence[int], latent_dim: int,
                   likelihood: ImageLikelihood = "laplace", embedding_dim: Optional[int] = None,
                   *, channels: Sequence[int] = (32, 64, 128), hidden_dim: Optional[int] = None,
                   final_size: int = 4, scale: float = 0.75, learn_scale: bool = False,
                   output_activation: Optional[nn.Module] = None) -> Tuple[nn.Module, nn.Module]:
    r"""A matching ``(encoder, decoder)`` pair for images ``(C, H, W)``.

    The encoder is a :class:`~pyro_mmvae.nn.ConvImageEncoder` with ``embedding_dim``
    outputs (default ``2 * latent_dim``, the Gaussian experts of PoE / MoE / MoPoE); the decoder
    wraps a :class:`ConvImageDecoder` (``channels`` reversed) in the likelihood:

    - ``"laplace"`` (default; MoPoE's images): :class:`~pyro_mmvae.models.decoders.LaplaceDecoder`
      with ``scale`` (MoPoE: 0.75, fixed);
    - ``"gaussian"``: :class:`~pyro_mmvae.models.decoders.GaussianDecoder` with ``scale``;
    - ``"bernoulli"``: :class:`~pyro_mmvae.models.decoders.BernoulliDecoder` (the network's output
      are logits; for binary or [0, 1] images).

    ``hidden_dim`` adds a hidden linear layer to the encoder only (PolyMNIST: 512, whose decoder
    has none).
    """
    if likelihood not in ("laplace", "gaussian", "bernoulli"):
        raise ValueError(f"likelihood must be 'laplace', 'gaussian' or 'bernoulli', got "
                         f"{likelihood!r}")
    embedding_dim = 2 * latent_dim if embedding_dim is None else embedding_dim
    encoder = ConvImageEncoder(in_shape, embedding_dim, channels, hidden_dim, final_size)
    net = ConvImageDecoder(latent_dim, in_shape, tuple(channels)[::-1], final_size=final_size,
                           output_activation=output_activation)
    if likelihood == "bernoulli":
        return encoder, BernoulliDecoder(net)
    family = LaplaceDecoder if likelihood == "laplace" else GaussianDecoder
    return encoder, family(net, scale=scale, learn_scale=learn_scale)


def text_modality(length: int, latent_dim: int, alphabet_size: int = 71,
                  embedding_dim: Optional[int] = None, *,
                  channels: int = 128) -> Tuple[nn.Module, nn.Module]:
    """A matching ``(encoder, decoder)`` pair for one-hot text ``(L, A)``.

    :class:`~pyro_mmvae.nn.TextEncoder` with ``embedding_dim`` outputs (default
    ``2 * latent_dim``) and :class:`~pyro_mmvae.models.decoders.CategoricalDecoder` over a
    :class:`TextDecoder` (event ``(L, A)``), as MoPoE's MNIST-SVHN-Text text modality.
    """
    embedding_dim = 2 * latent_dim if embedding_dim is None else embedding_dim
    encoder = TextEncoder(length, embedding_dim, alphabet_size, channels)
    return encoder, CategoricalDecoder(TextDecoder(latent_dim, length, alphabet_size, channels))
