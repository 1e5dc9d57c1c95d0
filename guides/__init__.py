"""Guides for multimodal VAEs: modality encoders, aggregators and guide distributions."""

from .aggregators import MoE, MoPoE, PoE, SubsetMixture, product_of_gaussians
from .distributions import DiagNormalMixture
from .encoders import MLPEncoder, expert_encoder
from .guide import MultimodalGuide

__all__ = [
    "DiagNormalMixture",
    "MLPEncoder",
    "MoE",
    "MoPoE",
    "MultimodalGuide",
    "PoE",
    "SubsetMixture",
    "expert_encoder",
    "product_of_gaussians",
]
