"""Priors over the shared latent ``z``: modules returning a distribution with event ``(D,)``."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.distributions import Categorical, MixtureSameFamily, Normal
from pyro.ops.indexing import Vindex
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


class GaussianMixturePrior(nn.Module):
    r"""Learnable Gaussian-mixture prior with the optimal cluster factor (Hirt et al. §4.2,
    App. G).

    .. math:: p(c) = \mathrm{Cat}(\operatorname{softmax}(a)),\qquad
        p(z\mid c) = \mathcal N(\mu_c, \operatorname{diag} e^{2\ell_c}).

    With the structured guide :math:`q(z\mid x_S)\,q(c\mid z)` every bound contains
    :math:`f(z)=\sum_c q(c\mid z)[\log p(c)+\log p(z\mid c)-\log q(c\mid z)]` (eq. 17), which
    is maximised by :math:`q(c\mid z)=p(c\mid z)` with value :math:`\log p(z)=\log\sum_c
    \pi_c\,\mathcal N(z;\mu_c,\sigma_c)`. So with the optimal cluster factor the bounds simply
    use the marginal mixture density, which is what ``prior()`` returns
    (``MixtureSameFamily``; KLs against it are sampled, the prior receiving full gradients).
    The conditional term of the masked bound does not involve ``c`` at all.

    :param num_components: ``K``.
    :param latent_dim: ``D``.
    :param init_scale: standard deviation of the initial means and log-scales (the authors'
        Flax ``Embed`` table is small at initialisation).
    """

    def __init__(self, num_components: int, latent_dim: int, init_scale: float = None):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        std = init_scale if init_scale is not None else (2 * latent_dim * num_components) ** -0.5
        self.num_components, self.latent_dim = num_components, latent_dim
        self.logits = nn.Parameter(torch.ones(num_components))  # uniform weights
        self.locs = nn.Parameter(std * torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(std * torch.randn(num_components, latent_dim))

    def component_distribution(self):
        """``p(z | c)`` for every ``c``: batch ``(K,)``, event ``(D,)``."""
        return Normal(self.locs, self.log_scales.exp()).to_event(1)

    def forward(self):
        return MixtureSameFamily(Categorical(logits=self.logits), self.component_distribution())

    def cluster_log_posterior(self, z):
        r""":math:`\log p(c\mid z)` for ``z (..., D)``: ``(..., K)``."""
        joint = self.logits.log_softmax(-1) + self.component_distribution().log_prob(
            z.unsqueeze(-2))
        return joint.log_softmax(-1)

    def cluster_posterior(self, z):
        """Responsibilities ``p(c | z)`` for ``z (..., D)``: ``(..., K)``, rows summing to one."""
        return self.cluster_log_posterior(z).exp()

    def cluster_factor_bound(self, z, q_c):
        r"""Eq. 17, :math:`f(z)=\sum_c q(c\mid z)[\log p(c)+\log p(z\mid c)-\log q(c\mid z)]`,
        for any cluster factor ``q_c (..., K)`` (probabilities); it is at most
        :math:`\log p(z)`, with equality at ``q_c = cluster_posterior(z)``."""
        joint = self.logits.log_softmax(-1) + self.component_distribution().log_prob(
            z.unsqueeze(-2))
        log_q = torch.where(q_c > 0, q_c.log(), torch.zeros_like(q_c))
        return (q_c * (joint - log_q)).sum(-1)

    def enumerated_sample(self, name: str = "z"):
        """Sample ``"c"`` (enumerated in parallel) then ``z ~ p(z | c)``, for models trained
        with ``TraceEnum_ELBO``; the marginal form (``prior()``) is equivalent."""
        c = pyro.sample("c", Categorical(logits=self.logits), infer={"enumerate": "parallel"})
        return pyro.sample(name, Normal(Vindex(self.locs)[..., c, :],
                                        Vindex(self.log_scales)[..., c, :].exp()).to_event(1))

    @torch.no_grad()
    def assign_clusters(self, guide, data, mask=None, latent_site: str = "z"):
        """Hard cluster assignments ``(B,)``: ``argmax_c p(c | z)`` at the guide's mean of
        ``z`` given the observed modalities."""
        q = poutine.trace(guide).get_trace(data, mask).nodes[latent_site]["fn"]
        return self.cluster_log_posterior(q.mean).argmax(-1)
