"""Multimodal bounds as ``pyro.infer.ELBO`` subclasses (one bound per module)."""

from .base import COMMON_TERMS, MultimodalELBO
from .masked_elbo import MaskedMultimodalELBO
from .masking import MASKINGS, get_masking
from .mixture_elbo import MixtureMultimodalELBO
from .multisource import MultiSourceELBO
from .recursive_elbo import (JointMultimodalELBO, RecursiveMultimodalELBO, beta_normalized,
                             recursive_weights)
from .schedules import linear_warmup
from .subsampled_elbo import SubsampledMultimodalELBO

__all__ = [
    "COMMON_TERMS",
    "JointMultimodalELBO",
    "MASKINGS",
    "MaskedMultimodalELBO",
    "MixtureMultimodalELBO",
    "MultiSourceELBO",
    "MultimodalELBO",
    "RecursiveMultimodalELBO",
    "SubsampledMultimodalELBO",
    "beta_normalized",
    "get_masking",
    "linear_warmup",
    "recursive_weights",
]
