"""Guide distributions: diagonal-Gaussian mixtures for MoE and MoPoE guides.

Shapes use one alphabet: ``S`` particles, ``B`` batch, ``K`` mixture components, ``D`` latent.
"""

from __future__ import annotations

import torch
from pyro.distributions import Categorical, Normal, TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape


class DiagNormalMixture(TorchDistribution):
    r"""Mixture of diagonal Gaussians over :math:`\mathbb R^D`,

    .. math:: q(z) = \sum_{k=1}^K \pi_k\,\mathcal N(z;\mu_k,\operatorname{diag}\sigma_k^2),
        \qquad \pi = \operatorname{softmax}(\text{logits}).

    Components with logit ``-inf`` are switched off exactly: they never get sampled, add
    nothing to :meth:`log_prob` and pass no gradient (this is how masked-out modalities
    leave a MoE or MoPoE guide).

    :param logits: ``(..., K)`` mixture logits (``-inf`` allowed, at least one finite per row).
    :param locs: ``(..., K, D)`` component means.
    :param scales: ``(..., K, D)`` component standard deviations.

    ``rsample`` returns exact mixture samples with implicit reparameterisation gradients (Figurnov
    et al. 2018) that reach the means, the scales and the logits, so learned mixture weights
    (:class:`~pyro_mmvae.guides.SumPoolingMixture`) train by the pathwise estimator. The multimodal
    bounds can also stratify over components through :attr:`component_distribution` and
    :attr:`mixture_distribution` (``MixtureMultimodalELBO(form="stratified")``).
    """

    arg_constraints = {"logits": constraints.real, "locs": constraints.real,
                       "scales": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, logits, locs, scales, validate_args=None):
        if locs.dim() < 2:
            raise ValueError(f"locs must have shape (..., K, D), got {tuple(locs.shape)}")
        batch_shape = torch.Size(broadcast_shape(logits.shape[:-1], locs.shape[:-2],
                                                 scales.shape[:-2]))
        k, d = locs.shape[-2:]
        if logits.shape[-1] != k:
            raise ValueError(f"logits have {logits.shape[-1]} components but locs have {k}")
        self.logits = logits.expand(batch_shape + (k,))
        self.locs = locs.expand(batch_shape + (k, d))
        self.scales = scales.expand(batch_shape + (k, d))
        super().__init__(batch_shape, torch.Size((d,)), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagNormalMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        k, d = self.locs.shape[-2:]
        new.logits = self.logits.expand(batch_shape + (k,))
        new.locs = self.locs.expand(batch_shape + (k, d))
        new.scales = self.scales.expand(batch_shape + (k, d))
        super(DiagNormalMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        return new

    def pad_rows(self, shard, dim: int) -> "DiagNormalMixture":
        """This mixture widened to a whole batch around a shard's rows (data points at ``dim``
        of the draws), for :func:`pyro_mmvae.sharding.sharded`."""
        from pyro_mmvae.sharding import pad_rows

        return DiagNormalMixture(pad_rows(self.logits, dim, shard),
                                 pad_rows(self.locs, dim - 1, shard),
                                 pad_rows(self.scales, dim - 1, shard, 1.0))

    @property
    def num_components(self) -> int:
        return self.locs.shape[-2]

    @property
    def mixture_distribution(self) -> Categorical:
        """``Categorical`` over components, batch shape ``(...)``."""
        return Categorical(logits=self.logits, validate_args=False)  # -inf logits are legal

    @property
    def component_distribution(self):
        """Independent diagonal Normals with batch shape ``(..., K)`` and event ``(D,)``."""
        return Normal(self.locs, self.scales).to_event(1)

    @property
    def mean(self):
        w = self.logits.softmax(-1).unsqueeze(-1)
        return (w * self.locs).sum(-2)

    @property
    def variance(self):
        w = self.logits.softmax(-1).unsqueeze(-1)
        second = (w * (self.scales ** 2 + self.locs ** 2)).sum(-2)
        return second - self.mean ** 2

    def log_prob(self, value):
        # value: (..., D) -> (..., 1, D) against components (..., K, D)
        comp = Normal(self.locs, self.scales).log_prob(value.unsqueeze(-2)).sum(-1)  # (..., K)
        log_w = self.logits.log_softmax(-1)
        # -inf weights must not meet non-finite component terms: where() keeps them exact.
        joint = torch.where(log_w > -float("inf"), log_w + comp,
                            torch.full_like(comp, -float("inf")))
        return joint.logsumexp(-1)

    def rsample(self, sample_shape=torch.Size()):
        r"""Draw a component, then a Gaussian sample from it; differentiate implicitly.

        The value is an exact mixture sample. Its gradient is the implicit
        reparameterisation gradient (Figurnov et al. 2018) through the multivariate
        distributional transform: coordinate ``d`` has the conditional CDF
        :math:`F_d(z_d\mid z_{<d})=\sum_k w_k(z_{<d})\,\Phi((z_d-\mu_{kd})/\sigma_{kd})` with
        :math:`w_k(z_{<d})\propto\pi_k\prod_{j<d}\mathcal N(z_j;\mu_{kj},\sigma_{kj})`, and
        :math:`\partial z_d/\partial\theta = -(\partial F_d/\partial\theta)/q(z_d\mid z_{<d})`,
        chained through the earlier coordinates. Gradients reach the means, the scales **and**
        the logits. When the logits need no gradient (MoE and MoPoE weights are fixed by the
        mask) the reparameterised draw from the sampled component is used directly: its
        gradient is exact then, and it skips the sequential transform.
        """
        if not self.logits.requires_grad:
            # Weights fixed (MoE, MoPoE: set by the mask): the component draw's own pathwise
            # gradient is exact and avoids the sequential transform.
            return self._draw(sample_shape)
        with torch.no_grad():
            z = self._draw(sample_shape)
        return self._implicit(z)

    def _draw(self, sample_shape):
        shape = self._extended_shape(sample_shape)  # sample + batch + (D,)
        k = self.mixture_distribution.sample(sample_shape)  # sample + batch
        index = k[..., None, None].expand(*k.shape, 1, self.event_shape[0])
        locs = self.locs.expand(shape[:-1] + self.locs.shape[-2:])
        scales = self.scales.expand(shape[:-1] + self.scales.shape[-2:])
        loc = locs.gather(-2, index).squeeze(-2)
        scale = scales.gather(-2, index).squeeze(-2)
        return loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    def _implicit(self, z):
        """Surrogate with the value of ``z`` and the implicit gradient (see :meth:`rsample`)."""
        log_w = self.logits.log_softmax(-1)  # (..., K): log weights given z_{<d}
        coords = []
        for d in range(z.shape[-1]):  # the transform is sequential in the latent coordinates
            comp = Normal(self.locs[..., d], self.scales[..., d])  # batch (..., K)
            zd = z[..., d].unsqueeze(-1)  # (..., 1), detached value
            cdf = (log_w.exp() * comp.cdf(zd)).sum(-1)
            density = (log_w + comp.log_prob(zd)).logsumexp(-1).exp()
            tiny = torch.finfo(density.dtype).tiny
            coord = zd.squeeze(-1) - (cdf - cdf.detach()) / density.detach().clamp_min(tiny)
            coords.append(coord)
            # condition the weights on this coordinate (through the differentiable surrogate)
            log_w = (log_w + comp.log_prob(coord.unsqueeze(-1))).log_softmax(-1)
        return torch.stack(coords, dim=-1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)
