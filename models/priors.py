"""Priors over the shared latent ``z``: modules returning a distribution with event ``(D,)``."""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from torch import nn


class StandardNormalPrior(nn.Module):
    r"""The fixed prior :math:`p(z)=\mathcal N(0, I_D)`; ``prior()`` returns it with event
    shape ``(D,)`` (the data plate broadcasts it over the batch)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return Normal(self.loc, self.scale).to_event(1)
