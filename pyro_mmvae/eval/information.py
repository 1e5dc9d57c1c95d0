r"""Rates and distortions of a multimodal VAE (Hirt et al. §2.2, App. C; Alemi et al. 2018).

For the observed set :math:`O` and a subset :math:`S\sim\rho`, per data point:

- full reconstruction :math:`\mathbb E_{q(z\mid x_O)}\log p(x_O\mid z)` (minus the full
  distortion) and full rate :math:`\mathrm{KL}(q(z\mid x_O)\,\|\,p(z))`;
- reconstruction :math:`\mathbb E_{q(z\mid x_S)}\log p(x_S\mid z)` and rate
  :math:`R_S=\mathrm{KL}(q(z\mid x_S)\,\|\,p(z))`;
- cross reconstruction :math:`\mathbb E_{q(z\mid x_S)}\log p(x_{O\setminus S}\mid z)`
  (:math:`-D^c_{\setminus S}`, what the mixture bound optimises) and cross rate
  :math:`R_{\setminus S}=\mathrm{KL}(q(z\mid x_O)\,\|\,q(z\mid x_S))`;
- conditional reconstruction :math:`\mathbb E_{q(z\mid x_O)}\log p(x_{O\setminus S}\mid z)`
  (:math:`-D_{\setminus S}`, what the masked bound optimises).

These are the Table 1 columns of Hirt et al. KLs are analytic where registered, else estimated
with ``num_samples`` draws.
"""

from __future__ import annotations

from typing import Optional

import torch

from pyro_mmvae.eval.memory import check_memory_budget, chunks_for_budget, trace_nbytes
from pyro_mmvae.infer.masked_elbo import MaskedMultimodalELBO
from pyro_mmvae.infer.masking import Masking, get_masking
from pyro_mmvae.infer.traces import (latent_sites, local_latents, reconstruction, rate,
                                     trace_guide, trace_model)
from pyro_mmvae.protocol import (check_positive_int, scoring, stack_mask, unstack_mask,
                                 validate_batch)


@scoring()  # only log-densities are read: no generation of masked-out modalities
@torch.no_grad()
def rate_distortion(model, guide, data, mask=None, masking: Masking = "iid_half",
                    num_samples: int = 1, max_plate_nesting: int = 1,
                    memory_budget: Optional[int] = None) -> dict:
    """Per-datapoint rate and reconstruction terms ``{name: (B,)}`` (see module docstring).

    The subsets ``S`` are drawn once for all data points; the terms are then computed in
    chunks of data points (and of the ``num_samples`` particles, where one data point with all
    of them does not fit) holding at most ``memory_budget`` bytes (default 256 MiB;
    :mod:`pyro_mmvae.eval.memory`). Every term is per data point and a particle mean, so the
    chunks only split the work: with the same random numbers the values are those of one
    vectorised call.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    budget = check_memory_budget(memory_budget)
    mask = validate_batch(data, mask, require_observed=True)
    modalities = list(data)
    observed = stack_mask(mask, modalities)
    subset = get_masking(masking)(observed) & observed
    n = observed.shape[0]

    def rows(idx):
        return ({m: v[idx] for m, v in data.items()}, {m: v[idx] for m, v in mask.items()},
                subset[idx])

    def probe(points, particles):
        x, o, s = rows(slice(0, points))
        return trace_nbytes(*_traces(model, guide, x, o, s, particles, max_plate_nesting)[0])

    points, particles = chunks_for_budget(probe, n, num_samples, budget)
    parts = []
    for start in range(0, n, points):
        x, o, s = rows(slice(start, start + points))
        total, done = {}, 0
        while done < num_samples:
            size = min(particles, num_samples - done)
            weight = size / num_samples  # 1.0 (exact) for a single chunk of particles
            for key, value in _terms(model, guide, x, o, s, size, max_plate_nesting).items():
                value = value * weight if weight != 1 else value
                total[key] = value if key not in total else total[key] + value
            done += size
        parts.append(total)
    out = {key: torch.cat([part[key] for part in parts], -1) for key in parts[0]}
    out["subset_size"] = subset.sum(-1)
    return out


def _traces(model, guide, data, mask, subset, num_samples, max_plate_nesting):
    """``(traces, latents)``: guide traces on ``x_O`` and ``x_S`` and the model replayed on
    them scoring ``x_O`` and the observed modalities outside ``S``."""
    modalities = list(data)
    observed = stack_mask(mask, modalities)
    o_mask = unstack_mask(observed, modalities)
    s_mask = unstack_mask(subset, modalities)
    c_mask = unstack_mask(observed & ~subset, modalities)
    plates = [("particles", num_samples, -(max_plate_nesting + 1))]
    guide_o = trace_guide(guide, data, o_mask, plates)
    guide_s = trace_guide(guide, data, s_mask, plates)
    full = trace_model(model, guide_o, data, o_mask, plates)
    cross = trace_model(model, guide_s, data, c_mask, plates)
    return (guide_o, guide_s, full, cross), latent_sites(guide_o)


def _terms(model, guide, data, mask, subset, num_samples, max_plate_nesting) -> dict:
    """The particle-mean terms of :func:`rate_distortion` on one chunk (no ``subset_size``)."""
    dim = -(max_plate_nesting + 1)
    traces, latents = _traces(model, guide, data, mask, subset, num_samples,
                              max_plate_nesting)
    guide_o, guide_s, full, cross = traces
    out = {
        "full_reconstruction": reconstruction(full, latents),
        "full_rate": rate(guide_o, full, local_latents(guide_o), True, False),
        "cross_reconstruction": reconstruction(cross, latents),
    }
    out = {k: v.mean(dim) for k, v in out.items()}
    del traces, guide_o, guide_s, full, cross
    # rate, reconstruction of x_S, cross rate and conditional reconstruction are the terms of
    # the masked bound at this subset (which also handles private latents, Algorithm 2)
    masked = MaskedMultimodalELBO(num_samples, masking=lambda observed: subset,
                                  max_plate_nesting=max_plate_nesting).terms(
        model, guide, data, mask)
    out["reconstruction"] = masked["marginal_reconstruction"]
    out["rate"] = masked["marginal_rate"]
    out["cross_rate"] = masked["cross_rate"]
    out["conditional_reconstruction"] = masked["conditional_reconstruction"]
    return out
