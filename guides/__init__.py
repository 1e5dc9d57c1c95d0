"""Guides for multimodal VAEs: modality encoders, aggregators and guide distributions."""

from pyro_mmvae.protocol import subset_index

from .aggregators import MoE, MoPoE, PoE, SubsetMixture, product_of_gaussians
from .discrete_moe import (ComponentDraw, DiscreteMoEGuide, ExpertGate, GatedMoE, MoEBaseline,
                           ScoreFunctionCategorical)
from .distributions import DiagNormalMixture
from .encoders import MLPEncoder, expert_encoder
from .guide import MultimodalGuide
from .networks import ConvImageEncoder, TextEncoder
from .private import AttentionPrivate, IndependentPrivate, PooledPrivate
from .pooling import (MaskedSelfAttentionBlock, SelfAttention, SelfAttentionMixture, SumPooling,
                      SumPoolingMixture)
from .subset_encoders import JointEncoder, SubsetEncoders

__all__ = [
    "AttentionPrivate",
    "ComponentDraw",
    "DiscreteMoEGuide",
    "ExpertGate",
    "GatedMoE",
    "MoEBaseline",
    "ScoreFunctionCategorical",
    "ConvImageEncoder",
    "IndependentPrivate",
    "JointEncoder",
    "PooledPrivate",
    "DiagNormalMixture",
    "MLPEncoder",
    "MoE",
    "MoPoE",
    "MaskedSelfAttentionBlock",
    "MultimodalGuide",
    "SubsetEncoders",
    "PoE",
    "SelfAttention",
    "SelfAttentionMixture",
    "SubsetMixture",
    "SumPooling",
    "SumPoolingMixture",
    "TextEncoder",
    "expert_encoder",
    "product_of_gaussians",
    "subset_index",
]
