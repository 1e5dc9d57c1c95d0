r"""Evaluation of the M2VAE (*Deep Generative Models for learning Coherent Latent
Representations from Multi-Modal Data*, ICLR 2019 submission, §4; later Korthals et al.):
the evaluation ELBO of every encoder subset (eq. 12), in-place sensor fusion (eq. 13) and
auto re-encoding trajectories (Fig. 6).

- :func:`subset_elbos`: encode from a subset :math:`S`, decode **all** observed modalities,
  :math:`\mathcal L_S = \mathbb E_{q(z\mid x_S)}\log\frac{p(x_O\mid z)\,p(z)}{q(z\mid x_S)}`
  (the paper's Table 1 reports :math:`\mathcal L_{ab}, \mathcal L_a, \mathcal L_b`; values
  compare encoders of one model).
- :func:`decode_means` / :func:`encode_means`: the decoders' means at given latents and the
  guide's posterior mean for given (possibly decoded) inputs.
- :func:`fuse_in_place`: :math:`z^*` from the subset encoder of :math:`\{m\}\cup S'` fed the new
  observation of :math:`m` and the decoded reconstructions :math:`\hat x_{S'}` of what was
  seen before (eq. 13).
- :func:`auto_reencode`: the trajectory :math:`z_{t+1} = \mathbb E\,q(z\mid\hat x_{S}(z_t))`,
  whose attractors show whether the encoders are coherent (no label switching).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import torch
from pyro import poutine

from pyro_mmvae.eval.coherence import subset_matrix
from pyro_mmvae.infer.traces import (latent_sites, log_density_ratio, reconstruction, trace_guide,
                                     trace_model)
from pyro_mmvae.protocol import (LATENT_SITE, check_positive_int, obs_site, scoring,
                                 validate_batch)


@scoring()
@torch.no_grad()
def subset_elbos(model, guide, data: Mapping[str, torch.Tensor],
                 mask: Optional[Mapping[str, torch.Tensor]] = None, *,
                 subsets: Optional[Iterable[Union[str, Iterable[str]]]] = None,
                 num_particles: int = 1) -> dict:
    r"""The evaluation ELBO of eq. 12 for every encoder subset ``S`` (``subsets`` as
    :func:`~pyro_mmvae.eval.subset_matrix` takes them, default all :math:`2^M-1` by size): one
    guide call with the subsets stacked, one model call scoring every observed modality,
    averaged over ``num_particles`` draws. Returns ``{"names": [...], "subsets": (K, M) bool,
    "elbo": (K, N)}``, NaN where a data point does not observe all of ``S``."""
    num_particles = check_positive_int(num_particles, "num_particles")
    mask = validate_batch(data, mask)
    modalities = list(data)
    observed = torch.stack([mask[m] for m in modalities], -1)  # (N, M)
    names, rows = subset_matrix(subsets, modalities, observed.device)  # (K, M)
    k = rows.shape[0]
    g_mask = {m: (rows[:, i].unsqueeze(-1) & observed[:, i]).unsqueeze(1)
              for i, m in enumerate(modalities)}  # (K, 1, N)
    plates = [("subsets", k, -3), ("particles", num_particles, -2)]
    guide_tr = trace_guide(guide, data, g_mask, plates)
    model_tr = trace_model(model, guide_tr, data, mask, plates)
    log_w = reconstruction(model_tr, latent_sites(guide_tr)) + log_density_ratio(guide_tr,
                                                                                 model_tr)
    value = log_w.mean(-2)  # (K, N)
    present = ~(rows.unsqueeze(1) & ~observed.unsqueeze(0)).any(-1)  # (K, N)
    value = torch.where(present, value, torch.full_like(value, float("nan")))
    return {"names": names, "subsets": rows, "elbo": value}


@torch.no_grad()
def decode_means(model, z: torch.Tensor, modalities: Iterable[str],
                 latent_site: str = LATENT_SITE) -> dict:
    """``{m: mean of p(x_m | z)}`` for latents ``z`` ``(N, D)``: the model run with nothing
    observed and ``latent_site`` fixed at ``z``."""
    n = z.shape[0]
    none = {m: torch.zeros(n, dtype=torch.bool, device=z.device)
            for m in getattr(model, "modalities", None) or modalities}
    tr = poutine.trace(poutine.condition(model, {latent_site: z})).get_trace({}, none)
    return {m: tr.nodes[obs_site(m)]["fn"].mean for m in modalities}


@torch.no_grad()
def encode_means(guide, data: Mapping[str, torch.Tensor],
                 mask: Optional[Mapping[str, torch.Tensor]] = None,
                 latent_site: str = LATENT_SITE) -> torch.Tensor:
    """The mean ``(N, D)`` of the guide's ``q(z | x_S)`` for ``data`` and ``mask`` (modalities
    of the guide absent from ``data`` are masked out)."""
    mask = validate_batch(data, mask)
    modalities = list(getattr(guide, "modalities", None) or data)
    ref = next(iter(mask.values()))
    g_mask = {m: mask[m] if m in mask else torch.zeros_like(ref) for m in modalities}
    tr = trace_guide(guide, {m: data[m] for m in modalities if m in data}, g_mask)
    return tr.nodes[latent_site]["fn"].mean


@torch.no_grad()
def fuse_in_place(model, guide, z: torch.Tensor, new: Mapping[str, torch.Tensor],
                  seen: Iterable[str], latent_site: str = LATENT_SITE) -> torch.Tensor:
    r"""In-place sensor fusion (eq. 13): the mean of :math:`q(z\mid x_m, \hat x_{S'})` for a
    new observation ``new`` ``{m: (N, ...)}`` and the reconstructions
    :math:`\hat x_{S'}` = :func:`decode_means` of ``z`` for the modalities ``seen`` before."""
    seen = [m for m in seen if m not in new]
    data = {**decode_means(model, z, seen, latent_site), **dict(new)}
    return encode_means(guide, data, None, latent_site)


@torch.no_grad()
def auto_reencode(model, guide, z: torch.Tensor, modalities: Iterable[str], steps: int = 20,
                  latent_site: str = LATENT_SITE) -> torch.Tensor:
    r"""The auto re-encoding trajectory ``(steps + 1, N, D)`` from ``z`` ``(N, D)``:
    :math:`z_{t+1} = \mathbb E\,q(z\mid \hat x_S(z_t))` with :math:`\hat x_S` the decoders'
    means of ``modalities`` (the paper's Fig. 6 from random seeds: coherent encoders keep every
    seed in its own class's attractor)."""
    steps = check_positive_int(steps, "steps")
    modalities = list(modalities)
    out = [z]
    for _ in range(steps):
        z = encode_means(guide, decode_means(model, z, modalities, latent_site), None,
                         latent_site)
        out.append(z)
    return torch.stack(out)


__all__ = ["auto_reencode", "decode_means", "encode_means", "fuse_in_place", "subset_elbos"]
