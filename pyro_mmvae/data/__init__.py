"""Datasets and the batch/mask conventions.

Every dataset is a :class:`MultimodalDataset` (:mod:`pyro_mmvae.data.dataset`): ``data``,
``mask``, ``labels``, ``latents``, ``info`` and one ``batches()``.
"""

from .correlated import (ConditionalVAE, class_pairing, correlated_pairs, digit_images,
                         e_digit_cvaes, e_digits, procedural_shapes, train_conditional_vae,
                         within_class_shuffle)
from .dataset import MultimodalDataset
from .digits import digits_svhn_text, load_digits_svhn_text, load_poly_digits, poly_digits
from .identifiable import (IdentifiableData, bimodal_label_study, missingness_mask,
                           multimodal_missing_study)
from .linear_gaussian import (LinearGaussianData, illustrative_bimodal, private_latent_study,
                              shared_latent_study, simulate)
from .multisource import (ambiguous_gaussians, binarization, digit_sources, eight_gaussians,
                          eight_gaussians_test_points, pendulum, pendulum_sweep)

__all__ = ["MultimodalDataset", "ConditionalVAE", "class_pairing", "correlated_pairs",
           "digit_images", "e_digit_cvaes", "e_digits", "procedural_shapes",
           "train_conditional_vae", "within_class_shuffle", "digits_svhn_text",
           "load_digits_svhn_text", "load_poly_digits", "poly_digits", "IdentifiableData",
           "LinearGaussianData", "bimodal_label_study",
           "missingness_mask",
           "multimodal_missing_study", "illustrative_bimodal", "private_latent_study",
           "shared_latent_study", "simulate", "ambiguous_gaussians", "binarization",
           "digit_sources", "eight_gaussians", "eight_gaussians_test_points", "pendulum",
           "pendulum_sweep"]
