"""Trace plumbing shared by the multimodal bounds and the evaluation code.

Every helper returns *per-datapoint* tensors with the batch shape of the traced sites,
e.g. ``(S, B)`` under a particle plate of size ``S`` (``(K, S, B)`` with a component plate):
the data plate is never summed here, which is what importance-weighted estimates need.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.distributions.util import detach, scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_mmvae.protocol import STL_FN, is_vectorized, site_modality

from .cells import in_data_plate, looped_trace, within_plates  # noqa: F401

_POINT_MASSES = (Delta,)  # fixed values (a MAP / autoguide point estimate): nothing to sample

Plate = Tuple[str, int, int]  # (name, size, dim)


def _vectorize(program, plates, vectorize: Optional[bool]) -> bool:
    return not plates or (is_vectorized(program) if vectorize is None else vectorize)


def trace_program(program, data, mask, plates: Sequence[Plate] = (), upstream=None,
                  vectorize: Optional[bool] = None):
    """Trace ``program(data, mask)`` inside ``plates``, replaying ``upstream``'s latents.

    Vectorised (one call inside the plates) when the program declares
    :func:`~pyro_mmvae.protocol.vectorized` or ``vectorize=True``; otherwise one call per
    plate cell with plain masks, merged to the same layout
    (:func:`~pyro_mmvae.infer.cells.looped_trace`).
    """
    if _vectorize(program, plates, vectorize):
        fn = within_plates(program, plates)
        if upstream is not None:
            fn = poutine.replay(fn, trace=upstream)
        return poutine.trace(fn).get_trace(data, mask)
    return looped_trace(program, data, mask, plates, upstream=upstream)


def trace_guide(guide, data, mask, plates: Sequence[Plate] = (), views: bool = False,
                vectorize: Optional[bool] = None, upstream=None):
    """Trace ``guide(data, mask)`` inside ``plates``.

    A guide that declares :func:`~pyro_mmvae.protocol.vectorized` (or ``vectorize=True``) runs
    once inside the plates; any other is called once per plate cell with plain masks and the
    calls merged (:func:`~pyro_mmvae.infer.cells.looped_trace`), to the same trace layout.

    With ``views`` every latent value in the returned trace is replaced by an identity view of
    the sample (``value.view_as(value)``). Whatever is computed from the trace afterwards (the
    replayed model, the guide densities) then reaches the sample through the view, while the
    guide's own later samples (``w`` drawn from ``q(w | z)``) were computed from the sample
    itself: a gradient hook on the view sees only the gradient of what was computed from the
    trace, not the gradient that later samples pass back to it (see :func:`dreg_surrogate`).
    """
    tr = trace_program(guide, data, mask, plates, upstream, vectorize)
    if views:
        for name in latent_sites(tr):
            value = tr.nodes[name]["value"]
            tr.nodes[name]["value"] = value.view_as(value)
    return tr


def trace_model(model, guide_trace, data, mask, plates: Sequence[Plate] = (),
                vectorize: Optional[bool] = None):
    """Trace ``model(data, mask)`` replayed against ``guide_trace``, with the log-probs of its
    observed sites computed (vectorised or cell by cell as :func:`trace_guide`).

    Only observed sites (modalities, factors) get ``site["log_prob"]``: every reader of a
    latent's prior density evaluates it where it needs it (:func:`site_log_prob`, at the
    guide's value), and an analytic KL needs none."""
    tr = trace_program(model, data, mask, plates, guide_trace, vectorize)
    if is_validation_enabled():  # Pyro's, with its error messages and NaN warnings
        tr.compute_log_prob(_is_observed)
        return tr
    for site in tr.nodes.values():  # the same, without the unread log_prob_sum
        if site["type"] == "sample" and site["is_observed"] and "log_prob" not in site:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            site["unscaled_log_prob"] = log_p
            site["log_prob"] = _scale_and_mask(log_p, site["scale"], site["mask"])
    return tr


def _is_observed(name, site) -> bool:
    return site["is_observed"]


def _scale_and_mask(tensor, scale, mask):
    """:func:`pyro.distributions.util.scale_and_mask` in fewer operations (no product with a
    scale of 1, a scalar zero in ``where``)."""
    if mask is None or mask is True or isinstance(mask, bool) or not torch.is_tensor(tensor):
        return scale_and_mask(tensor, scale, mask)
    if not (isinstance(scale, (int, float)) and scale == 1):
        tensor = tensor * scale
    return torch.where(mask, tensor, 0.0)


def latent_sites(guide_trace):
    """Names of the sampled (non-observed) sites of a guide trace, in order (plate subsample
    sites excluded)."""
    return [name for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)]


def is_auxiliary(site) -> bool:
    """A guide site marked ``infer={"is_auxiliary": True}`` (no model counterpart; its density
    is part of the guide's, as in Pyro's ELBOs and autoguides)."""
    return bool((site.get("infer") or {}).get("is_auxiliary"))


def local_latents(guide_trace):
    """Latent sites inside the ``"data"`` plate (per-datapoint latents and auxiliary sites)."""
    return [n for n in latent_sites(guide_trace) if in_data_plate(guide_trace.nodes[n])]


def global_latents(guide_trace):
    """Latent sites outside the ``"data"`` plate (global latents and their auxiliary sites)."""
    return [n for n in latent_sites(guide_trace) if not in_data_plate(guide_trace.nodes[n])]


def prior_factors(model_trace):
    """Per-datapoint sum of the model's observed sites inside the data plate that are not a
    modality's ``"x_<m>"`` (``pyro.factor`` terms of the prior on the latents); 0. if none."""
    total = 0.0
    for name, site in model_trace.nodes.items():
        if (site["type"] == "sample" and site["is_observed"] and in_data_plate(site)
                and site_modality(name) is None and not site_is_subsample(site)):
            total = total + site["log_prob"]
    return total


def rate(guide_trace, model_trace, names, analytic: bool, stop_gradient: bool,
         values: Optional[Mapping[str, torch.Tensor]] = None):
    r"""Per-datapoint :math:`\mathrm{KL}(q\,\|\,p)` estimate summed over the sites ``names``
    (:func:`kl_estimate`); an auxiliary guide site contributes :math:`\log q` alone, and the
    model's prior factors (:func:`prior_factors`) are part of :math:`\log p`."""
    total = -prior_factors(model_trace)
    for n in names:
        q = guide_trace.nodes[n]
        if is_auxiliary(q):
            total = total + site_log_prob(q, None, stop_gradient, values)
        else:
            total = total + kl_estimate(q, model_trace.nodes[n], analytic, stop_gradient, values)
    return total


def global_log_ratio(guide_trace, model_trace, particle_dim: int):
    r""":math:`\log p(\theta) - \log q(\theta)` of the global latents :math:`\theta` (sites
    outside the data plate), one value per particle ``(S,)`` (0. without global latents).

    Counted once per particle, however many subset terms share the draw; the guide density
    keeps its score term (no STL or DReG for global latents) and auxiliary sites add their
    :math:`-\log q`. The model's observed sites outside the data plate (a global factor or
    observation) are added here, once, too.
    """
    total = 0.0
    for n, site in model_trace.nodes.items():
        if (site["type"] == "sample" and site["is_observed"] and not in_data_plate(site)
                and not site_is_subsample(site)):
            total = total + _per_particle(site_log_prob(site), particle_dim)
    for n in global_latents(guide_trace):
        q = guide_trace.nodes[n]
        term = -site_log_prob(q)
        if not is_auxiliary(q):
            term = term + site_log_prob(model_trace.nodes[n])
        total = total + _per_particle(term, particle_dim)
    return total


def _per_particle(term, particle_dim: int):
    """A global site's log-density summed over every dim right of the particle dim."""
    term = torch.as_tensor(term)
    if term.dim() >= -particle_dim:
        term = term.sum(tuple(range(term.dim() + particle_dim + 1, term.dim())))
        term = term.reshape(term.shape[term.dim() + particle_dim:])
    else:
        term = term.sum()
    return term


def log_density_ratio(guide_trace, model_trace):
    r"""Per-datapoint :math:`\sum_s \log p(s) - \log q(s)` over the guide's latent sites (an
    auxiliary site: :math:`-\log q` alone) plus the model's observed sites that are not a
    modality (prior factors, global factors), for importance weights; global sites broadcast
    against the data dim (each data point integrates them separately)."""
    total = 0.0
    for n, site in model_trace.nodes.items():
        if (site["type"] == "sample" and site["is_observed"] and site_modality(n) is None
                and not site_is_subsample(site)):
            total = total + site["log_prob"]
    for n in latent_sites(guide_trace):
        q = guide_trace.nodes[n]
        total = total - site_log_prob(q)
        if not is_auxiliary(q):
            total = total + site_log_prob(model_trace.nodes[n])
    return total


def check_scorable(guide_trace):
    """Refuse, with a message naming it, what the multimodal bounds cannot score: a latent that
    cannot be reparameterised (the bounds differentiate through the samples; it would get no
    or a biased gradient), a subsampled data plate, or no latent inside a plate named
    ``"data"``."""
    for n in latent_sites(guide_trace):
        fn = guide_trace.nodes[n]["fn"]
        if not getattr(fn, "has_rsample", False) and not isinstance(fn, _POINT_MASSES):
            raise ValueError(f"guide site '{n}': {type(fn).__name__} cannot be reparameterised, "
                             "and the multimodal bounds use pathwise gradients; train such a "
                             "guide with pyro.infer.TraceGraph_ELBO (a DiscreteMoEGuide: use "
                             "its mixture_guide() with the bounds)")
    for n, site in guide_trace.nodes.items():
        if (site_is_subsample(site) and site["name"] == "data"
                and site["fn"].subsample_size not in (None, site["fn"].size)):
            raise ValueError("pyro.plate('data', N, subsample_size=...) is not supported by the "
                             "multimodal bounds (their terms are per data point of the batch): "
                             "pass the mini-batch itself as data")
    if not local_latents(guide_trace):
        raise ValueError("the guide samples no latent inside pyro.plate('data', N); the "
                         "multimodal protocol names its data plate 'data'")


def check_model_guide(model_trace, guide_trace, data):
    """Validation: every guide latent (auxiliary sites aside) is a model latent and every
    modality is observed."""
    for name in latent_sites(guide_trace):
        site = model_trace.nodes.get(name)
        if is_auxiliary(guide_trace.nodes[name]):
            continue
        if site is None or site["type"] != "sample":
            raise ValueError(f"guide samples site '{name}' but the model has no such site")
    observed = {site_modality(n) for n, s in model_trace.nodes.items()
                if s["type"] == "sample" and s["is_observed"]}
    for m in data:
        if m not in observed:
            raise ValueError(f"modality '{m}': the model observes no site 'x_{m}' (observe each "
                             "modality with pyro_mmvae.observe or pyro.sample('x_<m>', ..., obs=)")


def reconstructions(model_trace, latents, weights: Optional[Mapping[str, float]] = None) -> dict:
    """``{modality: w_m * log p(x_m | z)}`` over the modality sites ``"x_<m>"`` of a model
    trace (scale and mask applied; a modality with several sites sums them). Other observed
    sites are not likelihoods of a modality: inside the data plate (a ``pyro.factor`` on the
    latents) they belong to the prior (:func:`prior_factors`, counted in :func:`rate`),
    outside it they are counted once (:func:`global_log_ratio`)."""
    out = {}
    for name, site in model_trace.nodes.items():
        if (site["type"] == "sample" and site["is_observed"] and name not in latents
                and in_data_plate(site) and site_modality(name) is not None):
            m = site_modality(name)
            w = 1.0 if weights is None else weights.get(m, 1.0)
            value = site["log_prob"] if w == 1 else w * site["log_prob"]
            out[m] = value if m not in out else out[m] + value
    return out


def reconstruction(model_trace, latents, weights: Optional[Mapping[str, float]] = None):
    """Sum over the modality sites ``"x_<m>"`` of ``w_m * log p(x_m | z)``
    (:func:`reconstructions` summed; 0.0 when there is none)."""
    return total(reconstructions(model_trace, latents, weights).values())


def total(values):
    """The sum of ``values`` (tensors or numbers) from the first, with no ``0 + t`` (one
    operation, and one backward node, fewer than ``sum``); 0.0 when there is none."""
    out = 0.0
    for k, value in enumerate(values):
        out = value if k == 0 else out + value
    return out


def latent_values(guide_trace, latents) -> dict:
    """``{name: value}`` of the latent sites ``latents`` of a guide trace."""
    return {name: guide_trace.nodes[name]["value"] for name in latents}


def stl_distribution(site, values: Optional[Mapping[str, torch.Tensor]] = None):
    r"""The guide distribution at ``site`` as sticking the landing (and DReG) evaluates it:
    the guide's parameters detached, the samples it depends on live.

    STL (Roeder et al. 2017) drops from the reparameterised gradient only the score term
    :math:`\partial_\phi\log q_\phi(s)` taken at fixed samples, which has expectation zero. For
    a site of a hierarchical guide, :math:`q_\phi(w\mid z)` with parameters
    :math:`\mu_\phi(z), \sigma_\phi(z)` of the sampled :math:`z=z_\phi(\epsilon)`, the path
    term :math:`\partial_z\log q(w\mid z)\,\partial_\phi z` is not part of that score and must
    be kept: the density is :math:`q(w;\,\mu_{\bar\phi}(z), \sigma_{\bar\phi}(z))` with
    :math:`\bar\phi=\mathrm{stop\_grad}(\phi)` and :math:`z` live. Detaching the tensors
    :math:`\mu, \sigma` themselves (``pyro.distributions.util.detach``) would cut that path
    too. The dropped term is a score of :math:`q(w\mid z)` in :math:`z` and averages to zero
    over :math:`w`, so the ELBO gradient would stay unbiased but would no longer vanish at the
    exact posterior (the point of STL); inside DReG's weighted sum it does not average out,
    and the IWAE gradient would be biased.

    A guide supplies that density as ``site["infer"][STL_FN]`` (:data:`pyro_mmvae.protocol.STL_FN`),
    a callable ``values -> distribution`` where ``values`` maps upstream site names to the samples
    to use (sites not in it: the guide's own samples); :class:`pyro_mmvae.guides.MultimodalGuide`
    does so for its private latents. Without it the site's distribution is detached tensor by
    tensor, which is exact when its parameters depend on no other sample.
    """
    rebuild = (site.get("infer") or {}).get(STL_FN)
    return detach(site["fn"]) if rebuild is None else rebuild(values or {})


def site_log_prob(site, value=None, stop_gradient: bool = False,
                  values: Optional[Mapping[str, torch.Tensor]] = None):
    """``log fn(value)`` of a trace site with its scale and mask applied.

    With ``stop_gradient`` the distribution is :func:`stl_distribution` (guide parameters
    detached, the samples ``values`` of the upstream sites live; STL: Roeder et al. 2017) while
    the value stays live, so the pathwise gradient through the samples is kept.
    """
    fn = stl_distribution(site, values) if stop_gradient else site["fn"]
    value = site["value"] if value is None else value
    return scale_and_mask(fn.log_prob(value), site["scale"], site["mask"])


def kl_estimate(q_site, p_site, analytic: bool, stop_gradient: bool,
                values: Optional[Mapping[str, torch.Tensor]] = None):
    r"""Per-datapoint estimate of :math:`\mathrm{KL}(q\,\|\,p)` at one latent site.

    Uses the registered closed form when ``analytic`` and one exists (scaled and masked like
    ``TraceMeanField_ELBO``), otherwise the one-sample estimate
    :math:`\log q(z) - \log p(z)` at the guide sample (``q`` as :func:`stl_distribution` under
    STL, evaluated at the upstream samples ``values``; ``p`` live). ``p_site`` may be a model
    site (the prior) or another guide site (a conditional prior).
    """
    if analytic:
        try:
            kl = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            pass
        else:
            return scale_and_mask(kl, q_site["scale"], q_site["mask"])
    z = q_site["value"]
    return site_log_prob(q_site, z, stop_gradient, values) - site_log_prob(p_site, z)


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(x)))`` along ``dim``."""
    return x.logsumexp(dim) - torch.log(torch.tensor(float(x.shape[dim]), dtype=x.dtype,
                                                     device=x.device))


def dreg_surrogate(log_w: torch.Tensor, samples: Sequence[torch.Tensor], dim: int = 0,
                   beta: float = 1.0):
    r"""Doubly-reparameterised IWAE gradient (Tucker et al. 2019) as a surrogate.

    ``log_w`` must be computed with the guide densities of :func:`stl_distribution`, and
    ``samples`` must be the latent values it was computed from as identity views of the
    reparameterised samples (``trace_guide(..., views=True)``). Returns
    :math:`\sum_k \tilde w_k \log w_k` with :math:`\tilde w=\operatorname{softmax}(\log w)`
    detached, and hooks every view so that the gradient of :math:`\log w_k` with respect to
    the samples of particle :math:`k` is multiplied by :math:`c_k = 1-\beta(1-\tilde w_k)`
    (:math:`=\tilde w_k` for :math:`\beta=1`). With :math:`s_k=(z_k, w_k)=T_\phi(\epsilon_k)`
    all latents of particle :math:`k` (a hierarchical guide draws :math:`w_k` from
    :math:`q_\phi(w\mid z_k)`), the guide receives

    .. math:: \sum_k \tilde w_k\,c_k\,\partial_s\log w_k\;\frac{d s_k}{d\phi},

    the total derivative :math:`ds_k/d\phi` including the path :math:`\phi\to z_k\to w_k`,
    while parameters entering :math:`\log w_k` directly (the model's, a learned conditional
    prior's) receive :math:`\sum_k\tilde w_k\nabla_\theta\log w_k`.

    Why :math:`c_k`: with :math:`\log w = \log p(x\mid s) + \beta(\log p(s) - \log q_\phi(s))`
    the score term of the IWAE gradient is :math:`-\beta\sum_k\tilde w_k\nabla_\phi\log
    q_\phi(s_k)`, and the reparameterisation identity
    :math:`\mathbb E_q[f(s)\nabla_\phi\log q_\phi(s)] = \mathbb E_\epsilon[\partial_s f\;
    ds/d\phi]` (any differentiable bijection :math:`T_\phi`, the hierarchical one included)
    turns its expectation into :math:`-\beta\sum_k\tilde w_k(1-\tilde w_k)\,\partial_s\log
    w_k\,ds_k/d\phi`. The familiar :math:`\tilde w_k^2` is the case :math:`\beta=1`; used
    with :math:`\beta\neq1` it would be biased.

    Why views: a hook on the sample :math:`z_k` itself would also scale the gradient that
    :math:`w_k` passes back to :math:`z_k` through :math:`q_\phi(w\mid z_k)`'s sampling path,
    which was already scaled at :math:`w_k` (:math:`c_k^2` on that path). The view carries only
    the gradient of :math:`\log w_k`, each path is scaled once, and the backward pass from
    the samples to :math:`\phi` is the ordinary one.
    """
    w = log_w.detach().softmax(dim)
    factor = w if beta == 1 else (1.0 - beta) + beta * w
    for z in samples:
        if z.requires_grad:
            extra = z.dim() - factor.dim()
            fz = factor.reshape(factor.shape + (1,) * extra)
            z.register_hook(lambda g, fz=fz: g * fz)
    return (w * log_w).sum(dim)
