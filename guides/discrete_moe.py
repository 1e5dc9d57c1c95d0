r"""A mixture-of-experts guide that samples its component as a discrete Pyro site, for
Pyro's own ``TraceGraph_ELBO`` (score-function gradients with a learned baseline).

**The guide.** For the observed modalities :math:`O` of a data point, gating weights
:math:`\pi_m(x)` over :math:`m\in O` (uniform by default — MMVAE's MoE, Shi et al. 2019 — or
a learned, data-dependent :class:`ExpertGate`), and the unimodal Gaussian experts
:math:`q_m(z\mid x_m)`:

.. math::
    c \sim \mathrm{Categorical}(\pi(x)) \ \text{at site "expert"},\qquad
    z \mid c \sim q_c(z\mid x_c)\ \text{(reparameterised) at site "z"},

so that the marginal of :math:`z` is :math:`q_{\rm MoE}(z\mid x)=\sum_{m\in O}\pi_m
q_m(z\mid x_m)`. Masked-out modalities have weight exactly zero and are never drawn (with
nothing observed, :math:`c` is the extra prior component :math:`\mathcal N(0, I)`, as for
:class:`~pyro_mmvae.guides.MoE`).

**The objective is the MoE ELBO, exactly.** The model has no site :math:`c`. With an ordinary
categorical density at :math:`c`, Pyro's ELBO would be :math:`\mathbb E[\log p(x,z)-\log
\pi_c-\log q_c(z)] = \mathcal L_{\rm MoE} + H_q(c\mid z)`: *not* a lower bound (with identical
experts at the exact posterior it exceeds :math:`\log p(x)` by :math:`\log|O|`); a model-side
uniform :math:`r(c)` would turn it into the looser auxiliary bound :math:`\mathcal L_{\rm MoE}
+ H_q(c\mid z)-\log|O|`. Here instead

- the site ``"z"`` is scored with the full mixture density, :math:`\log q_{\rm MoE}(z\mid x)`
  (its value is drawn from component :math:`c`; :class:`ComponentDraw`), and
- the site ``"expert"`` carries :math:`\log\pi_c - \mathrm{stop\_grad}(\log\pi_c)`: value 0,
  gradient :math:`\nabla\log\pi_c` (:class:`ScoreFunctionCategorical`; marked
  ``is_auxiliary``),

so any Pyro ELBO estimates

.. math::
    \mathcal L_{\rm MoE}(x) = \mathbb E_{c\sim\pi,\ z\sim q_c}\big[f(z)\big],\qquad
    f(z) = \log p(x, z) - \log q_{\rm MoE}(z\mid x),

which equals :math:`\sum_m\pi_m\mathbb E_{q_m}[f]`, the stratified mixture bound
(``MixtureMultimodalELBO(masking="all", form="stratified")`` on :meth:`DiscreteMoEGuide.
mixture_guide`), and, the marginal of :math:`z` being :math:`q_{\rm MoE}`, the usual ELBO of the
MoE guide.

**Its gradient is unbiased.** With :math:`z=g_c(\epsilon;\phi)`,
:math:`\mathcal L=\sum_c\pi_c(\phi)\,\mathbb E_\epsilon[f_\phi(g_c(\epsilon;\phi))]`, so

.. math::
    \nabla\mathcal L = \mathbb E_{c,\epsilon}\Big[\big(f(z)-b(x)\big)\nabla\log\pi_c
        + \partial_z f(z)\,\partial z\Big]
        - \mathbb E_{z\sim q_{\rm MoE}}\big[\partial_\phi\log q_{\rm MoE}(z\mid x)\big].

The last term is zero (the expected score of :math:`q_{\rm MoE}`), so with ``stl=True`` (the
default: sticking the landing, Roeder et al. 2017) the density at ``"z"`` is evaluated with
detached parameters and the term is dropped; :math:`b(x)` is any baseline that does not depend
on :math:`c`, since :math:`\mathbb E_c[\nabla\log\pi_c]=0`. ``TraceGraph_ELBO`` builds exactly
this surrogate (Schulman et al. 2015, stochastic computation graphs): the site ``"expert"``
is not reparameterisable, so it gets the REINFORCE term ``score * (downstream_cost -
baseline)``, its downstream cost being the terms whose values depend on :math:`c` (found by
provenance tracking): :math:`\log p(x_O\mid z)+\log p(z)-\log q_{\rm MoE}(z\mid x)`, per data
point, i.e. :math:`f(z)`. The baseline is Pyro's: a learned ``nn_baseline``
(:class:`MoEBaseline`, fitted to :math:`f` by the squared error Pyro adds to the loss) or a
decaying average. With fixed weights (``gate=None``) the score term vanishes and the guide
trains like a reparameterised MoE.

The same guide runs under ``Trace_ELBO`` (no Rao-Blackwellisation over data points). The
library's own bounds differentiate through the samples and refuse its discrete ``"expert"``
site with a message saying so: use :meth:`DiscreteMoEGuide.mixture_guide`, the equivalent
continuous-mixture guide sharing every module.

References: Shi et al. 2019 (MMVAE); Schulman et al. 2015 (gradient estimation using
stochastic computation graphs); Mnih & Gregor 2014 (learned baselines); Roeder et al. 2017
(STL).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import pyro
import torch
from pyro.distributions import Categorical, TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape, detach
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_mmvae.nn import MLP
from pyro_mmvae.protocol import LATENT_SITE, data_plate, full_mask, num_points, stack_mask

from .aggregators import check_scale, gaussian_experts
from .distributions import DiagNormalMixture
from .guide import MultimodalGuide

COMPONENT_SITE = "expert"


class ExpertGate(nn.Module):
    r"""Data-dependent gating logits: a shared MLP scores each expert's features,
    :math:`\text{logit}_m = \mathrm{MLP}(h_m)`, so the gate is permutation equivariant and a
    masked-out expert's features never reach another expert's weight.

    ``gate(features (..., B, M, E), mask (..., B, M)) -> logits (..., B, M)``.
    """

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (32,)):
        super().__init__()
        self.net = MLP(feature_dim, hidden, 1)

    def forward(self, features, mask):
        return self.net(features).squeeze(-1)


class GatedMoE(nn.Module):
    r"""Mixture of the unimodal Gaussian experts of S with gating weights:

    .. math:: q(z\mid x_S) = \sum_{m\in S}\pi_m(x)\,q(z\mid x_m),\qquad
        \pi = \operatorname{softmax}_{m\in S}(\text{logit}_m),

    uniform (exactly :class:`~pyro_mmvae.guides.MoE`) when ``gate`` is None, else the logits of
    ``gate``. Components are the ``M`` experts then the prior :math:`\mathcal N(0,I)`, which is on
    only where S is empty. Returns a :class:`~pyro_mmvae.guides.DiagNormalMixture`;
    :meth:`components` gives its ``(logits, locs, scales)``.

    Each expert's features ``(mu, r)`` (``2D``) are parameterised as in
    :func:`~pyro_mmvae.guides.aggregators.gaussian_experts`: ``scale="softplus"`` (default),
    :math:`\sigma = \text{min\_scale} + \log(1+e^{r})`, or ``scale="logvar"``,
    :math:`\sigma = \text{min\_scale} + e^{r/2}` (:math:`r = \log\sigma_0^2`).
    """

    def __init__(self, gate: Optional[nn.Module] = None, min_scale: float = 1e-3,
                 scale: str = "softplus"):
        super().__init__()
        self.gate = gate
        self.min_scale = min_scale
        self.scale = check_scale(scale)

    def components(self, features, mask):
        """``logits (..., B, M+1)``, ``locs`` and ``scales (..., B, M+1, D)``."""
        loc, precision = gaussian_experts(features, self.min_scale, self.scale)  # (B, M, D)
        scale = precision.rsqrt()
        batch = mask.shape[:-1]
        d = loc.shape[-1]
        if self.gate is None:
            raw = torch.zeros(mask.shape, dtype=loc.dtype, device=loc.device)
        else:
            raw = self.gate(features, mask).expand(mask.shape)
        empty = ~mask.any(-1, keepdim=True)  # (..., B, 1)
        logits = torch.cat([raw.masked_fill(~mask, -float("inf")),
                            torch.zeros_like(raw[..., :1]).masked_fill(~empty, -float("inf"))],
                           dim=-1)
        locs = torch.cat([loc.expand(batch + loc.shape[-2:]),
                          loc.new_zeros(batch + (1, d))], dim=-2)
        scales = torch.cat([scale.expand(batch + scale.shape[-2:]),
                            scale.new_ones(batch + (1, d))], dim=-2)
        return logits, locs, scales

    def forward(self, features, mask):
        return DiagNormalMixture(*self.components(features, mask))


class ScoreFunctionCategorical(Categorical):
    r"""A categorical whose ``log_prob`` is :math:`\log\pi_c-\mathrm{stop\_grad}(\log\pi_c)`:
    value 0, gradient :math:`\nabla\log\pi_c`. Sampling is unchanged. It lets a guide choose a
    mixture component at a discrete site that contributes nothing to the ELBO's value but
    carries the score function of the choice (see :mod:`pyro_mmvae.guides.discrete_moe`)."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ScoreFunctionCategorical, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        lp = super().log_prob(value)
        return lp - lp.detach()


class ComponentDraw(TorchDistribution):
    r"""``z`` drawn from component ``component`` of a diagonal-Gaussian mixture, scored with the
    mixture's density:

    - ``rsample()`` :math:`=\mu_c+\sigma_c\epsilon` (reparameterised in the component's
      parameters);
    - ``log_prob(z)`` :math:`=\log\sum_k\pi_k\mathcal N(z;\mu_k,\sigma_k^2)`, with detached
      parameters when ``stl`` (the path gradient through ``z`` is kept).

    :param mixture: a :class:`~pyro_mmvae.guides.DiagNormalMixture` (batch ``(..., B)``).
    :param component: long tensor of component indices broadcasting with its batch shape.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mixture: DiagNormalMixture, component: torch.Tensor, stl: bool = True,
                 validate_args=None):
        self.mixture = mixture
        self.component = component
        self.stl = stl
        batch_shape = torch.Size(broadcast_shape(mixture.batch_shape, component.shape))
        super().__init__(batch_shape, mixture.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return ComponentDraw(self.mixture.expand(batch_shape),
                             self.component.expand(batch_shape), self.stl)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)  # sample + batch + (D,)
        k = self.component.expand(shape[:-1])
        index = k[..., None, None].expand(*k.shape, 1, shape[-1])
        locs = self.mixture.locs.expand(shape[:-1] + self.mixture.locs.shape[-2:])
        scales = self.mixture.scales.expand(shape[:-1] + self.mixture.scales.shape[-2:])
        loc = locs.gather(-2, index).squeeze(-2)
        scale = scales.gather(-2, index).squeeze(-2)
        return loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    def log_prob(self, value):
        mixture = detach(self.mixture) if self.stl else self.mixture
        return mixture.log_prob(value)


class MoEBaseline(nn.Module):
    r"""A learned REINFORCE baseline :math:`b(x)` for :class:`DiscreteMoEGuide`: an MLP on the
    (detached) expert features of the observed modalities and the mask.

    ``baseline(inputs (..., B, M * (E + 1))) -> (..., B)``, the inputs being what
    :meth:`DiscreteMoEGuide.baseline_input` builds.
    """

    def __init__(self, num_modalities: int, feature_dim: int, hidden: Sequence[int] = (32,)):
        super().__init__()
        self.net = MLP(num_modalities * (feature_dim + 1), hidden, 1)

    def forward(self, inputs):
        return self.net(inputs).squeeze(-1)


Baseline = Union[None, str, nn.Module]


def plate_batch_shape(shape: torch.Size) -> torch.Size:
    """``shape`` broadcast against the enclosing vectorised plates (the batch shape a sample
    site gets there)."""
    dims = list(shape)
    for frame in get_plates():
        if frame.dim is None:
            continue
        if len(dims) < -frame.dim:
            dims = [1] * (-frame.dim - len(dims)) + dims
        if dims[frame.dim] == 1:
            dims[frame.dim] = frame.size
    return torch.Size(dims)


class DiscreteMoEGuide(MultimodalGuide):
    r"""Mixture-of-experts guide sampling its component at a discrete site (module docstring):
    ``c ~ Categorical(pi(x))`` over the observed modalities at ``component_site``, then ``z``
    from expert ``c``, scored with the full mixture density — so ``TraceGraph_ELBO`` optimises
    the MoE ELBO exactly, with a score-function gradient for the gate.

    :param encoders: ``{modality: encoder}`` with Gaussian-expert outputs ``2D`` (as for
        :class:`~pyro_mmvae.guides.MoE`).
    :param gate: None (uniform weights over the observed modalities, MMVAE) or a module
        ``(features (..., B, M, E), mask) -> logits (..., B, M)`` such as :class:`ExpertGate`.
    :param component_site: name of the discrete site (default ``"expert"``; not ``"c"``, which
        the mixture prior uses for clusters).
    :param baseline: variance reduction for the score-function term: None, ``"decaying_avg"``
        (Pyro's decaying average of the downstream cost; needs a fixed batch size), or a
        module used as Pyro's ``nn_baseline`` on :meth:`baseline_input` (e.g.
        :class:`MoEBaseline`); Pyro trains it by least squares on the downstream cost.
    :param stl: evaluate the density at ``"z"`` with detached parameters (unbiased, lower
        variance).
    :param min_scale, scale: the experts' floor and parameterisation, ``"softplus"``
        (default) or ``"logvar"`` (:class:`GatedMoE`).
    :param name: root of the guide's parameter names in Pyro's param store, as for
        :class:`~pyro_mmvae.guides.MultimodalGuide` (default: the first free of ``""``,
        ``"DiscreteMoEGuide_1"``, ... at the first call); :meth:`mixture_guide` shares it.

    ``SVI(model, guide, optim, TraceGraph_ELBO())`` trains it with any protocol model; with
    ``TraceGraph_ELBO(num_particles=P, vectorize_particles=True, max_plate_nesting=1)`` the
    particles are vectorised. :meth:`distribution` returns :math:`q_{\rm MoE}(z\mid x_S)`
    and :meth:`mixture_guide` the continuous-mixture guide with the same modules, for the
    library's bounds and evaluators.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], gate: Optional[nn.Module] = None, *,
                 component_site: str = COMPONENT_SITE, baseline: Baseline = None,
                 stl: bool = True, latent_site: str = LATENT_SITE, min_scale: float = 1e-3,
                 scale: str = "softplus", name: Optional[str] = None):
        super().__init__(encoders, GatedMoE(gate, min_scale, scale), latent_site=latent_site,
                         name=name)
        if component_site == latent_site:
            raise ValueError(f"component_site and latent_site must differ, both are "
                             f"{latent_site!r}")
        if isinstance(baseline, str) and baseline != "decaying_avg":
            raise ValueError(f"baseline must be None, 'decaying_avg' or an nn.Module, got "
                             f"{baseline!r}")
        if baseline is not None and not isinstance(baseline, (str, nn.Module)):
            raise ValueError(f"baseline must be None, 'decaying_avg' or an nn.Module, got "
                             f"{type(baseline).__name__}")
        self.component_site = component_site
        self.baseline = baseline
        self.stl = stl

    def mixture_guide(self) -> MultimodalGuide:
        """The continuous-mixture guide :math:`q_{\\rm MoE}(z\\mid x_S)` sharing this guide's
        encoders and gate (same parameters, under this guide's names in the param store), for
        the library's bounds and evaluators."""
        guide = MultimodalGuide(self.encoders, self.aggregator, latent_site=self.latent_site)
        guide._share_names_with(self)
        return guide

    @staticmethod
    def baseline_input(features, mask):
        """``(..., B, M * (E + 1))``: the detached features of the observed experts (zeros
        elsewhere) and the mask, flattened."""
        on = mask.unsqueeze(-1).to(features.dtype)
        feats = features.detach().expand(mask.shape + features.shape[-1:])
        return torch.cat([feats * on, on], dim=-1).flatten(-2)

    def _infer(self, features, mask, batch_shape):
        infer = {"is_auxiliary": True}
        baseline = self.baseline
        if baseline == "decaying_avg":
            infer["baseline"] = {"use_decaying_avg_baseline": True}
        elif baseline is not None:
            inputs = self.baseline_input(features, mask)
            shape = plate_batch_shape(batch_shape)
            infer["baseline"] = {"nn_baseline": baseline,
                                 "nn_baseline_input": inputs.expand(shape + inputs.shape[-1:])}
        return infer

    def forward(self, data, mask: Optional[Mapping] = None):
        mask = full_mask(data) if mask is None else mask
        self._check(data, mask)
        features = self.features(data, mask)
        stacked = stack_mask(mask, self.modalities)
        logits, locs, scales = self.aggregator.components(features, stacked)
        with data_plate(num_points(data, mask)):
            infer = self._infer(features, stacked, logits.shape[:-1])
            c = pyro.sample(self.component_site, ScoreFunctionCategorical(logits=logits),
                            infer=infer)
            mixture = DiagNormalMixture(logits, locs, scales)
            z = pyro.sample(self.latent_site, ComponentDraw(mixture, c, self.stl))
            return {self.component_site: c, self.latent_site: z}
