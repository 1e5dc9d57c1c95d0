r"""The objectives of multi-source neural variational inference (MSNVI).

Kurle, Günnemann and van der Smagt, *Multi-Source Neural Variational Inference*, AAAI 2019
(arXiv:1811.04451), §3-4. Each source :math:`m` has its own belief :math:`q_m(z\mid x_m)`, a
full posterior approximation (it contains the prior), and the generative model scores every
*observation* :math:`p(x\mid z)=\prod_o p(x_o\mid z)`. With :math:`K` importance samples
(``num_particles``, 16 in the paper) and :math:`w = p(x\mid z)\,p(z) / q(z)`:

.. math::
    \mathcal L_{\rm ind} &= \sum_m \pi_m\,\mathbb E_{z_{1:K}\sim q_m}
        \Big[\log\frac1K\sum_k \frac{p(x\mid z_k)\,p(z_k)}{q_m(z_k\mid x_m)}\Big]
        &\text{(eq. 1)}\\
    \mathcal L_{\rm MoE} &= \sum_m \pi_m\,\mathbb E_{z_{1:K}\sim q_m}
        \Big[\log\frac1K\sum_k \frac{p(x\mid z_k)\,p(z_k)}{\sum_{m'}\pi_{m'}
        q_{m'}(z_k\mid x_{m'})}\Big] &\text{(§4, stratified)}\\
    \mathcal L_{\rm PoE} &= \mathbb E_{z_{1:K}\sim q_{\rm PoE}}
        \Big[\log\frac1K\sum_k \frac{p(x\mid z_k)\,p(z_k)}{q_{\rm PoE}(z_k\mid x)}\Big],\quad
        q_{\rm PoE}\propto p(z)^{1-M}\prod_m q_m &\text{(eqs. 3, 4)}\\
    \mathcal L_{\rm hybrid} &= \lambda_1\mathcal L_{\rm ind} + \lambda_2\mathcal L_{\rm PoE}
        &\text{(eq. 5)}

Every one is a lower bound on :math:`\log p(x)` (Jensen, stratum by stratum); with
:math:`K=1` each is the corresponding ELBO. The paper uses :math:`\pi_m=1/M` and
:math:`\lambda_1=\lambda_2=\tfrac12`.

**Sources and observations.** A modality may be a source only (encoded, never generated:
MNIST-NO's noisy copies, the pendulum's cameras), an observation only (generated, never
encoded: the clean digit, the pendulum's :math:`(x, y)`), or both. The bound takes the sources
from the guide (its ``modalities``, the names of its encoders; or ``sources=``) and the
observations from the model (its ``modalities``, the names of its decoders; or
``observations=``); ``data`` and ``mask`` hold both. The guide is called with the sources'
data only, the model with the observations' only. The beliefs are the guide's distributions for
the one-source subsets and :math:`q_{\rm PoE}` its distribution for all observed sources, so
``MultimodalGuide(encoders, PoE(prior_expert="divide"))`` gives exactly the paper's fusion
(eq. 3), and any other aggregator its own.

Missing data: the weights :math:`\pi` are renormalised over the sources observed at each data
point, the PoE fuses the observed ones, and only observed observations are scored; every data
point needs at least one observed source.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from pyro import poutine
from pyro.distributions import Categorical, Normal
from pyro.distributions.util import detach

from pyro_mmvae.protocol import check_weights, unstack_mask

from .base import MultimodalELBO
from .stratified_dreg import stratified_dreg
from .traces import (check_scorable, latent_sites, latent_values, local_latents, log_mean_exp,
                     prior_factors, rate, reconstructions, site_log_prob, total, trace_guide,
                     trace_model)

Objective = Literal["ind", "moe", "poe", "hybrid"]
OBJECTIVES = ("ind", "moe", "poe", "hybrid")


class MultiSourceELBO(MultimodalELBO):
    r"""MSNVI's :math:`\mathcal L_{\rm ind}`, :math:`\mathcal L_{\rm MoE}`,
    :math:`\mathcal L_{\rm PoE}` and :math:`\mathcal L_{\rm hybrid}` (module docstring).

    All beliefs are drawn in **one** guide call (the one-source subsets and the all-sources
    subset stacked on a ``"subsets"`` plate) and scored in **one** model call.

    :param num_particles: :math:`K` importance samples per belief (default 16, the paper's).
    :param objective: ``"ind"`` (default), ``"moe"``, ``"poe"`` or ``"hybrid"``.
    :param source_weights: :math:`\pi`, ``{source: weight}`` (non-negative, renormalised over
        the observed sources of each data point); default uniform, :math:`1/M`.
    :param hybrid_weights: :math:`(\lambda_1, \lambda_2)` of ``"hybrid"``, default
        ``(0.5, 0.5)``.
    :param sources: the guide's sources (default: ``guide.modalities``, else all of data).
    :param observations: the model's observations (default: ``model.modalities``, else all
        of data).
    :param estimator: ``"dreg"`` (default; Tucker et al. 2019, for :math:`\mathcal L_{\rm
        MoE}` the unbiased stratified form of :mod:`pyro_mmvae.infer.stratified_dreg`) or
        ``"standard"`` (the IWAE gradient of Burda et al., the paper's).

    Other keyword arguments as :class:`~pyro_mmvae.infer.base.MultimodalELBO` (``beta``
    weighs :math:`\log p(z) - \log q(z)`, ``likelihood_weights``, ``vectorize``). ``terms()``
    returns per-datapoint ``elbo`` (the objective), the common ``reconstruction``, ``rate``
    (the sampled :math:`\log q - \log p`, the MoE's with the mixture density) and
    ``reconstruction/<m>`` (particle means weighted as the objective weighs its terms;
    :meth:`~pyro_mmvae.infer.base.MultimodalELBO.terms`), and those of ``ind``, ``moe``,
    ``poe`` it computed.
    """

    def __init__(self, num_particles: int = 16, *, objective: Objective = "ind",
                 source_weights=None, hybrid_weights: Sequence[float] = (0.5, 0.5),
                 sources: Optional[Sequence[str]] = None,
                 observations: Optional[Sequence[str]] = None,
                 estimator: Optional[str] = None, **kwargs):
        for key in ("iwae", "masking", "analytic_kl"):
            if key in kwargs:
                raise TypeError(f"MultiSourceELBO takes no {key!r}: its objectives are "
                                "importance-weighted over fixed sets of beliefs")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        super().__init__(num_particles, iwae=True, masking="all", analytic_kl=False,
                         estimator=estimator or "dreg", **kwargs)
        if self.estimator == "stl":
            raise ValueError("estimator='stl' is biased for importance-weighted bounds; use "
                             "'dreg' or 'standard'")
        self.objective = objective
        self.source_weights = check_weights(source_weights, "source_weights")
        hybrid = tuple(float(w) for w in hybrid_weights)
        if len(hybrid) != 2 or any(not w >= 0 for w in hybrid):
            raise ValueError(f"hybrid_weights must be two non-negative numbers (lambda_1, "
                             f"lambda_2), got {hybrid_weights!r}")
        self.hybrid_weights = hybrid
        self.sources = None if sources is None else list(sources)
        self.observations = None if observations is None else list(observations)

    # --- roles ------------------------------------------------------------------------------
    def roles(self, model, guide, modalities):
        """``(sources, observations)`` for this model, guide and data (class docstring)."""
        sources = self.sources or list(getattr(guide, "modalities", None) or modalities)
        observations = self.observations or list(getattr(model, "modalities", None)
                                                 or modalities)
        for role, names in (("source", sources), ("observation", observations)):
            unknown = [m for m in names if m not in modalities]
            if unknown:
                raise ValueError(f"{role} '{unknown[0]}' is not in data (modalities "
                                 f"{modalities})")
        unknown = sorted(set(self.source_weights) - set(sources))
        if unknown:
            raise ValueError(f"source_weights name '{unknown[0]}', which is not a source "
                             f"({sources})")
        return sources, observations

    # --- the bound --------------------------------------------------------------------------
    def _terms(self, model, guide, data, observed, modalities):
        sources, observations = self.roles(model, guide, modalities)
        col = {m: i for i, m in enumerate(modalities)}
        seen = observed[:, [col[m] for m in sources]]  # (B, M_s)
        if not bool(seen.any(-1).all()):
            idx = (~seen.any(-1)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"data points {idx} have no observed source ({sources}); every "
                             "data point needs one")
        ind = self.objective in ("ind", "moe", "hybrid")
        poe = self.objective in ("poe", "hybrid")
        m_s = len(sources)
        eye = torch.eye(m_s, dtype=torch.bool, device=seen.device)
        rows = ([seen.unsqueeze(0) & eye.unsqueeze(1)] if ind else []) + \
            ([seen.unsqueeze(0)] if poe else [])
        stacked = torch.cat(rows)  # (T, B, M_s): the one-source beliefs, then the PoE
        g_mask = unstack_mask(stacked.unsqueeze(1), sources)  # {m: (T, 1, B)}
        g_data = {m: data[m] for m in sources}
        for m in getattr(guide, "modalities", None) or ():  # the guide's other inputs: unused
            if m not in g_mask:
                g_mask[m] = torch.zeros_like(stacked[..., 0]).unsqueeze(1)
                if m in data:
                    g_data[m] = data[m]
        m_mask = {m: observed[:, col[m]] for m in observations}  # (B,)
        m_data = {m: data[m] for m in observations}
        plates = [("subsets", stacked.shape[0], self.outer_dim()), self.particle_plate()]
        moe = self.objective == "moe"
        dreg = self.estimator == "dreg"
        if not moe:
            guide_tr, model_tr = self.trace_stacked(model, guide, g_data, g_mask,
                                                    stacked.shape[0], model_data=m_data,
                                                    model_masks=m_mask)
        else:  # the model is scored at detached samples (stratified DReG): see _moe
            guide_tr = trace_guide(guide, g_data, g_mask, plates, vectorize=self.vectorized(guide))
            check_scorable(guide_tr)
        latents = local_latents(guide_tr)
        if moe and len(latents) != 1:
            raise NotImplementedError("objective='moe' supports a guide with one latent site")
        dtype = next((x.dtype for x in data.values() if x.is_floating_point()),
                     torch.get_default_dtype())
        pi = self._pi(sources, seen, dtype)  # (M_s, B), rows sum to 1 over observed sources
        dim = self.particle_dim
        l1, l2 = self.hybrid_weights if self.objective == "hybrid" else (1.0, 1.0)

        def reduce(t):  # the particle means weighted as the objective weighs its terms
            t = t.mean(dim)  # (T, B)
            parts = []
            if ind or moe:
                parts.append(l1 * torch.where(pi > 0, pi * t[:m_s], torch.zeros_like(pi)).sum(0))
            if poe:
                parts.append(l2 * t[-1])
            return sum(parts)
        if moe:
            value, recs, kl = self._moe(model, guide_tr, latents[0], m_data, m_mask, plates, pi)
            out = {"moe": value}
        else:
            recs = reconstructions(model_tr, latent_sites(guide_tr),
                                   self.likelihood_weights)  # {m: (T, K, B)}
            rec = total(recs.values())
            values = latent_values(guide_tr, latent_sites(guide_tr))
            kl = rate(guide_tr, model_tr, latents, False, dreg, values)  # log q - log p
            value = self.reduce_particles(rec - self.beta * kl,
                                          [values[n] for n in latents])  # (T, B)
            out = {}
            if ind:
                out["ind"] = (pi * value[:m_s]).sum(0)
            if poe:
                out["poe"] = value[-1]
        if self.objective == "hybrid":
            elbo = l1 * out["ind"] + l2 * out["poe"]
        else:
            elbo = out[self.objective]
        return {"elbo": elbo, **self.common_terms(reduce, recs, kl, modalities),
                **{k: v.detach() for k, v in out.items()}}

    def _pi(self, sources, seen, dtype):
        """:math:`\\pi` ``(M_s, B)`` in ``dtype``: the source weights renormalised over the
        observed sources of each data point."""
        w = torch.tensor([float(self.source_weights.get(m, 1.0)) for m in sources],
                         dtype=dtype, device=seen.device)
        w = w.unsqueeze(-1) * seen.transpose(0, 1).to(w.dtype)  # (M_s, B)
        total = w.sum(0, keepdim=True)
        if not bool((total > 0).all()):
            raise ValueError("source_weights give every observed source of some data point "
                             "weight 0")
        return w / total

    def _moe(self, model, guide_tr, name, data, mask, plates, pi):
        r""":math:`\mathcal L_{\rm MoE}` per data point ``(B,)``: the one-source beliefs'
        draws, each weighted by the mixture density :math:`\sum_{m'}\pi_{m'}q_{m'}`."""
        site = guide_tr.nodes[name]
        q = site["fn"]  # batch (M, K, B): the beliefs on the subsets plate
        z = site["value"]  # (M, K, B, D)
        dreg = self.estimator == "dreg"
        z_in = z.detach().requires_grad_(z.requires_grad and torch.is_grad_enabled()) \
            if dreg else z
        fake = poutine.Trace()  # the guide trace with the samples the model is scored at
        fake.add_node(name, **{**site, "value": z_in})
        model_tr = trace_model(model, fake, data, mask, plates, vectorize=self.vectorized(model))
        recs = reconstructions(model_tr, [name], self.likelihood_weights)
        rec = total(recs.values())  # (M, K, B)
        log_pi = pi.log().unsqueeze(1)  # (M, 1, B)
        comps = detach(q) if dreg else q
        # log q_m'(z_m k) for every draw (m) and belief (m'): (M, M', K, B)
        pair = comps.log_prob(z_in.unsqueeze(1))
        log_mix = (log_pi.unsqueeze(0) + pair).logsumexp(1)  # (M, K, B)
        kl = log_mix - site_log_prob(model_tr.nodes[name], z_in) - prior_factors(model_tr)
        log_w = rec - self.beta * kl
        if dreg:
            mixture = _Beliefs(q, pi)
            value = stratified_dreg(log_w, z, z_in, mixture, self.beta, self.particle_dim)
        else:
            value = log_mean_exp(log_w, self.particle_dim)  # (M, B)
        weights = pi  # zero for unobserved sources: their strata drop out exactly
        value = torch.where(weights > 0, weights * value, torch.zeros_like(value)).sum(0)
        return value, recs, kl


class _Beliefs:
    """The mixture :math:`\\sum_m \\pi_m q_m` of the traced one-source beliefs, in the form
    :func:`~pyro_mmvae.infer.stratified_dreg.stratified_dreg` reads (``mixture_distribution``
    logits ``(..., K, B, M)`` and ``component_distribution`` with the components last)."""

    def __init__(self, beliefs, pi):
        self._beliefs = beliefs  # batch (M, K, B)
        self._pi = pi  # (M, B)

    @property
    def mixture_distribution(self):
        logits = self._pi.log().transpose(0, 1)  # (B, M)
        shape = self._beliefs.batch_shape[1:] + logits.shape[-1:]
        return Categorical(logits=logits.expand(shape))

    @property
    def component_distribution(self):
        # batch (K, B, M): the belief index moved last
        fn = self._beliefs
        base = fn.base_dist
        loc = base.loc.expand(fn.batch_shape + fn.event_shape).movedim(0, -2)
        scale = base.scale.expand(fn.batch_shape + fn.event_shape).movedim(0, -2)
        return Normal(loc, scale).to_event(1)
