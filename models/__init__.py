"""Generative models for multimodal VAEs: priors, decoders and Pyro model programs."""

from .decoders import BernoulliDecoder, GaussianDecoder, LaplaceDecoder
from .linear_gaussian import LinearGaussianModel, pca_maximum_likelihood, relative_llh_gap
from .multimodal import MultimodalModel
from .priors import GaussianMixturePrior, StandardNormalPrior

__all__ = [
    "BernoulliDecoder",
    "GaussianDecoder",
    "GaussianMixturePrior",
    "LaplaceDecoder",
    "LinearGaussianModel",
    "MultimodalModel",
    "StandardNormalPrior",
    "pca_maximum_likelihood",
    "relative_llh_gap",
]
