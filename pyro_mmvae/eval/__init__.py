"""Evaluation: importance-sampled log-likelihoods, rates and distortions."""

from .information import rate_distortion
from .log_likelihood import log_likelihood, log_marginal

__all__ = ["log_likelihood", "log_marginal", "rate_distortion"]
