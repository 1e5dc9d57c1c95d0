"""``MultimodalGuide``: modality encoders + an aggregator, as a Pyro guide program."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae.protocol import DATA_PLATE, LATENT_SITE, batch_size, full_mask, stack_mask


class MultimodalGuide(PyroModule):
    r"""Amortised guide ``q(z | x_S)`` for the multimodal protocol.

    Each modality ``m`` has an encoder ``encoders[m]: (B, ...) -> (B, E)``; their outputs are
    stacked in the order of ``encoders`` into ``(B, M, E)`` and handed with the mask to the
    ``aggregator`` (:class:`~guides.PoE`, :class:`~guides.MoE`, :class:`~guides.MoPoE`, or any
    module with the same call signature), which returns the distribution of ``z``.

    Inputs of modalities outside the mask are replaced by zeros before encoding, so nothing
    about a masked-out value (not even a NaN) can reach the guide. Masks may carry leading
    dimensions (stacked subsets); the encoders still run once per modality.

    Call it as a Pyro program, ``guide(data, mask)``: it samples site ``"z"`` inside
    ``pyro.plate("data", B)``. :meth:`distribution` returns ``q(z | x_S)`` without sampling.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], aggregator: nn.Module,
                 latent_site: str = LATENT_SITE):
        super().__init__()
        if not encoders:
            raise ValueError("MultimodalGuide needs at least one modality encoder")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.aggregator = aggregator
        self.latent_site = latent_site

    def _check(self, data, mask):
        unknown = sorted(set(data) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the guide has encoders for "
                             f"{self.modalities}")
        absent = [m for m in self.modalities if m not in data]
        if absent:
            raise ValueError(f"modality '{absent[0]}' has an encoder but no data; pass zeros "
                             "and mask it out")
        absent = [m for m in self.modalities if m not in mask]
        if absent:
            raise ValueError(f"modality '{absent[0]}' has no mask entry")

    def features(self, data, mask) -> torch.Tensor:
        """Encoder outputs ``(B, M, E)``; inputs never observed in ``mask`` are zeroed first."""
        encoders = self.encoders  # one PyroModule attribute access: one param registration
        feats = []
        for m in self.modalities:
            x = data[m]
            seen = mask[m].reshape(-1, x.shape[0]).any(0) if mask[m].dim() > 1 else mask[m]
            seen = seen.reshape(seen.shape + (1,) * (x.dim() - 1))
            feats.append(encoders[m](torch.where(seen, x, torch.zeros_like(x))))
        return torch.stack(feats, dim=-2)

    def distribution(self, data, mask: Optional[Mapping] = None):
        """``q(z | x_S)`` with batch shape ``mask.shape`` (``(..., B)``) and event ``(D,)``."""
        mask = full_mask(data) if mask is None else mask
        self._check(data, mask)
        return self.aggregator(self.features(data, mask), stack_mask(mask, self.modalities))

    def forward(self, data, mask: Optional[Mapping] = None):
        q = self.distribution(data, mask)
        with pyro.plate(DATA_PLATE, batch_size(data)):
            return pyro.sample(self.latent_site, q)
