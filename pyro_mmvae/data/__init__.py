"""Datasets and the batch/mask conventions."""

from .linear_gaussian import (LinearGaussianData, illustrative_bimodal, private_latent_study,
                              shared_latent_study, simulate)

__all__ = ["LinearGaussianData", "illustrative_bimodal", "private_latent_study",
           "shared_latent_study", "simulate"]
