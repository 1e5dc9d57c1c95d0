"""Evaluation: importance-sampled log-likelihoods, rates and distortions, MCC."""

from .clustering import clustering_accuracy
from .information import rate_distortion
from .log_likelihood import log_likelihood, log_marginal
from .mcc import CCA, mcc, mean_corr_coef

__all__ = ["CCA", "clustering_accuracy", "log_likelihood", "log_marginal", "mcc", "mean_corr_coef", "rate_distortion"]
