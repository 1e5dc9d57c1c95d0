"""Clustering accuracy: agreement of cluster assignments with labels up to relabelling."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def clustering_accuracy(labels, assignments) -> float:
    """Fraction of points whose cluster, after the best one-to-one relabelling of clusters to
    labels (Hungarian algorithm on the contingency table), equals their label."""
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(int).ravel()
    c = np.asarray(assignments.cpu() if hasattr(assignments, "cpu") else assignments
                   ).astype(int).ravel()
    if y.shape != c.shape:
        raise ValueError(f"labels ({y.shape[0]}) and assignments ({c.shape[0]}) differ in length")
    table = np.zeros((c.max() + 1, y.max() + 1))
    np.add.at(table, (c, y), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(y))
