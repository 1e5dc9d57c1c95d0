r"""The masked multimodal bound of Hirt et al. (eqs. 3–4).

For a subset :math:`S\sim\rho` of the observed modalities :math:`O`,

.. math::
    \mathcal L_S(x_S) &= \mathbb E_{q(z\mid x_S)}\log p(x_S\mid z)
        - \beta\,\mathrm{KL}\big(q(z\mid x_S)\,\|\,p(z)\big), \\
    \mathcal L_{\setminus S}(x) &= \mathbb E_{q(z\mid x_O)}\log p(x_{O\setminus S}\mid z)
        - \beta\,\mathrm{KL}\big(q(z\mid x_O)\,\|\,q(z\mid x_S)\big), \\
    \mathcal L(x) &= \mathbb E_{S\sim\rho}\big[\mathcal L_S(x_S)+\mathcal L_{\setminus S}(x)\big].

The partial encoder :math:`q(z\mid x_S)` acts as a learned conditional prior in the second
term. With :math:`S=O` the bound is the ordinary ELBO; with exact posteriors it equals
:math:`\log p(x)` (Corollary 2), unlike the mixture bound, whose gap persists.

Reference: Marcel Hirt, Domenico Campolo, Victoria Leong and Juan-Pablo Ortega, *Learning
multi-modal generative models with permutation-invariant encoders and tighter variational
bounds*, arXiv:2309.00380, 2023 (TMLR 2024, as *... tighter variational objectives*).
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import Independent, Laplace, MultivariateNormal, Normal
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from torch.distributions import kl_divergence

from .base import MultimodalELBO
from .cells import StackedDistribution
from .traces import (check_model_guide, check_scorable, latent_sites, latent_values, local_latents,
                     rate, reconstructions, stl_distribution, total, trace_guide, trace_model)


def swap_pair(fn):
    """A distribution with batch ``(2, ...)`` with its two rows swapped, or None if unknown."""
    if isinstance(fn, StackedDistribution):
        return fn.reordered([1, 0])
    base = fn.base_dist if isinstance(fn, Independent) else fn
    if isinstance(base, (Normal, Laplace)):
        swapped = type(base)(base.loc.flip(0), base.scale.flip(0))
    elif isinstance(base, MultivariateNormal):
        swapped = MultivariateNormal(base.loc.flip(0), scale_tril=base.scale_tril.flip(0))
    else:
        return None
    return Independent(swapped, fn.reinterpreted_batch_ndims) if base is not fn else swapped


def conditional_kl(site, prior_fn, prior_log_prob, analytic: bool, stop_gradient: bool,
                   values=None):
    r""":math:`\mathrm{KL}(q(\cdot\mid x_O)\,\|\,q(\cdot\mid x_S))` at one guide site whose
    encodings are stacked as rows ``[S, O]`` (batch ``(2, ...)``); returns shape ``(...)``.

    ``prior_fn`` is the conditional prior with the same batch shape (row 1 is used; None if
    unknown) and ``prior_log_prob()`` returns its log-density at the full-path sample (row 1;
    called only where the KL is not analytic). Analytic
    where the registry has the KL, else the one-sample log-ratio at the full-path sample, the
    conditional prior never detached; under STL the own density is
    :func:`~pyro_mmvae.infer.traces.stl_distribution` at the upstream samples ``values``.
    """
    fn, z = site["fn"], site["value"]
    if analytic and prior_fn is not None:
        try:
            kl = kl_divergence(fn, prior_fn)
        except NotImplementedError:
            pass
        else:
            return scale_and_mask(kl, site["scale"], site["mask"])[1]
    own = (stl_distribution(site, values) if stop_gradient else fn).log_prob(z)
    return scale_and_mask(own - prior_log_prob(), site["scale"], site["mask"])[1]


def conditional_priors(guide, data, guide_tr, latents, s_mask, plates, vectorize=None):
    r"""``{site: (fn, log_prob)}`` of the conditional prior, rows aligned with ``guide_tr``
    (``log_prob()``: its log-density at the guide's sample, computed when called).

    With one latent site :math:`q(z\mid x_S)` does not depend on samples: it is row 0 of the
    pair, swapped into row 1. With several (private latents, Algorithm 2 of Hirt et al.), the
    conditional prior of a later site depends on the shared sample, and must be evaluated at
    the full-path one, :math:`q(w\mid z_O, x_S)`: the guide runs once more on ``S``, replaying
    the full-path samples in both rows.
    """
    if len(latents) == 1:
        site = guide_tr.nodes[latents[0]]
        fn, z = site["fn"], site["value"]
        return {latents[0]: (swap_pair(fn), lambda: fn.log_prob(z.flip(0)).flip(0))}
    full_path = poutine.Trace()
    for name in latent_sites(guide_tr):
        site = dict(guide_tr.nodes[name])
        if name in latents:  # global latents are shared by both rows already
            site["value"] = site["value"][1:].expand_as(site["value"])
        full_path.add_node(name, **site)
    prior_tr = trace_guide(guide, data, s_mask, plates, upstream=full_path, vectorize=vectorize)
    out = {}
    for name in latents:
        fn, z = prior_tr.nodes[name]["fn"], guide_tr.nodes[name]["value"]
        out[name] = (fn, lambda fn=fn, z=z: fn.log_prob(z))
    return out


class MaskedMultimodalELBO(MultimodalELBO):
    r"""The tighter masked bound of Hirt et al.,
    :math:`\mathbb E_\rho[\mathcal L_S+\mathcal L_{\setminus S}]` (equations in the module
    docstring).

    Each step draws one subset per data point from ``masking`` (default ``"iid_half"``, the
    authors' code; ``"hierarchical"`` is the paper's text), intersected with that data point's
    observed modalities. For a guide that declares :func:`~pyro_mmvae.protocol.vectorized` (the
    library's do), both encodings, :math:`q(z\mid x_S)` and :math:`q(z\mid x_O)`, come from
    **one** guide call whose masks are stacked as ``(2, 1, B)`` along a plate left of the
    particle plate (so the modality encoders run once), and one model call scores ``x_S`` with
    :math:`z_S` and :math:`x_{O\setminus S}` with :math:`z_O`; any other program is called
    once per row and particle with plain ``(B,)`` masks, to the same value.

    The KL terms are analytic where the registry has them (Gaussian guides) and otherwise the
    one-sample log-ratios of the paper's Algorithm 1, with STL on the guide's own density; the
    conditional prior :math:`\log q(z_O\mid x_S)` is never detached. Where S = O the conditional
    term is identically zero and is left out (its STL gradient, which the authors' code keeps,
    is pure variance). With ``iwae=True`` each of the two terms becomes its importance-weighted
    bound.

    ``terms()`` returns per-datapoint ``elbo``, the common ``reconstruction``, ``rate`` and
    ``reconstruction/<m>`` of both parts (:meth:`MultimodalELBO.terms`), ``marginal``
    (:math:`\mathcal L_S`), ``conditional`` (:math:`\mathcal L_{\setminus S}`),
    ``marginal_reconstruction``, ``marginal_rate`` (the rate :math:`R_S`),
    ``conditional_reconstruction`` and ``cross_rate`` (the paper's cross rate
    :math:`R_{\setminus S} = \mathbb E_q[\log q(z\mid x_O) - \log q(z\mid x_S)]`, Sec. 3.4;
    the name :func:`~pyro_mmvae.eval.rate_distortion` reports it under), particle means, and
    ``subset_size``.
    """

    def _terms(self, model, guide, data, observed, modalities):
        subset = self.draw_subsets(observed, modalities) & observed
        rest = observed & ~subset
        encode = self.masks(torch.stack([subset, observed]).unsqueeze(1), modalities)
        score = self.masks(torch.stack([subset, rest]).unsqueeze(1), modalities)
        plates = [("masked_pair", 2, self.outer_dim()), self.particle_plate()]
        vectorize = self.vectorized(guide)
        guide_tr = trace_guide(guide, data, encode, plates, views=self.estimator == "dreg",
                               vectorize=vectorize)  # z: rows z_S, z_O
        check_scorable(guide_tr)
        model_tr = trace_model(model, guide_tr, data, score, plates,
                               vectorize=self.vectorized(model))
        latents = local_latents(guide_tr)
        values = latent_values(guide_tr, latent_sites(guide_tr))
        if is_validation_enabled():
            check_model_guide(model_tr, guide_tr, data)

        recs = reconstructions(model_tr, latent_sites(guide_tr),
                               self.likelihood_weights)  # {m: (2, S, B)}
        rec = total(recs.values())
        kl_s = rate(guide_tr, model_tr, latents, self.analytic_kl, self.stop_gradient,
                    values)[0]
        s_pair = self.masks(torch.stack([subset, subset]).unsqueeze(1), modalities)
        priors = conditional_priors(guide, data, guide_tr, latents, s_pair, plates, vectorize)
        kl_c = sum(conditional_kl(guide_tr.nodes[n], *priors[n], self.analytic_kl,
                                  self.stop_gradient, values) for n in latents)
        kl_c = torch.where(rest.any(-1), kl_c, torch.zeros_like(kl_c))
        kl = torch.stack(torch.broadcast_tensors(kl_s, kl_c))
        samples = [values[n] for n in latents]
        value = self.reduce_particles(rec - self.beta * kl, samples)  # (2, B)
        dim = self.particle_dim
        return self.with_globals({
            "elbo": value.sum(0),
            **self.common_terms(lambda t: t.mean(dim).sum(0), recs, kl, modalities),
            "marginal": value[0],
            "conditional": value[1],
            "marginal_reconstruction": rec[0].mean(dim).detach(),
            "marginal_rate": kl[0].mean(dim).detach(),
            "conditional_reconstruction": rec[1].mean(dim).detach(),
            "cross_rate": kl[1].mean(dim).detach(),
            "subset_size": subset.sum(-1),
        }, guide_tr, model_tr)
