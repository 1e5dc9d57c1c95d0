r"""Evaluation for multi-source inference (Kurle, Günnemann and van der Smagt, *Multi-Source
Neural Variational Inference*, AAAI 2019, arXiv:1811.04451): every trained model scored under
every objective (the paper's Table 1 is a train x eval table of negative bounds), and
sampling-importance-resampling of a belief (§5.1 and the report's supplement).

Sources and observations are those of :class:`~pyro_mmvae.infer.MultiSourceELBO`: the guide's
``modalities`` are encoded, the model's are scored, ``data`` and ``mask`` hold both.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union

import torch

from pyro_mmvae.infer.multisource import OBJECTIVES, MultiSourceELBO
from pyro_mmvae.infer.traces import (latent_sites, log_density_ratio, log_likelihood,
                                     trace_guide, trace_model)
from pyro_mmvae.protocol import (LATENT_SITE, batch_size as data_size, check_positive_int,
                                 scoring, validate_batch)


@torch.no_grad()
def multisource_evaluation(model, guide, data: Mapping[str, torch.Tensor],
                           mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                           objectives: Sequence[str] = ("ind", "moe", "poe"),
                           num_particles: int = 16, batch_size: int = 256,
                           **kwargs) -> dict:
    r"""Mean negative bounds, nats per data point, of one trained ``model`` and ``guide`` under
    each of ``objectives`` (default L(ind), L(MoE), L(PoE), the rows of MSNVI's Table 1) with
    ``num_particles`` importance samples (the paper's K = 16), in mini-batches of
    ``batch_size``: ``{objective: value}``, lower is better. ``kwargs`` go to
    :class:`~pyro_mmvae.infer.MultiSourceELBO` (``source_weights``, ``sources``, ...)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    mask = validate_batch(data, mask)
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ValueError(f"objectives must be among {OBJECTIVES}, got {objective!r}")
    n = data_size(data)
    out = {}
    for objective in objectives:
        bound = MultiSourceELBO(num_particles, objective=objective, **kwargs)
        total = 0.0
        for start in range(0, n, batch_size):
            x = {m: v[start:start + batch_size] for m, v in data.items()}
            k = {m: v[start:start + batch_size] for m, v in mask.items()}
            total += float(bound.terms(model, guide, x, k)["elbo"].sum())
        out[objective] = -total / n
    return out


@scoring()
@torch.no_grad()
def importance_resample(model, guide, data: Mapping[str, torch.Tensor],
                        mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                        given: Optional[Union[str, Iterable[str]]] = None,
                        num_samples: int = 1000, num_resampled: int = 100,
                        latent_site: str = LATENT_SITE,
                        generator: Optional[torch.Generator] = None) -> dict:
    r"""Sampling-importance-resampling of the belief :math:`q(z\mid x_S)`, ``S = given``.

    1. draw :math:`z_{1:K}\sim q(z\mid x_S)` (``K = num_samples``), the guide conditioned on
       the observed sources of ``given`` (default: all of the guide's);
    2. weigh :math:`w_k = p(x_O\mid z_k)\,p(z_k)/q(z_k\mid x_S)` with the likelihoods of the
       observed observations :math:`O` only;
    3. draw ``num_resampled`` of them per data point with probabilities :math:`w_k/\sum_j w_j`
       (with replacement; ``generator`` drives it).

    This turns a broad single-source belief into draws from (approximately) the posterior of
    everything observed — bimodal where the source alone is ambiguous, as the paper's toy
    shows. Returns ``{"z": (R, N, D) resampled latents, "samples": (K, N, D) the proposals,
    "log_weights": (K, N) normalised log weights, "ess": (N,) effective sample size}``.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    num_resampled = check_positive_int(num_resampled, "num_resampled")
    mask = validate_batch(data, mask)
    sources = list(getattr(guide, "modalities", None) or data)
    observations = list(getattr(model, "modalities", None) or data)
    chosen = sources if given is None else ([given] if isinstance(given, str) else list(given))
    unknown = [m for m in chosen if m not in sources or m not in data]
    if unknown:
        raise ValueError(f"given names '{unknown[0]}', which is not a source in data "
                         f"(sources {sources})")
    g_data = {m: data[m] for m in sources if m in data}
    g_mask = {m: mask[m] & (m in chosen) for m in g_data}
    g_mask.update({m: torch.zeros_like(next(iter(mask.values()))) for m in sources
                   if m not in g_data})
    m_data = {m: data[m] for m in observations if m in data}
    m_mask = {m: mask[m] for m in m_data}
    plates = [("particles", num_samples, -2)]
    guide_tr = trace_guide(guide, g_data, g_mask, plates)
    model_tr = trace_model(model, guide_tr, m_data, m_mask, plates)
    log_w = (log_likelihood(model_tr, latent_sites(guide_tr))
             + log_density_ratio(guide_tr, model_tr))  # (K, N)
    site = guide_tr.nodes.get(latent_site)
    if site is None or site["type"] != "sample":
        raise ValueError(f"the guide samples no site '{latent_site}'")
    z = site["value"]  # (K, N, D)
    log_w = log_w.expand(z.shape[:2])
    norm = log_w - log_w.logsumexp(0, keepdim=True)
    ess = 1.0 / norm.exp().pow(2).sum(0)
    index = torch.multinomial(norm.exp().T.cpu(), num_resampled, replacement=True,
                              generator=generator).T.to(z.device)  # (R, N)
    picked = z.gather(0, index.unsqueeze(-1).expand(index.shape + z.shape[2:]))
    return {"z": picked, "samples": z, "log_weights": norm, "ess": ess}
