r"""The mixture-based multimodal bound (Hirt et al. eq. 1; MMVAE; MoPoE).

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
- ``form="sampled"``: one draw from the mixture with the mixture density (the code of Hirt et al.).

``form="average"`` decodes every component for every data point (:math:`2^M-1` subset PoEs
for MoPoE). ``num_subsets=k`` estimates it at the cost of ``k`` components (MultiVae's cost
with ``k=1``): per data point (and particle) ``k`` component indices :math:`j_1..j_k\sim\pi`
are drawn with replacement, only those are decoded, and

.. math::
    \widehat{\mathcal L}^{\rm avg}_S = \frac1k\sum_{i=1}^k\mathbb E_{q_{j_i}}
        \log p(x_O\mid z) - \beta\sum_k\pi_k\,\mathrm{KL}(q_k\,\|\,p),

an unbiased estimate of the average (its expectation over the draws is the sum over
components). The KL term stays exact over all components when it has a registered closed form
(``analytic_kl``: no decoding needed); otherwise it is sampled with the reconstruction,
:math:`\frac1k\sum_i[\log q_{j_i}(z_i) - \log p(z_i)]`.

The stratified form scores each component's draw under the whole mixture, a pairwise
(draw x component) computation; it is evaluated in chunks of draws (``chunk_size``) so that its
memory grows as :math:`K\cdot B\cdot D` per chunk, not :math:`K^2\cdot B\cdot D`.

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

References: Yuge Shi, N. Siddharth, Brooks Paige and Philip H. S. Torr, *Variational
Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models*, NeurIPS 2019,
arXiv:1911.03393 (MMVAE); Thomas M. Sutter, Imant Daunhawer and Julia E. Vogt, *Generalized
Multimodal ELBO*, ICLR 2021, arXiv:2105.02470 (MoPoE-VAE); Marcel Hirt, Domenico Campolo,
Victoria Leong and Juan-Pablo Ortega, *Learning multi-modal generative models with
permutation-invariant encoders and tighter variational bounds*, arXiv:2309.00380, 2023 (TMLR
2024), eq. 1.
"""

from __future__ import annotations

from contextlib import nullcontext as _nothing
from typing import Literal, Optional

import torch
from pyro import poutine
from pyro.distributions import Independent, Laplace, Normal
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from pyro_mmvae.decoding import recomputed_decoders
from pyro_mmvae.sharding import categorical, sharded

from .base import MultimodalELBO
from .cells import StackedDistribution, in_data_plate
from .mixtures import (chunked, components_first, draw_chunk, gather_components, is_mixture,
                       live_components, mixture_logits, select_components)
from .stratified_dreg import stratified_dreg
from .traces import (check_model_guide, check_scorable, global_latents, kl_estimate, latent_sites,
                     latent_values, local_latents, prior_factors, rate, reconstructions,
                     site_log_prob, stl_distribution, total, trace_guide, trace_model)

Form = Literal["stratified", "average", "sampled"]

#: Codes per modality (components x particles x data points) from which the per-component forms
#: recompute the decoders' activations by default (``recompute_decoders=None``): 2**16, where
#: a 128-wide two-layer MLP decoder keeps about 150 MiB of activations per modality.
RECOMPUTE_ROWS = 1 << 16


class MixtureMultimodalELBO(MultimodalELBO):
    r"""Mixture-based bound :math:`\mathbb E_\rho\,\mathcal L^{\rm Mix}_S` (module docstring).

    :param masking: :math:`\rho`; default ``"all"`` (S = O), which with a MoE / MoPoE guide is
        MMVAE / MoPoE. Hirt et al. train it with ``"iid_half"`` and a unimodal aggregator.
    :param form: ``"stratified"``, ``"average"`` or ``"sampled"``; only matters for mixture
        guides (all three coincide otherwise).
    :param mixture_dreg: the DReG estimator of ``form="stratified"`` with ``iwae=True``:
        ``"unbiased"`` (default; :mod:`~pyro_mmvae.infer.stratified_dreg`) or ``"mmvae"``
        (per-stratum DReG as in Shi et al.'s ``m_dreg_looser``: lower variance, biased for
        more than one particle).
    :param num_subsets: ``form="average"`` only: ``None`` (default) decodes every mixture
        component; an integer ``k`` draws ``k`` components per data point and particle from the
        mixture weights :math:`\pi` and decodes only those, the unbiased estimator

        .. math:: \frac1k\sum_{i=1}^k\Big[\mathbb E_{q_{j_i}}\log p(x_O\mid z)\Big]
            - \beta\sum_j\pi_j\,\mathrm{KL}(q_j\,\|\,p),\qquad j_i\sim\pi,

        of :math:`\sum_j\pi_j[\mathbb E_{q_j}\log p(x_O\mid z)-\beta\,\mathrm{KL}(q_j\|p)]`
        (MoPoE eq. 12): the KL term exact over all components when ``analytic_kl`` and a closed
        form is registered (the prior must be the same for every draw, as the model sees the
        same data and mask), else the one-sample :math:`\log q_{j_i}(z_i)-\log p(z_i)` of
        each drawn component. Zero-weight components are never drawn. With ``iwae=True`` the
        ``k`` components are drawn per data point and shared by its particles (each draw's
        particles form the IWAE bound of that component); the weights must then be the same
        for every particle. Learned mixture weights get the score-function gradient of the
        draw (:math:`\nabla\log\pi_{j_i}` times the drawn term), so gradients stay
        unbiased. Without a mixture guide (one component) it has no effect. The other forms
        refuse it: ``"stratified"`` with drawn components is ``"sampled"``.
    :param chunk_size: ``form="stratified"``: draws whose mixture density is evaluated at
        once (each against all :math:`K` components, checkpointed under autograd); ``None``
        (default) chooses it so that a chunk's pairwise tensor holds at most
        :data:`~pyro_mmvae.infer.mixtures.PAIRWISE_BUDGET` elements. Values do not depend on it.
    :param recompute_decoders: ``form="stratified"`` / ``"average"``: run the model under
        :func:`~pyro_mmvae.decoding.recomputed_decoders`, so that the library's decoders keep
        no intermediate activations for the backward pass and recompute them there (about one
        more forward pass of the decoder networks; the same values and gradients). ``None``
        (default): when the model decodes at least :data:`RECOMPUTE_ROWS` codes per modality
        (components x particles x data points), e.g. MoPoE from ``M = 10`` at batch 128 (a step
        peaks at +2.4 GiB of live memory with 128-wide two-layer MLP decoders, +1.1 GiB with
        their activations recomputed, for about 13 % more time).

    ``terms()`` returns per-datapoint ``elbo``, ``reconstruction`` (of all observed
    modalities), ``rate`` and ``subset_size``.
    """

    def __init__(self, num_particles: int = 1, *, masking="all", form: Form = "stratified",
                 mixture_dreg: Literal["unbiased", "mmvae"] = "unbiased",
                 num_subsets: Optional[int] = None, chunk_size: Optional[int] = None,
                 recompute_decoders: Optional[bool] = None, **kwargs):
        from pyro_mmvae.protocol import check_positive_int
        super().__init__(num_particles, masking=masking, **kwargs)
        if form not in ("stratified", "average", "sampled"):
            raise ValueError(f"form must be 'stratified', 'average' or 'sampled', got {form!r}")
        if mixture_dreg not in ("unbiased", "mmvae"):
            raise ValueError(f"mixture_dreg must be 'unbiased' or 'mmvae', got {mixture_dreg!r}")
        num_subsets = check_positive_int(num_subsets, "num_subsets", allow_none=True)
        if num_subsets is not None and form != "average":
            raise ValueError(f"num_subsets applies to form='average' only, got form={form!r} "
                             "(drawing components for the stratified form is form='sampled' "
                             "with num_particles draws)")
        self.form = form
        self.mixture_dreg = mixture_dreg
        self.num_subsets = num_subsets
        self.chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
        if recompute_decoders not in (None, True, False):
            raise ValueError(f"recompute_decoders must be None, True or False, got "
                             f"{recompute_decoders!r}")
        self.recompute_decoders = recompute_decoders

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
        subset = self.draw_subsets(observed, modalities) & observed
        s_mask = self.masks(subset, modalities)
        o_mask = self.masks(observed, modalities)
        plates = [self.particle_plate()]
        # the per-component forms draw from every (or every drawn) component themselves and
        # read only the guide's distribution: its own draw from the mixture is not made
        skip = _MixtureDrawSkipped() if self.form != "sampled" else _nothing()
        with skip:
            guide_s = trace_guide(guide, data, s_mask, plates, views=self.estimator == "dreg",
                                  vectorize=self.vectorized(guide))
        check_scorable(guide_s)
        latents = local_latents(guide_s)
        q_site = guide_s.nodes[latents[0]]
        if self.form != "sampled" and is_mixture(q_site["fn"]):
            if len(latents) > 1:
                raise NotImplementedError("form='stratified'/'average' supports a single latent "
                                          "site; use form='sampled'")
            out = self._per_component(model, guide_s, q_site, data, o_mask, plates,
                                      modalities)
            return {**out, "subset_size": subset.sum(-1)}
        model_s = trace_model(model, guide_s, data, o_mask, plates,
                              vectorize=self.vectorized(model))
        if is_validation_enabled():
            check_model_guide(model_s, guide_s, data)
        recs = reconstructions(model_s, latent_sites(guide_s), self.likelihood_weights)
        rec = total(recs.values())
        values = latent_values(guide_s, latent_sites(guide_s))
        kl = rate(guide_s, model_s, latents, self.analytic_kl, self.stop_gradient, values)
        elbo = self.reduce_particles(rec - self.beta * kl, [values[n] for n in latents])
        dim = self.particle_dim
        return self.with_globals({"elbo": elbo,
                                  **self.common_terms(lambda t: t.mean(dim), recs, kl,
                                                      modalities),
                                  "subset_size": subset.sum(-1)}, guide_s, model_s)

    def _per_component(self, model, guide_s, q_site, data, o_mask, plates, modalities):
        """Stratified / average forms: one draw per mixture component (or, with
        ``num_subsets``, per drawn component), in one model call."""
        q = q_site["fn"]  # batch (S, B)
        comps = components_first(q)  # batch (K, S, B)
        logits = mixture_logits(q)  # (S, B, K), normalised
        weights = logits.exp().movedim(-1, 0)  # (K, S, B)
        drawn = self.form == "average" and self.num_subsets is not None
        keep = None
        if drawn:
            index = self._draw_components(logits.expand(q.batch_shape + logits.shape[-1:]))
            z_fn = gather_components(comps, index)  # batch (k, S, B)
        else:
            # Zero-weight components (the prior slot of MoE / MoPoE; subsets holding a modality
            # missing everywhere) are neither sampled nor decoded; where a component has zero
            # weight for some data points only, the model's masks leave those rows unscored,
            # so the library's models do not decode them (pyro_mmvae.decoding).
            keep = live_components(weights)
            if keep is not None:
                comps = select_components(comps, keep)
                weights = weights.index_select(0, keep)
            live = (weights > 0).any(self.particle_dim)  # (K, B)
            if not bool(live.all()):
                o_mask = {m: o & live.unsqueeze(1) for m, o in o_mask.items()}  # (K, 1, B)
            z_fn = comps
        z = sharded(z_fn).rsample()  # (K or k, S, B, D)
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
                      fn=z_fn, scale=q_site["scale"], mask=q_site["mask"],
                      cond_indep_stack=(k_frame,) + tuple(q_site["cond_indep_stack"]))
        recompute = self.recompute_decoders
        if recompute is None:
            recompute = z.shape[:-1].numel() >= RECOMPUTE_ROWS
        with recomputed_decoders(recompute):
            model_tr = trace_model(model, fake, data, o_mask, [k_plate] + list(plates),
                                   vectorize=self.vectorized(model))
        if is_validation_enabled():
            check_model_guide(model_tr, fake, data)
        recs = reconstructions(model_tr, latent_sites(fake), self.likelihood_weights)
        p_site = model_tr.nodes[name]
        if drawn:
            return self.with_globals(self._drawn_average(recs, comps, z, index, logits,
                                                         weights, fake.nodes[name], p_site,
                                                         q_site, model_tr, modalities),
                                     guide_s, model_tr)
        rec = total(recs.values())  # (K, S, B)
        if self.form == "stratified":
            # log q(z_k | x_S) is the mixture density, so KL is the sampled log-ratio; the
            # (draws x components) pairwise evaluation runs in chunks of draws.
            fn = stl_distribution(q_site) if self.stop_gradient else q
            chunk = draw_chunk(z_in, comps.batch_shape[0], self.chunk_size)
            log_q = chunked(fn.log_prob, z_in, chunk=chunk)
            kl = (scale_and_mask(log_q, q_site["scale"], q_site["mask"])
                  - site_log_prob(p_site, z_in))
        else:
            comp_site = dict(fake.nodes[name])
            kl = kl_estimate(comp_site, p_site, self.analytic_kl, self.stop_gradient)
        kl = kl - prior_factors(model_tr)
        if unbiased_dreg:
            value = stratified_dreg(rec - self.beta * kl, z, z_in, q, self.beta,
                                    self.particle_dim, chunk=self.chunk_size,
                                    keep=keep)  # (K, B)
        else:
            value = self.reduce_particles(rec - self.beta * kl, [z])  # (K, B)
        # Zero-weight components hold arbitrary finite values; where() keeps them out exactly.
        w = weights.mean(self.particle_dim)
        elbo = torch.where(w > 0, w * value, torch.zeros_like(value)).sum(0)
        dim = self.particle_dim
        return self.with_globals({"elbo": elbo, **self.common_terms(
            lambda t: torch.where(w > 0, w * t.mean(dim), torch.zeros_like(w)).sum(0), recs, kl,
            modalities)}, guide_s, model_tr)

    def _draw_components(self, logits):
        """``num_subsets`` component indices per data point and particle ``(k, S, B)`` drawn
        from the normalised ``logits`` ``(S, B, K)``; under IWAE one draw per data point, shared
        by its particles."""
        k = self.num_subsets
        with torch.no_grad():
            if not self.iwae:
                return categorical(logits.detach(), (k,))
            pdim = self.particle_dim - 1  # of the logits, whose last dim is the components'
            first = logits.detach().narrow(pdim, 0, 1)
            if not torch.equal(logits.detach(), first.expand_as(logits)):
                raise ValueError("num_subsets with iwae=True shares each drawn component among "
                                 "a data point's particles: the mixture weights must be the same "
                                 "for every particle")
            index = categorical(first, (k,))  # (k, 1, B)
            return index.expand((k,) + logits.shape[:-1])

    def _drawn_average(self, recs, comps, z, index, logits, weights, z_site, p_site, q_site,
                       model_tr, modalities):
        """``form="average"`` with ``num_subsets``: the terms of the drawn components, the KL
        exact over all components where it is analytic (class docstring)."""
        dim = self.particle_dim
        rec = total(recs.values())  # (k, S, B)
        exact = None
        prior = _first_draw(p_site["fn"], comps.batch_shape[0]) if self.analytic_kl else None
        if prior is not None:
            # every component against the prior (the same for every draw: the first draw's)
            try:
                kl_all = kl_divergence(comps, prior)  # (K, S, B)
            except NotImplementedError:
                pass
            else:
                kl_all = scale_and_mask(kl_all, q_site["scale"], q_site["mask"])  # (K, S, B)
                w = weights.mean(dim)  # (K, B)
                exact = torch.where(w > 0, w * kl_all.mean(dim),
                                    torch.zeros_like(w)).sum(0)  # (B,)
        if exact is None:
            kl = kl_estimate(z_site, p_site, False, self.stop_gradient)  # (k, S, B)
        else:
            kl = torch.zeros_like(rec)
        kl = kl - prior_factors(model_tr)
        sampled = rec - self.beta * kl  # (k, S, B)
        ratio = None
        if logits.requires_grad:  # learned weights: score-function term of the draw
            log_pi = logits.expand(index.shape[1:] + logits.shape[-1:]).movedim(-1, 0)
            log_pi = log_pi.gather(0, index)  # (k, S, B)
            ratio = (log_pi - log_pi.detach()).exp()  # value 1, gradient grad log pi
        if ratio is not None and not self.iwae:
            sampled = sampled * ratio
        value = self.reduce_particles(sampled, [z])  # (k, B)
        if ratio is not None and self.iwae:
            value = value * ratio.select(dim, 0)
        elbo = value.mean(0)
        out = self.common_terms(lambda t: t.mean(dim).mean(0), recs, kl, modalities)
        if exact is not None:
            elbo = elbo - self.beta * exact
            out["rate"] = out["rate"] + exact.detach()
        return {"elbo": elbo, **out}


def _first_draw(prior, num_components: int):
    """The model's prior at the first drawn component, for every one of ``num_components``:
    batch broadcasting against ``(K, S, B)`` (a cell-by-cell stack: the first draw's row of
    cells, repeated). ``None`` for a family whose parameters cannot be sliced (the KL is then
    sampled)."""
    if isinstance(prior, StackedDistribution):
        per_row = len(prior.parts) // prior.grid[0]
        return StackedDistribution(prior.parts[:per_row] * num_components,
                                   (num_components,) + tuple(prior.grid[1:]), prior.cell_batch)
    ndims = prior.reinterpreted_batch_ndims if isinstance(prior, Independent) else 0
    base = prior.base_dist if isinstance(prior, Independent) else prior
    if not isinstance(base, (Normal, Laplace)):
        return None
    pos = -(3 + ndims)  # the component plate's dim of the base batch: (k, S, B, *event)
    loc, scale = base.loc, base.scale
    if loc.dim() >= -pos and loc.shape[pos] > 1:
        loc = loc.narrow(pos, 0, 1)
    if scale.dim() >= -pos and scale.shape[pos] > 1:
        scale = scale.narrow(pos, 0, 1)
    first = type(base)(loc, scale)
    return first.to_event(ndims) if ndims else first


class _MixtureDrawSkipped(Messenger):
    """Gives each latent site of the data plate whose distribution is a mixture a placeholder
    value (zeros of its shape) instead of a draw.

    For the per-component forms, which draw from the components themselves and read nothing of
    the guide's sample: a mixture's draw (a categorical draw and a gather, or for learned
    weights the sequential implicit-reparameterisation transform of
    :class:`~pyro_mmvae.guides.DiagNormalMixture`) would be computed and thrown away. Entered
    outside the trace and the plates, it sees the site's distribution broadcast to the plates.
    A guide with further latents downstream of the mixture site is refused by the
    per-component forms anyway (one latent site).
    """

    def _pyro_sample(self, msg) -> None:
        if (msg["value"] is None and not msg["is_observed"] and is_mixture(msg["fn"])
                and in_data_plate(msg)):
            fn = msg["fn"]
            ref = _tensor_of(fn)
            msg["value"] = torch.zeros(fn.batch_shape + fn.event_shape, dtype=ref.dtype,
                                       device=ref.device)


def _tensor_of(fn) -> torch.Tensor:
    """A parameter tensor of a (mixture) distribution, for the dtype and device."""
    mix = fn.parts[0] if isinstance(fn, StackedDistribution) else fn
    logits = getattr(mix.mixture_distribution, "logits", None)
    return logits if torch.is_tensor(logits) else torch.zeros(())
