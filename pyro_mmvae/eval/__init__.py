"""Evaluation: log-likelihoods, rates and distortions, coherence, latent classification, MCC,
conflict between single-source beliefs."""

from .classifiers import (ModalityClassifier, classifier_accuracy, load_classifiers,
                          save_classifiers, train_modality_classifiers)
from .clustering import clustering_accuracy
from .conflict import CONFLICT_THRESHOLD, conflict_matrix, poe_agreement, single_source_beliefs
from .coherence import (conditional_coherence, encode_subsets, joint_coherence,
                        latent_classification, subset_matrix)
from .information import rate_distortion
from .log_likelihood import log_likelihood, log_marginal
from .mcc import CCA, mcc, mean_corr_coef
from .reencoding import auto_reencode, decode_means, encode_means, fuse_in_place, subset_elbos
from .multisource import (importance_resample, markov_chain_imputation, multisource_evaluation,
                          one_shot_imputation)

__all__ = ["CCA", "CONFLICT_THRESHOLD", "ModalityClassifier", "auto_reencode",
           "classifier_accuracy", "clustering_accuracy", "conditional_coherence",
           "conflict_matrix", "decode_means", "encode_means", "encode_subsets", "fuse_in_place",
           "importance_resample", "joint_coherence", "latent_classification",
           "load_classifiers", "log_likelihood", "log_marginal", "markov_chain_imputation",
           "mcc", "mean_corr_coef", "multisource_evaluation", "one_shot_imputation",
           "poe_agreement", "rate_distortion", "save_classifiers", "single_source_beliefs",
           "subset_elbos", "subset_matrix", "train_modality_classifiers"]
