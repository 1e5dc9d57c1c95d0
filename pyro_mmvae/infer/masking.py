r"""Masking distributions :math:`\rho(S)` over modality subsets (Hirt et al., Remark 6).

A masking distribution is a callable ``rho(observed) -> subset`` on bool tensors ``(B, M)``
that returns, per data point, a subset S of the observed set O (``subset <= observed``).
Named choices:

- ``"iid_half"``: :math:`m_j\sim\mathrm{Bern}(1/2)` independently, i.e. uniform over all
  :math:`2^{|O|}` subsets including the empty set and O (the authors' released code).
- ``"hierarchical"``: :math:`\lambda\sim\mathcal U(0,1)`, then :math:`m_j\mid\lambda\sim
  \mathrm{Bern}(\lambda)` (the paper's text): uniform over cardinalities.
- ``"singletons"``: one observed modality, uniformly (MMVAE).
- ``"nonempty"``: uniform over the non-empty subsets of O (MoPoE).
- ``"mvae"``: MVAE's random subsets (Wu & Goodman 2018, code): a size uniform in
  ``2..|O|-1``, then a uniform subset of that size; empty when ``|O| < 3``.
- ``"zero_augmented"``: O itself or one observed modality, uniformly over these
  :math:`|O|+1` sets — JMVAE-Zero's training distribution (the data augmented with
  single-modality copies whose other modalities are zero-filled, Ngiam et al. 2011; the
  M2VAE paper's baseline), with the guide zeroing masked-out inputs and every observed
  modality reconstructed.
- ``"all"``: S = O.
- ``"none"``: S = ∅.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Union

import torch

MaskingName = Literal["iid_half", "hierarchical", "singletons", "nonempty", "mvae",
                      "zero_augmented", "all", "none"]
Masking = Union[MaskingName, Callable[[torch.Tensor], torch.Tensor]]


def iid_half(observed):
    return observed & (torch.rand(observed.shape, device=observed.device) < 0.5)


def hierarchical(observed):
    lam = torch.rand(observed.shape[:-1] + (1,), device=observed.device)
    return observed & (torch.rand(observed.shape, device=observed.device) < lam)


def nonempty(observed):
    # Rejection sampling of iid-half subsets; each retry keeps the rows already non-empty.
    subset = iid_half(observed)
    redo = ~subset.any(-1) & observed.any(-1)
    while redo.any():
        subset = torch.where(redo.unsqueeze(-1), iid_half(observed), subset)
        redo = ~subset.any(-1) & observed.any(-1)
    return subset


def _random_top(observed, size):
    """Per row, a uniformly random subset of ``size`` observed modalities (size may vary)."""
    keys = torch.rand(observed.shape, device=observed.device).masked_fill(~observed, -1.0)
    rank = keys.argsort(-1, descending=True).argsort(-1)
    return observed & (rank < size.unsqueeze(-1))


def singletons(observed):
    return _random_top(observed, torch.ones(observed.shape[:-1], dtype=torch.long,
                                            device=observed.device))


def mvae(observed):
    count = observed.sum(-1)
    choices = (count - 2).clamp_min(0)  # sizes 2..count-1
    size = 2 + (torch.rand(count.shape, device=observed.device) * choices).long()
    return _random_top(observed, torch.where(count >= 3, size, torch.zeros_like(size)))


def zero_augmented(observed):
    count = observed.sum(-1)
    full = (torch.rand(count.shape, device=observed.device) * (count + 1)).long() == 0
    return torch.where(full.unsqueeze(-1), observed, singletons(observed))


def all_observed(observed):
    return observed.clone()


def empty(observed):
    return torch.zeros_like(observed)


MASKINGS = {"iid_half": iid_half, "hierarchical": hierarchical, "singletons": singletons,
            "nonempty": nonempty, "mvae": mvae, "zero_augmented": zero_augmented,
            "all": all_observed, "none": empty}


def get_masking(masking: Masking) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resolve a masking name, or wrap a custom callable in :func:`checked_masking`."""
    if callable(masking):
        known = any(masking is f for f in MASKINGS.values())
        if known or getattr(masking, "_checked_masking", False):
            return masking
        return checked_masking(masking)
    try:
        return MASKINGS[masking]
    except KeyError:
        raise ValueError(f"unknown masking distribution {masking!r}; choose one of "
                         f"{sorted(MASKINGS)} or pass a callable") from None


def checked_masking(fn: Callable[[torch.Tensor], torch.Tensor]
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a custom masking callable so that what it returns is checked on every call.

    The wrapper raises ``ValueError`` naming ``masking`` unless ``fn(observed)`` is a bool
    tensor of exactly ``observed``'s shape (``(..., B, M)``: the bounds may call it on stacked
    observed masks); the bounds intersect it with ``observed`` themselves.
    """
    name = getattr(fn, "__name__", type(fn).__name__)

    @functools.wraps(fn)
    def masking(observed):
        subset = fn(observed)
        if not torch.is_tensor(subset):
            raise ValueError(f"masking {name!r} must return a bool tensor of shape "
                             f"{tuple(observed.shape)} (the observed mask's), got "
                             f"{type(subset).__name__}")
        if subset.dtype != torch.bool:
            raise ValueError(f"masking {name!r} must return a bool tensor of shape "
                             f"{tuple(observed.shape)} (the observed mask's), got dtype "
                             f"{subset.dtype}")
        if subset.shape != observed.shape:
            raise ValueError(f"masking {name!r} must return a bool tensor of shape "
                             f"{tuple(observed.shape)} (the observed mask's), got shape "
                             f"{tuple(subset.shape)}")
        return subset

    masking._checked_masking = True
    return masking
