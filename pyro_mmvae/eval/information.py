r"""Rates and distortions of a multimodal VAE (seed 004 §2.2, App. C; Alemi et al. 2018).

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

These are the Table 1 columns of seed 004. KLs are analytic where registered, else estimated
with ``num_samples`` draws.
"""

from __future__ import annotations

import torch

from pyro_mmvae.infer.masked_elbo import MaskedMultimodalELBO
from pyro_mmvae.infer.masking import Masking, get_masking
from pyro_mmvae.infer.traces import (latent_sites, local_latents, log_likelihood, rate,
                                     trace_guide, trace_model)
from pyro_mmvae.protocol import (check_positive_int, scoring, stack_mask, unstack_mask,
                                 validate_batch)


@scoring()  # only log-densities are read: no generation of masked-out modalities
@torch.no_grad()
def rate_distortion(model, guide, data, mask=None, masking: Masking = "iid_half",
                    num_samples: int = 1, max_plate_nesting: int = 1) -> dict:
    """Per-datapoint rate and reconstruction terms ``{name: (B,)}`` (see module docstring)."""
    num_samples = check_positive_int(num_samples, "num_samples")
    mask = validate_batch(data, mask, require_observed=True)
    modalities = list(data)
    observed = stack_mask(mask, modalities)
    subset = get_masking(masking)(observed) & observed
    o_mask = unstack_mask(observed, modalities)
    s_mask = unstack_mask(subset, modalities)
    c_mask = unstack_mask(observed & ~subset, modalities)
    dim = -(max_plate_nesting + 1)
    plates = [("particles", num_samples, dim)]

    guide_o = trace_guide(guide, data, o_mask, plates)
    guide_s = trace_guide(guide, data, s_mask, plates)
    latents = latent_sites(guide_o)
    full = trace_model(model, guide_o, data, o_mask, plates)
    cross = trace_model(model, guide_s, data, c_mask, plates)
    # rate, reconstruction of x_S, cross rate and conditional reconstruction are the terms of
    # the masked bound at this subset (which also handles private latents, Algorithm 2)
    masked = MaskedMultimodalELBO(num_samples, masking=lambda observed: subset,
                                  max_plate_nesting=max_plate_nesting).terms(
        model, guide, data, mask)
    out = {
        "full_reconstruction": log_likelihood(full, latents),
        "full_rate": rate(guide_o, full, local_latents(guide_o), True, False),
        "cross_reconstruction": log_likelihood(cross, latents),
    }
    out = {k: v.mean(dim) for k, v in out.items()}
    out["reconstruction"] = masked["reconstruction"]
    out["rate"] = masked["rate"]
    out["cross_rate"] = masked["conditional_rate"]
    out["conditional_reconstruction"] = masked["conditional_reconstruction"]
    out["subset_size"] = subset.sum(-1)
    return out
