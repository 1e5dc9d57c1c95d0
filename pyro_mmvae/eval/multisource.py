r"""Evaluation for multi-source inference (Kurle, Günnemann and van der Smagt, *Multi-Source
Neural Variational Inference*, AAAI 2019, arXiv:1811.04451): every trained model scored under
every objective (the paper's Table 1 is a train x eval table of negative bounds),
sampling-importance-resampling of a belief (§5.1 and the report's supplement), and imputation
of missing parts in one shot from the observed parts' belief against the Markov-chain baseline
of Rezende et al. (§5.2, Fig. 4).

Sources and observations are those of :class:`~pyro_mmvae.infer.MultiSourceELBO`: the guide's
``modalities`` are encoded, the model's are scored, ``data`` and ``mask`` hold both.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union

import torch

from pyro_mmvae.infer.multisource import OBJECTIVES, MultiSourceELBO
from pyro_mmvae.infer.traces import (latent_sites, log_density_ratio, reconstruction,
                                     trace_guide, trace_model)
from pyro_mmvae.protocol import (LATENT_SITE, num_points, check_positive_int,
                                 obs_site, scoring, validate_batch)


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
    n = num_points(data)
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
    plates = [("particles", num_samples, -2)]
    guide_tr = _encode(guide, data, {m: v & (m in chosen) for m, v in mask.items()}, plates)
    m_data = {m: data[m] for m in observations if m in data}
    model_tr = trace_model(model, guide_tr, m_data, {m: mask[m] for m in m_data}, plates)
    log_w = (reconstruction(model_tr, latent_sites(guide_tr))
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


def _names(names, what: str, allowed) -> list:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [m for m in names if m not in allowed]
    if unknown:
        raise ValueError(f"{what} names '{unknown[0]}', which is not in data "
                         f"({sorted(allowed)})")
    if not names:
        raise ValueError(f"{what} names no modality")
    return names


def _decode(model, guide_tr, data, mask, targets, plates=()):
    """The model replayed on ``guide_tr``'s latents (inside ``plates``) with ``targets``
    masked out, so generated: ``{target: site}`` of its trace."""
    m_data = {m: data[m] for m in getattr(model, "modalities", None) or data if m in data}
    m_mask = {m: mask[m] & (m not in targets) for m in m_data}
    tr = trace_model(model, guide_tr, m_data, m_mask, plates)
    return {m: tr.nodes[obs_site(m)] for m in targets}


def _encode(guide, data, mask, plates=()):
    sources = list(getattr(guide, "modalities", None) or data)
    g_data = {m: data[m] for m in sources if m in data}
    g_mask = {m: mask[m] for m in g_data}
    g_mask.update({m: torch.zeros_like(next(iter(mask.values()))) for m in sources
                   if m not in g_data})
    return trace_guide(guide, g_data, g_mask, plates)


@torch.no_grad()
def one_shot_imputation(model, guide, data: Mapping[str, torch.Tensor],
                        targets: Union[str, Iterable[str]],
                        mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                        num_samples: int = 10) -> dict:
    r"""MSNVI's imputation (§5.2, Fig. 4): encode the observed parts once — the guide's belief
    :math:`q(z\mid x_S)` of every observed source outside ``targets``, for
    ``PoE(prior_expert="divide")`` their fused belief — and decode the missing ``targets``.

    :returns: ``{"log_likelihood": (N,)`` the mean over ``num_samples`` draws
        :math:`z\sim q(z\mid x_S)` of :math:`\log p(x_T\mid z)` at the true targets (the
        figure's imputation log-likelihood), ``"samples": {target: (num_samples, N, ...)}``
        decoder draws, ``"mean": {target: (num_samples, N, ...)}`` decoder means ``}``.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    mask = validate_batch(data, mask)
    targets = _names(targets, "targets", data)
    given = {m: v & (m not in targets) for m, v in mask.items()}
    plates = [("particles", num_samples, -2)]
    guide_tr = _encode(guide, data, given, plates)
    sites = _decode(model, guide_tr, data, mask, targets, plates)
    ll = sum(site["fn"].log_prob(data[m]) for m, site in sites.items())  # (S, N)
    return {"log_likelihood": ll.mean(0),
            "samples": {m: site["value"] for m, site in sites.items()},
            "mean": {m: site["fn"].mean for m, site in sites.items()}}


@torch.no_grad()
def markov_chain_imputation(model, guide, data: Mapping[str, torch.Tensor],
                            targets: Union[str, Iterable[str]],
                            mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                            steps: int = 150, init: Optional[Mapping] = None,
                            generator: Optional[torch.Generator] = None) -> dict:
    r"""The Markov-chain imputation baseline of Rezende, Mohamed and Wierstra (ICML 2014,
    §5), the comparison of MSNVI's Fig. 4: start the missing ``targets`` at ``init`` (default
    ``Bernoulli(0.5)`` draws), then ``steps`` times encode everything — observed parts and the
    current imputation — with the guide, draw :math:`z`, decode, and replace the targets by a
    draw of the decoder (the observed parts stay clamped), recording
    :math:`\log p(x_T\mid z)` of the true targets at every step.

    :returns: ``{"log_likelihood": (steps, N)`` the trace, ``"imputed": {target: (N, ...)}``
        the last imputation ``}``.
    """
    steps = check_positive_int(steps, "steps")
    mask = validate_batch(data, mask)
    targets = _names(targets, "targets", data)
    current = dict(data)
    for m in targets:
        if init is not None and m in init:
            current[m] = init[m]
        else:
            u = torch.rand(data[m].shape, generator=generator, dtype=data[m].dtype)
            current[m] = (u.to(data[m].device) < 0.5).to(data[m].dtype)
    everything = {m: torch.ones_like(v) for m, v in mask.items()}
    trace = []
    for _ in range(steps):
        guide_tr = _encode(guide, current, everything)
        sites = _decode(model, guide_tr, current, everything, targets)
        trace.append(sum(site["fn"].log_prob(data[m]) for m, site in sites.items()))
        current.update({m: site["value"] for m, site in sites.items()})
    return {"log_likelihood": torch.stack(trace), "imputed": {m: current[m] for m in targets}}
