"""Trace plumbing shared by the multimodal bounds and the evaluation code.

Every helper returns *per-datapoint* tensors with the batch shape of the traced sites,
e.g. ``(S, B)`` under a particle plate of size ``S`` (``(K, S, B)`` with a component plate):
the data plate is never summed here, which is what importance-weighted estimates need.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_mmvae.protocol import site_modality

Plate = Tuple[str, int, int]  # (name, size, dim)


def within_plates(fn, plates: Sequence[Plate]):
    """Wrap a Pyro program in vectorising plates (outermost first)."""
    for name, size, dim in reversed(plates):
        fn = pyro.plate(name, size, dim=dim)(fn)
    return fn


def trace_guide(guide, data, mask, plates: Sequence[Plate] = ()):
    """Trace ``guide(data, mask)`` inside ``plates``."""
    return poutine.trace(within_plates(guide, plates)).get_trace(data, mask)


def trace_model(model, guide_trace, data, mask, plates: Sequence[Plate] = ()):
    """Trace ``model(data, mask)`` replayed against ``guide_trace``, with log-probs computed."""
    tr = poutine.trace(poutine.replay(within_plates(model, plates), trace=guide_trace)
                       ).get_trace(data, mask)
    tr.compute_log_prob()
    return tr


def latent_sites(guide_trace):
    """Names of the sampled (non-observed) sites of a guide trace, in order (plate subsample
    sites excluded)."""
    return [name for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)]


def check_model_guide(model_trace, latents, data):
    """Validation: every guide latent is a model latent and every modality is observed."""
    for name in latents:
        site = model_trace.nodes.get(name)
        if site is None or site["type"] != "sample":
            raise ValueError(f"guide samples site '{name}' but the model has no such site")
    observed = {site_modality(n) for n, s in model_trace.nodes.items()
                if s["type"] == "sample" and s["is_observed"]}
    for m in data:
        if m not in observed:
            raise ValueError(f"modality '{m}': the model observes no site 'x_{m}' (observe each "
                             "modality with pyro_mmvae.observe or pyro.sample('x_<m>', ..., obs=)")


def log_likelihood(model_trace, latents, weights: Optional[Mapping[str, float]] = None):
    """Sum over observed sites of ``w_m * log p(x_m | z)`` (scale and mask applied)."""
    total = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and name not in latents:
            w = 1.0 if weights is None else weights.get(site_modality(name), 1.0)
            total = total + w * site["log_prob"]
    return total


def site_log_prob(site, value=None, stop_gradient: bool = False):
    """``log fn(value)`` of a trace site with its scale and mask applied.

    With ``stop_gradient`` the distribution's parameters are detached (STL: Roeder et al. 2017)
    while the value stays live, so the pathwise gradient through the sample is kept.
    """
    fn = detach(site["fn"]) if stop_gradient else site["fn"]
    value = site["value"] if value is None else value
    return scale_and_mask(fn.log_prob(value), site["scale"], site["mask"])


def kl_estimate(q_site, p_site, analytic: bool, stop_gradient: bool):
    r"""Per-datapoint estimate of :math:`\mathrm{KL}(q\,\|\,p)` at one latent site.

    Uses the registered closed form when ``analytic`` and one exists (scaled and masked like
    ``TraceMeanField_ELBO``), otherwise the one-sample estimate
    :math:`\log q(z) - \log p(z)` at the guide sample (``q`` detached under STL, ``p`` live).
    ``p_site`` may be a model site (the prior) or another guide site (a conditional prior).
    """
    if analytic:
        try:
            kl = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            pass
        else:
            return scale_and_mask(kl, q_site["scale"], q_site["mask"])
    z = q_site["value"]
    return site_log_prob(q_site, z, stop_gradient) - site_log_prob(p_site, z)


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(x)))`` along ``dim``."""
    return x.logsumexp(dim) - torch.log(torch.tensor(float(x.shape[dim]), dtype=x.dtype,
                                                     device=x.device))


def dreg_surrogate(log_w: torch.Tensor, samples: Sequence[torch.Tensor], dim: int = 0,
                   beta: float = 1.0):
    r"""Doubly-reparameterised IWAE gradient (Tucker et al. 2019) as a surrogate.

    ``log_w`` must be computed with *detached* guide parameters (as under STL). Returns
    :math:`\sum_k \tilde w_k \log w_k` with :math:`\tilde w=\operatorname{softmax}(\log w)`
    detached, and hooks every latent sample so that its gradient is multiplied by
    :math:`c_k = 1-\beta(1-\tilde w_k)` (:math:`=\tilde w_k` for :math:`\beta=1`): the guide
    receives :math:`\sum_k\tilde w_k c_k\,\partial\log w_k/\partial z_k\,\partial z_k/\partial
    \phi`, the model :math:`\sum_k\tilde w_k\nabla\log w_k`.

    Why :math:`c_k`: with :math:`\log w = \log p(x\mid z) + \beta(\log p(z) - \log q_\phi(z))`
    the score term of the IWAE gradient is :math:`-\beta\sum_k\tilde w_k\nabla_\phi\log
    q_\phi(z_k)`, and the reparameterisation identity turns its expectation into
    :math:`-\beta\sum_k\tilde w_k(1-\tilde w_k)\,\partial_z\log w_k\,\partial_\phi z_k`. The
    familiar :math:`\tilde w_k^2` is the case :math:`\beta=1`; used with :math:`\beta\neq1` it
    would be biased.
    """
    w = log_w.detach().softmax(dim)
    factor = w if beta == 1 else (1.0 - beta) + beta * w
    for z in samples:
        if z.requires_grad:
            extra = z.dim() - factor.dim()
            fz = factor.reshape(factor.shape + (1,) * extra)
            z.register_hook(lambda g, fz=fz: g * fz)
    return (w * log_w).sum(dim)
