r"""The mixture-based multimodal bound (seed 004 eq. 1; MMVAE; MoPoE).

For a subset :math:`S\sim\rho` of the observed modalities :math:`O`,

.. math::
    \mathcal L^{\rm Mix}_S(x) = \mathbb E_{q(z\mid x_S)}\log p(x_O\mid z)
        - \beta\,\mathrm{KL}\big(q(z\mid x_S)\,\|\,p(z)\big),\qquad
    \mathcal L^{\rm Mix}(x) = \mathbb E_{S\sim\rho}\,\mathcal L^{\rm Mix}_S(x):

every observed modality is reconstructed from the subset's encoding. When
:math:`q(z\mid x_S)=\sum_k\pi_k q_k(z)` is a mixture (MoE, MoPoE), three estimators:

- ``form="stratified"`` (default): one draw from every component,
  :math:`\sum_k \pi_k\,\mathbb E_{q_k}\big[\log p(x_O\mid z)+\beta\log p(z)-\beta\log q(z\mid
  x_S)\big]` with the mixture density — MMVAE's eq. (33) for the MoE guide and MoPoE's
  eq. (6) for the MoPoE guide (with ``masking="all"``);
- ``form="average"``: :math:`\sum_k\pi_k\big[\mathbb E_{q_k}\log p(x_O\mid z) - \beta\,
  \mathrm{KL}(q_k\,\|\,p)\big]`, the average of subset ELBOs that the MoPoE code optimises
  (Sutter et al. 2021, eq. 12; a looser bound than eq. 6);
- ``form="sampled"``: one draw from the mixture with the mixture density (seed 004's code).

MMVAE as Shi et al. train it is ``masking="all"``, MoE guide, ``form="stratified"``,
``iwae=True``, ``estimator="dreg"`` (:meth:`MixtureMultimodalELBO.mmvae`): per data point

.. math::
    \frac1{|O|}\sum_{m\in O}\mathbb E_{z_{1:S}\sim q(z\mid x_m)}\Big[\log\frac1S\sum_s
    \frac{p(x_O, z_s)}{q_{\rm MoE}(z_s\mid x_O)}\Big],

the objective of their code's ``m_iwae_looser`` / ``m_dreg_looser`` (the ``--looser`` flag of
their pretrained models), value for value. Their DReG gradient is biased for this bound (it
treats each stratum's own component as the proposal density; see
:mod:`pyro_mmvae.infer.stratified_dreg`); the default ``mixture_dreg="unbiased"`` uses the
unbiased stratified DReG estimator, ``mixture_dreg="mmvae"`` reproduces theirs exactly. With
``masking="singletons"`` and a MoE guide one gets the same MMVAE objective in its
subset-average form.
"""

from __future__ import annotations

from typing import Literal

import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled

from pyro.poutine.indep_messenger import CondIndepStackFrame

from .base import MultimodalELBO
from .mixtures import components_first, is_mixture, mixture_logits
from .stratified_dreg import stratified_dreg
from .traces import (check_model_guide, check_pathwise, global_latents, kl_estimate, latent_sites,
                     latent_values, local_latents, log_likelihood, prior_factors, rate,
                     site_log_prob, trace_guide, trace_model)

Form = Literal["stratified", "average", "sampled"]


class MixtureMultimodalELBO(MultimodalELBO):
    r"""Mixture-based bound :math:`\mathbb E_\rho\,\mathcal L^{\rm Mix}_S` (module docstring).

    :param masking: :math:`\rho`; default ``"all"`` (S = O), which with a MoE / MoPoE guide is
        MMVAE / MoPoE. Seed 004 trains it with ``"iid_half"`` and a unimodal aggregator.
    :param form: ``"stratified"``, ``"average"`` or ``"sampled"``; only matters for mixture
        guides (all three coincide otherwise).
    :param mixture_dreg: the DReG estimator of ``form="stratified"`` with ``iwae=True``:
        ``"unbiased"`` (default; :mod:`~pyro_mmvae.infer.stratified_dreg`) or ``"mmvae"``
        (per-stratum DReG as in Shi et al.'s ``m_dreg_looser``: lower variance, biased for
        more than one particle).

    ``terms()`` returns per-datapoint ``elbo``, ``reconstruction`` (of all observed
    modalities), ``rate`` and ``subset_size``.
    """

    def __init__(self, num_particles: int = 1, *, masking="all", form: Form = "stratified",
                 mixture_dreg: Literal["unbiased", "mmvae"] = "unbiased", **kwargs):
        super().__init__(num_particles, masking=masking, **kwargs)
        if form not in ("stratified", "average", "sampled"):
            raise ValueError(f"form must be 'stratified', 'average' or 'sampled', got {form!r}")
        if mixture_dreg not in ("unbiased", "mmvae"):
            raise ValueError(f"mixture_dreg must be 'unbiased' or 'mmvae', got {mixture_dreg!r}")
        self.form = form
        self.mixture_dreg = mixture_dreg

    @classmethod
    def mmvae(cls, num_particles: int, *, faithful: bool = False, **kwargs):
        r"""MMVAE's training objective (Shi et al. 2019): use with a
        :class:`~pyro_mmvae.guides.MoE` guide.

        ``masking="all"``, ``form="stratified"``, ``iwae=True``, ``estimator="dreg"``: from
        every observed modality's expert :math:`S` = ``num_particles`` draws, importance
        weights :math:`p(x_O, z)/q_{\rm MoE}(z\mid x_O)` with the full mixture density, the
        IWAE bound of each stratum averaged over modalities (their ``--looser`` objective;
        they train with :math:`S` = 30 on MNIST-SVHN, 50 on CUB). ``faithful=True`` uses
        their per-stratum DReG gradient (biased); the default is the unbiased stratified DReG.
        Further keywords (``beta``, ``likelihood_weights`` — their ``llik_scaling``) pass
        through.
        """
        kwargs = {"masking": "all", "form": "stratified", "iwae": True, "estimator": "dreg",
                  "mixture_dreg": "mmvae" if faithful else "unbiased", **kwargs}
        return cls(num_particles, **kwargs)

    def _terms(self, model, guide, data, observed, modalities):
        subset = self.masking(observed) & observed
        s_mask = self.masks(subset, modalities)
        o_mask = self.masks(observed, modalities)
        plates = [self.particle_plate()]
        guide_s = trace_guide(guide, data, s_mask, plates, views=self.estimator == "dreg",
                              vectorize=self.vectorized(guide))
        check_pathwise(guide_s)
        latents = local_latents(guide_s)
        q_site = guide_s.nodes[latents[0]]
        if self.form != "sampled" and is_mixture(q_site["fn"]):
            if len(latents) > 1:
                raise NotImplementedError("form='stratified'/'average' supports a single latent "
                                          "site; use form='sampled'")
            out = self._per_component(model, guide_s, q_site, data, o_mask, plates)
            return {**out, "subset_size": subset.sum(-1)}
        model_s = trace_model(model, guide_s, data, o_mask, plates,
                              vectorize=self.vectorized(model))
        if is_validation_enabled():
            check_model_guide(model_s, guide_s, data)
        rec = log_likelihood(model_s, latent_sites(guide_s), self.likelihood_weights)
        values = latent_values(guide_s, latent_sites(guide_s))
        kl = rate(guide_s, model_s, latents, self.analytic_kl, self.stop_gradient, values)
        elbo = self.reduce_particles(rec - self.beta * kl, [values[n] for n in latents])
        dim = self.particle_dim
        return self.with_globals({"elbo": elbo, "reconstruction": rec.mean(dim).detach(),
                                  "rate": kl.mean(dim).detach(),
                                  "subset_size": subset.sum(-1)}, guide_s, model_s)

    def _per_component(self, model, guide_s, q_site, data, o_mask, plates):
        """Stratified / average forms: one draw per mixture component, in one model call."""
        q = q_site["fn"]  # batch (S, B)
        comps = components_first(q)  # batch (K, S, B)
        z = comps.rsample()  # (K, S, B, D)
        weights = mixture_logits(q).exp().movedim(-1, 0)  # (K, S, B)
        unbiased_dreg = (self.form == "stratified" and self.iwae and self.estimator == "dreg"
                         and self.mixture_dreg == "unbiased")
        # The unbiased stratified DReG scores the model at a detached copy of the samples and
        # forms the encoder's path gradient itself (stratified_dreg).
        z_in = (z.detach().requires_grad_(z.requires_grad and torch.is_grad_enabled())
                if unbiased_dreg else z)
        name = q_site["name"]
        k_plate = ("mixture_components", z.shape[0], self.outer_dim())
        fake = poutine.Trace()  # the global latents, and z drawn from every component
        for other in global_latents(guide_s):
            fake.add_node(other, **guide_s.nodes[other])
        k_frame = CondIndepStackFrame(k_plate[0], k_plate[2], k_plate[1], 0)
        fake.add_node(name, name=name, type="sample", is_observed=False, value=z_in, infer={},
                      fn=comps, scale=q_site["scale"], mask=q_site["mask"],
                      cond_indep_stack=(k_frame,) + tuple(q_site["cond_indep_stack"]))
        model_tr = trace_model(model, fake, data, o_mask, [k_plate] + list(plates),
                               vectorize=self.vectorized(model))
        if is_validation_enabled():
            check_model_guide(model_tr, fake, data)
        rec = log_likelihood(model_tr, latent_sites(fake), self.likelihood_weights)  # (K, S, B)
        p_site = model_tr.nodes[name]
        if self.form == "stratified":
            # log q(z_k | x_S) is the mixture density, so KL is the sampled log-ratio.
            kl = site_log_prob(q_site, z_in, self.stop_gradient) - site_log_prob(p_site, z_in)
        else:
            comp_site = dict(fake.nodes[name])
            kl = kl_estimate(comp_site, p_site, self.analytic_kl, self.stop_gradient)
        kl = kl - prior_factors(model_tr)
        if unbiased_dreg:
            value = stratified_dreg(rec - self.beta * kl, z, z_in, q, self.beta,
                                    self.particle_dim)  # (K, B)
        else:
            value = self.reduce_particles(rec - self.beta * kl, [z])  # (K, B)
        # Zero-weight components hold arbitrary finite values; where() keeps them out exactly.
        w = weights.mean(self.particle_dim)
        elbo = torch.where(w > 0, w * value, torch.zeros_like(value)).sum(0)
        dim = self.particle_dim
        return self.with_globals({"elbo": elbo,
                                  "reconstruction": (w * rec.mean(dim)).sum(0).detach(),
                                  "rate": (w * kl.mean(dim)).sum(0).detach()}, guide_s, model_tr)
