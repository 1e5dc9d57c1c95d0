r"""Encoder networks for images and text: one modality ``(B, ...) -> (B, E)`` features.

For the Gaussian experts of :class:`~pyro_mmvae.guides.PoE`, :class:`~pyro_mmvae.guides.MoE` and
:class:`~pyro_mmvae.guides.MoPoE` use ``out_dim = 2 * latent_dim`` (mean, unconstrained scale); for
the learnable aggregators (:class:`~pyro_mmvae.guides.SumPooling`,
:class:`~pyro_mmvae.guides.SelfAttention`) any feature size ``E``.

The architectures follow MoPoE (Sutter et al. 2021, App. C–D), generalised to
any size; the matching decoders are in :mod:`pyro_mmvae.models.networks`:

- :class:`ConvImageEncoder` is the PolyMNIST CNN (kernel 3, stride 2, padding 1 convolutions,
  then linear layers). The number of stride-2 convolutions is computed from the image size
  (halve until ``<= final_size``), so 16x16, 28x28, 32x32, 64x64 and odd sizes all work; at
  ``(3, 28, 28)`` with ``hidden_dim=512`` it is layer for layer the PolyMNIST encoder.
- :class:`TextEncoder` is the MoPoE character-level 1-D CNN over one-hot text ``(B, L, A)``; at
  ``L = 8`` it is layer for layer the MNIST-SVHN-Text text encoder.

Both also accept extra leading dims ``(..., B, ...)``; the guide passes ``(B, ...)`` only.
"""

from pyro_mmvae.nn import ConvImageEncoder, TextEncoder

__all__ = ["ConvImageEncoder", "TextEncoder"]
