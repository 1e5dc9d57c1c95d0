r"""MVAE's sub-sampled training objective (Wu & Goodman 2018, §3).

.. math::
    \mathcal L_{\rm MVAE}(x) = \mathrm{ELBO}(x_O) + \sum_{m\in O}\mathrm{ELBO}(x_m)
        + \sum_{j=1}^k \mathrm{ELBO}(x_{Y_j}),\qquad
    \mathrm{ELBO}(x_A) = \mathbb E_{q(z\mid x_A)}\log p(x_A\mid z)
        - \beta\,\mathrm{KL}\big(q(z\mid x_A)\,\|\,p(z)\big),

with :math:`Y_j` random subsets of the observed set :math:`O`. Each term reconstructs only its
own subset. The sum is a training objective, not a bound on :math:`\log p(x)` (Sutter et al.
2021).

Reference: Mike Wu and Noah Goodman, *Multimodal Generative Models for Scalable
Weakly-Supervised Learning*, NeurIPS 2018, arXiv:1802.05335.
"""

from __future__ import annotations

import torch
from pyro.infer.util import is_validation_enabled

from .base import MultimodalELBO
from .traces import (check_model_guide, latent_sites, latent_values, local_latents, rate,
                     reconstructions, total)


class SubsampledMultimodalELBO(MultimodalELBO):
    r"""MVAE's objective: full ELBO + every unimodal ELBO + ``num_subsets`` random-subset ELBOs.

    For a model and guide that declare :func:`~pyro_mmvae.protocol.vectorized` (the library's
    do), all :math:`1+M+k` terms run in **one** guide call and **one** model call: their masks
    are stacked along a ``"subsets"`` plate left of the particle plate (so model and guide see
    masks of shape ``(1+M+k, 1, B)``, the singleton being the particle dim); any other program
    is called once per term and particle with plain ``(B,)`` masks. Terms whose subset is empty
    for a data point (a missing modality's unimodal term, a random subset of fewer than three
    observed modalities) are dropped for that data point.

    :param num_subsets: ``k``, random subsets per step (MVAE uses 1).
    :param masking: distribution of the random subsets; default ``"mvae"`` (MVAE's code: a size
        in ``2..|O|-1`` uniformly, then a uniform subset of that size).

    ``terms()`` returns per-datapoint ``elbo`` (the sum), the common ``reconstruction``,
    ``rate`` and ``reconstruction/<m>`` (summed over the stacked subsets, as the bound;
    :meth:`MultimodalELBO.terms`), ``full``, ``unimodal`` (sum of the unimodal terms) and
    ``random`` (sum of the random-subset terms).
    """

    def __init__(self, num_particles: int = 1, *, num_subsets: int = 1, masking="mvae",
                 **kwargs):
        super().__init__(num_particles, masking=masking, **kwargs)
        if num_subsets < 0:
            raise ValueError(f"num_subsets must be >= 0, got {num_subsets}")
        self.num_subsets = num_subsets

    def _terms(self, model, guide, data, observed, modalities):
        b, m = observed.shape
        eye = torch.eye(m, dtype=torch.bool, device=observed.device)
        parts = [observed.unsqueeze(0),  # the full observed set
                 observed.unsqueeze(0) & eye.unsqueeze(1)]  # (M, B, M) unimodal
        if self.num_subsets:
            parts.append(self.draw_subsets(observed.expand(self.num_subsets, b, m), modalities)
                         & observed)
        stacked = torch.cat(parts)  # (T, B, M): full, unimodal, k random
        # {m: (T, 1, B)}: the subsets plate sits left of the particle plate
        masks = self.masks(stacked.unsqueeze(1), modalities)
        guide_tr, model_tr = self.trace_stacked(model, guide, data, masks, stacked.shape[0])
        latents = local_latents(guide_tr)
        if is_validation_enabled():
            check_model_guide(model_tr, guide_tr, data)
        recs = reconstructions(model_tr, latent_sites(guide_tr),
                               self.likelihood_weights)  # {m: (T, S, B)}
        rec = total(recs.values())
        values = latent_values(guide_tr, latent_sites(guide_tr))
        kl = rate(guide_tr, model_tr, latents, self.analytic_kl, self.stop_gradient, values)
        value = self.reduce_particles(rec - self.beta * kl,
                                      [values[n] for n in latents])  # (T, B)
        valid = stacked.any(-1)
        value = torch.where(valid, value, torch.zeros_like(value))
        dim = self.particle_dim

        def reduce(t):  # as the bound: every valid stacked subset's particle mean, summed
            return torch.where(valid, t.mean(dim), torch.zeros_like(valid, dtype=t.dtype)).sum(0)
        return self.with_globals({"elbo": value.sum(0),
                                  **self.common_terms(reduce, recs, kl, modalities),
                                  "full": value[0],
                                  "unimodal": value[1:1 + m].sum(0),
                                  "random": value[1 + m:].sum(0)}, guide_tr, model_tr)
