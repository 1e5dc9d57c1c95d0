"""The multimodal protocol: batches, masks and site names.

A batch is ``data: dict[str, Tensor]`` (one tensor per modality, leading dim ``N``) and
``mask: dict[str, BoolTensor]`` of shape ``(N,)``, True where that modality is observed for that
data point. Missing values hold a finite placeholder (zeros), never NaN.

A model is a Pyro program ``model(data, mask)`` that, inside ``pyro.plate("data", N)``, samples
the latent ``"z"`` and observes each modality ``m`` at site ``"x_<m>"`` under
``poutine.mask(mask=mask[m])`` (use :func:`observe`). A guide is a Pyro program
``guide(data, mask)`` that samples the same latents conditioned only on the modalities whose mask
is True.

The library's bounds call model and guide several times with different masks, and may give a
mask leading batch dimensions (a stack of subsets ``(T, N)``, one per plate entry, as
:class:`~pyro_mmvae.infer.SubsampledMultimodalELBO` does): model and guide must broadcast masks
against their batch shape as they broadcast particle dimensions. The library's own
:class:`pyro_mmvae.models.MultimodalModel` and :class:`pyro_mmvae.guides.MultimodalGuide` do.
"""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro import poutine

LATENT_SITE = "z"
OBS_PREFIX = "x_"
PRIVATE_PREFIX = "w_"
DATA_PLATE = "data"
# Key of a guide site's ``infer`` dict: a callable ``values -> distribution`` that rebuilds the
# site's distribution with the guide's parameters detached and the upstream samples live
# (sticking-the-landing density of a hierarchical guide; see
# :func:`pyro_mmvae.infer.traces.stl_distribution`).
STL_FN = "stl_fn"

Data = Mapping[str, torch.Tensor]
Mask = Mapping[str, torch.Tensor]


def obs_site(modality: str) -> str:
    """The observation site name of a modality: ``"x_<modality>"``."""
    return OBS_PREFIX + modality


def private_site(modality: str) -> str:
    """The private-latent site name of a modality: ``"w_<modality>"``."""
    return PRIVATE_PREFIX + modality


def site_modality(name: str) -> Optional[str]:
    """The modality of an observation site name, or None if it does not follow the protocol."""
    return name[len(OBS_PREFIX):] if name.startswith(OBS_PREFIX) else None


def batch_size(data: Data) -> int:
    """Leading dimension shared by all modality tensors."""
    return next(iter(data.values())).shape[0]


def full_mask(data: Data) -> dict:
    """A mask observing every modality of every data point."""
    n = batch_size(data)
    return {m: torch.ones(n, dtype=torch.bool, device=x.device) for m, x in data.items()}


def observe(modality: str, fn, data: Data, mask: Optional[Mask] = None):
    """Observe ``data[modality]`` at site ``"x_<modality>"`` under that modality's mask.

    Must be called inside the model's ``pyro.plate("data", N)``. The mask may carry leading
    batch dimensions (stacked subsets); ``poutine.mask`` broadcasts it against the site's
    batch shape. With a mask that is False everywhere the site stays in the trace and
    contributes exactly zero log-density.
    """
    value = data.get(modality)
    if mask is None:
        return pyro.sample(obs_site(modality), fn, obs=value)
    with poutine.mask(mask=mask[modality]):
        return pyro.sample(obs_site(modality), fn, obs=value)


def stack_mask(mask: Mask, modalities) -> torch.Tensor:
    """Stack a mask dict into a bool tensor ``(..., N, M)`` in the order of ``modalities``."""
    return torch.stack([mask[m] for m in modalities], dim=-1)


def unstack_mask(tensor: torch.Tensor, modalities) -> dict:
    """Inverse of :func:`stack_mask`."""
    return {m: tensor[..., i] for i, m in enumerate(modalities)}


def validate_batch(data: Data, mask: Optional[Mask] = None, *, modalities=None,
                   require_observed: bool = False) -> dict:
    """Check a batch and its mask; return the mask (all-observed if ``mask`` is None).

    Raises ``ValueError`` naming the modality and the problem for: an empty batch, a
    non-tensor, modality tensors with different leading dimension, an unknown modality (a mask
    key, or a name outside ``modalities``), NaN or infinite values in observed entries, a
    non-boolean or wrongly shaped mask, NaN anywhere (missing entries must hold a finite
    placeholder, or they would poison gradients), and (with ``require_observed``) a data point with no
    observed modality.
    """
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty dict {modality: tensor}")
    sizes = {}
    for m, x in data.items():
        if not torch.is_tensor(x):
            raise ValueError(f"modality '{m}': expected a tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError(f"modality '{m}': expected a leading batch dimension, got a scalar")
        sizes[m] = x.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"'{m}': {n}" for m, n in sizes.items())
        raise ValueError(f"modalities have different batch sizes N ({listing})")
    n = next(iter(sizes.values()))
    if modalities is not None:
        unknown = sorted(set(data) - set(modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the model knows "
                             f"{sorted(modalities)}")
    if mask is None:
        mask = full_mask(data)
    else:
        unknown = sorted(set(mask) - set(data))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}' in mask: data has {sorted(data)}")
        missing = sorted(set(data) - set(mask))
        if missing:
            raise ValueError(f"modality '{missing[0]}' has data but no mask entry")
        for m, mk in mask.items():
            if not torch.is_tensor(mk) or mk.dtype != torch.bool:
                dtype = mk.dtype if torch.is_tensor(mk) else type(mk).__name__
                raise ValueError(f"modality '{m}': mask must be a bool tensor, got {dtype}")
            if mk.shape != (n,):
                raise ValueError(f"modality '{m}': mask must have shape ({n},), got "
                                 f"{tuple(mk.shape)}")
    for m, x in data.items():
        if x.is_floating_point() or x.is_complex():
            bad = ~torch.isfinite(x.reshape(n, -1)).all(-1)
            if bad.any():
                seen = bad & mask[m]
                where = "observed" if seen.any() else "masked-out"
                idx = (seen if seen.any() else bad).nonzero().flatten()[:5].tolist()
                raise ValueError(f"modality '{m}': NaN or infinite values in {where} data points "
                                 f"{idx}; fill missing entries with a finite placeholder (zeros) "
                                 "and mask them out")
    if require_observed:
        none = ~stack_mask(mask, list(data)).any(-1)
        if none.any():
            idx = none.nonzero().flatten()[:5].tolist()
            raise ValueError(f"data points {idx} have no observed modality; this bound needs "
                             "at least one")
    return dict(mask)
