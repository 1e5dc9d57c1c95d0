"""Generative models for multimodal VAEs: priors, decoders and Pyro model programs."""

from .decoders import BernoulliDecoder, CategoricalDecoder, GaussianDecoder, LaplaceDecoder
from .linear_gaussian import (ExactPosteriorGuide, LinearGaussianModel, pca_maximum_likelihood,
                              relative_llh_gap)
from .multimodal import MultimodalModel
from .networks import (ConvImageDecoder, TextDecoder, dimension_likelihood_weights, image_modality,
                       text_modality)
from .priors import GaussianMixturePrior, StandardNormalPrior

__all__ = [
    "ExactPosteriorGuide",
    "BernoulliDecoder",
    "CategoricalDecoder",
    "ConvImageDecoder",
    "GaussianDecoder",
    "GaussianMixturePrior",
    "LaplaceDecoder",
    "LinearGaussianModel",
    "MultimodalModel",
    "StandardNormalPrior",
    "TextDecoder",
    "dimension_likelihood_weights",
    "image_modality",
    "pca_maximum_likelihood",
    "relative_llh_gap",
    "text_modality",
]
