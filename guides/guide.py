"""``MultimodalGuide``: modality encoders + an aggregator, as a Pyro guide program."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import Normal
from pyro.nn import PyroModule
from torch import nn
from torch.func import functional_call

from pyro_mmvae.protocol import (DATA_PLATE, LATENT_SITE, STL_FN, batch_size, full_mask,
                                 private_site, stack_mask)


class MultimodalGuide(PyroModule):
    r"""Amortised guide ``q(z | x_S)`` for the multimodal protocol.

    Each modality ``m`` has an encoder ``encoders[m]: (B, ...) -> (B, E)``; their outputs are
    stacked in the order of ``encoders`` into ``(B, M, E)`` and handed with the mask to the
    ``aggregator`` (:class:`~pyro_mmvae.guides.PoE`, :class:`~pyro_mmvae.guides.MoE`, :class:`~pyro_mmvae.guides.MoPoE`, or any
    module with the same call signature), which returns the distribution of ``z``.

    Inputs of modalities outside the mask are replaced by zeros before encoding, so nothing
    about a masked-out value (not even a NaN) can reach the guide. Masks may carry leading
    dimensions (stacked subsets); the encoders still run once per modality.

    Call it as a Pyro program, ``guide(data, mask)``: it samples site ``"z"`` inside
    ``pyro.plate("data", B)``. :meth:`distribution` returns ``q(z | x_S)`` without sampling.

    **Private latents.** With a ``private`` head (:class:`~pyro_mmvae.guides.IndependentPrivate`,
    :class:`~pyro_mmvae.guides.PooledPrivate`, :class:`~pyro_mmvae.guides.AttentionPrivate`) the guide then samples
    ``"w_<m>"`` for every modality from ``q(w_m | z, x_S)`` when ``m`` is in S and from the prior
    :math:`\mathcal N(0, I)` otherwise (seed 004 eq. 10). ``shared_features`` feeds only the
    first that many features to the aggregator (PE-PoE: the shared expert, the rest being the
    private expert). Each private site records in its ``infer`` dict (key
    :data:`~pyro_mmvae.protocol.STL_FN`) how to rebuild ``q(w_m | z, x_S)`` with detached
    parameters at a live ``z`` (:func:`detached_private`), the density the STL and DReG
    estimators need.
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
            head = self.private
            if head is None:
                return z
            private = private_distributions(*head(features, stacked, z), stacked)
            stl = detached_private(head, features, stacked, z, self.latent_site)
            for i, m in enumerate(self.modalities):
                pyro.sample(private_site(m), private[i],
                            infer={STL_FN: lambda values, i=i: stl(values)[i]})
            return z


def private_distributions(loc, scale, stacked):
    r"""``[q(w_m | z, x_S)]`` in modality order from the head's ``loc, scale (..., B, M, D_w)``:
    :math:`\mathcal N(\mu_m, \sigma_m)` where ``stacked (..., B, M)`` is True, the prior
    :math:`\mathcal N(0, I)` elsewhere."""
    on = stacked.unsqueeze(-1)
    loc = torch.where(on, loc, torch.zeros_like(loc))
    scale = torch.where(on, scale, torch.ones_like(scale))
    return [Normal(loc[..., i, :], scale[..., i, :]).to_event(1) for i in range(loc.shape[-2])]


def detached_private(head: nn.Module, features, stacked, z, latent_site: str):
    r"""The private sites' sticking-the-landing densities (the guide's ``infer[STL_FN]``).

    Returns ``values -> [q(w_m | z, x_S)]`` with the head's parameters and the encoder features
    detached but the shared sample live, :math:`\mathcal N(\mu_{\bar\phi}(z),
    \sigma_{\bar\phi}(z))` with :math:`\bar\phi=\mathrm{stop\_grad}(\phi)` and :math:`z` =
    ``values[latent_site]`` (default: the guide's own sample). Detaching :math:`\mu, \sigma`
    as tensors would also cut the path :math:`\partial_z\log q(w\mid z)\,\partial_\phi z`,
    which STL keeps and DReG needs (:func:`pyro_mmvae.infer.traces.stl_distribution`). The
    head is re-run with ``torch.func.functional_call``, once per value of :math:`z`.
    """
    features = features.detach()
    cache = {}

    def distributions(values):
        zv = values.get(latent_site, z)
        if cache.get("z") is not zv:
            params = {name: p.detach() for name, p in head.named_parameters()}
            loc, scale = functional_call(head, params, (features, stacked, zv))
            cache.update(z=zv, dists=private_distributions(loc, scale, stacked))
        return cache["dists"]

    return distributions
