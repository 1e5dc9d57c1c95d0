"""Modality encoders: modules mapping one modality ``(B, ...)`` to features ``(B, E)``."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from pyro_mmvae.nn import MLP


class MLPEncoder(MLP):
    """MLP encoder on flat inputs ``(B, in_dim) -> (B, out_dim)``.

    For the Gaussian experts of :class:`~pyro_mmvae.guides.PoE`, :class:`~pyro_mmvae.guides.MoE` and
    :class:`~pyro_mmvae.guides.MoPoE` use ``out_dim = 2 * latent_dim`` (mean, unconstrained scale);
    see :func:`expert_encoder`.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: type = nn.ReLU):
        super().__init__(in_dim, hidden, out_dim, activation)


def expert_encoder(in_dim: int, latent_dim: int, hidden: Sequence[int] = (256, 256)):
    """A Gaussian-expert encoder ``x -> (mean, raw scale)`` with ``2 * latent_dim`` outputs."""
    return MLPEncoder(in_dim, 2 * latent_dim, hidden)
