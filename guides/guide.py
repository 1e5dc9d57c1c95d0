"""``MultimodalGuide``: modality encoders + an aggregator, as a Pyro guide program."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import Normal
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae.protocol import (DATA_PLATE, LATENT_SITE, batch_size, full_mask, private_site,
                                 stack_mask)


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

    **Private latents.** With a ``private`` head (:class:`~guides.IndependentPrivate`,
    :class:`~guides.PooledPrivate`, :class:`~guides.AttentionPrivate`) the guide then samples
    ``"w_<m>"`` for every modality from ``q(w_m | z, x_S)`` when ``m`` is in S and from the prior
    :math:`\mathcal N(0, I)` otherwise (seed 004 eq. 10). ``shared_features`` feeds only the
    first that many features to the aggregator (PE-PoE: the shared expert, the rest being the
    private expert).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], aggregator: nn.Module,
                 latent_site: str = LATENT_SITE, private: Optional[nn.Module] = None,
                 shared_features: Optional[int] = None):
        super().__init__()
        if not encoders:
            raise ValueError("MultimodalGuide needs at least one modality encoder")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.aggregator = aggregator
        self.latent_site = latent_site
        self.private = private
        self.shared_features = shared_features

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
        return self._shared(self.features(data, mask), stack_mask(mask, self.modalities))

    def _shared(self, features, mask):
        if self.shared_features is not None:
            features = features[..., :self.shared_features]
        return self.aggregator(features, mask)

    def forward(self, data, mask: Optional[Mapping] = None):
        mask = full_mask(data) if mask is None else mask
        self._check(data, mask)
        features = self.features(data, mask)
        stacked = stack_mask(mask, self.modalities)
        with pyro.plate(DATA_PLATE, batch_size(data)):
            z = pyro.sample(self.latent_site, self._shared(features, stacked))
            if self.private is None:
                return z
            loc, scale = self.private(features, stacked, z)  # (..., B, M, D_w)
            on = stacked.unsqueeze(-1)
            loc = torch.where(on, loc, torch.zeros_like(loc))
            scale = torch.where(on, scale, torch.ones_like(scale))
            for i, m in enumerate(self.modalities):
                pyro.sample(private_site(m), Normal(loc[..., i, :], scale[..., i, :]).to_event(1))
            return z
