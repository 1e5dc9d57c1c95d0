"""``MultimodalModel``: a prior over ``z`` and one decoder per modality, as a Pyro model."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
from pyro.nn import PyroModule
from torch import nn

import torch
from pyro.distributions import Normal

from pyro_mmvae.protocol import (DATA_PLATE, LATENT_SITE, batch_size, full_mask, observe,
                                 private_site)


def concat_latents(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate latents ``(..., D_i)`` along the last dim, broadcasting leading dims."""
    shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(shape + p.shape[-1:]) for p in parts], dim=-1)


class MultimodalModel(PyroModule):
    r"""Generative model :math:`p(z)\prod_m p(x_m\mid z)` following the multimodal protocol.

    ``model(data, mask)`` samples ``"z"`` from ``prior()`` inside ``pyro.plate("data", B)`` and
    observes every modality at ``"x_<m>"`` under ``poutine.mask(mask[m])``. Modalities absent
    from ``data`` are sampled, which is how unconditional generation works:
    ``model({}, num_samples=n)`` draws ``n`` joint samples (``poutine.uncondition`` samples
    every modality even when data is given).

    With ``private_dim`` the model has private latents (seed 004 eq. 8):
    :math:`p(z)\prod_m p(w_m)\,p(x_m\mid z, w_m)` with :math:`w_m\sim\mathcal N(0, I)` at
    site ``"w_<m>"`` and each decoder fed the concatenation ``[z, w_m]``.

    :param prior: module returning the distribution of ``z`` (event ``(D,)``), e.g.
        :class:`~pyro_mmvae.models.StandardNormalPrior`.
    :param decoders: ``{modality: decoder}``, each ``decoder(z)`` (or ``decoder([z, w_m])``)
        returning ``p(x_m | z)``.
    :param private_dim: size of every private latent (None: shared latent only).
    :param enumerate_clusters: with a :class:`~pyro_mmvae.models.GaussianMixturePrior`, write the cluster
        ``"c"`` explicitly and enumerate it (for ``TraceEnum_ELBO``); equivalent to the default
        marginal form, which every bound accepts.
    """

    def __init__(self, prior: nn.Module, decoders: Mapping[str, nn.Module],
                 latent_site: str = LATENT_SITE, private_dim: Optional[int] = None,
                 enumerate_clusters: bool = False):
        super().__init__()
        self.modalities = list(decoders)
        self.prior = prior
        self.decoders = nn.ModuleDict(dict(decoders))
        self.latent_site = latent_site
        self.private_dim = private_dim
        self.enumerate_clusters = enumerate_clusters

    def forward(self, data, mask: Optional[Mapping] = None, num_samples: Optional[int] = None):
        unknown = sorted(set(data) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the model has decoders for "
                             f"{self.modalities}")
        if not data and num_samples is None:
            raise ValueError("pass data, or num_samples to generate from the prior")
        n = batch_size(data) if data else num_samples
        mask = (full_mask(data) if data else {}) if mask is None else mask
        with pyro.plate(DATA_PLATE, n):
            if self.enumerate_clusters:
                z = self.prior.enumerated_sample(self.latent_site)
            else:
                z = pyro.sample(self.latent_site, self.prior())
            for m, decoder in self.decoders.items():
                code = z
                if self.private_dim:
                    w = pyro.sample(private_site(m), Normal(z.new_zeros(self.private_dim),
                                                            1.0).to_event(1))
                    code = concat_latents(z, w)
                observe(m, decoder(code), data, mask if m in mask else None)
        return z
