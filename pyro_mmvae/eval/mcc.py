r"""Mean correlation coefficient between true and inferred latents (Khemakhem et al. 2020).

- **Strong MCC**: the absolute Pearson correlations between every true and every inferred
  coordinate, matched one-to-one by the Hungarian algorithm; the mean of the matched values.
  Invariant to permutation, scaling and sign of the coordinates.
- **Weak MCC**: canonical correlation analysis first aligns the two sets (fitted on one half
  of the data), then the strong MCC of the canonical variates; invariant to any invertible
  affine map of the inferred latents. ``"out"`` evaluates on the held-out half, ``"in"`` on
  the half used for fitting.

Hirt et al. report the weak, out-of-sample version; all four are returned.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _as_2d(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float64)


def mean_corr_coef(x, y) -> float:
    """Strong MCC: Hungarian-matched mean absolute Pearson correlation of ``x, y (N, D)``."""
    x, y = _as_2d(x), _as_2d(y)
    d = x.shape[1]
    corr = np.abs(np.corrcoef(x, y, rowvar=False)[:d, d:])
    corr = np.nan_to_num(corr)  # a constant coordinate correlates with nothing
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def _inv_sqrt(c: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return vecs @ np.diag(np.clip(vals, eps, None) ** -0.5) @ vecs.T


class CCA:
    """Closed-form canonical correlation analysis (whitening and an SVD)."""

    def __init__(self, num_components: int):
        self.num_components = num_components

    def fit(self, x, y):
        x, y = _as_2d(x), _as_2d(y)
        self.mean_x, self.mean_y = x.mean(0), y.mean(0)
        xc, yc = x - self.mean_x, y - self.mean_y
        n = len(x)
        wx, wy = _inv_sqrt(xc.T @ xc / n), _inv_sqrt(yc.T @ yc / n)
        u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
        k = self.num_components
        self.x_weights, self.y_weights = wx @ u[:, :k], wy @ vt.T[:, :k]
        self.correlations = s[:k]
        return self

    def transform(self, x, y):
        x, y = _as_2d(x), _as_2d(y)
        return (x - self.mean_x) @ self.x_weights, (y - self.mean_y) @ self.y_weights


def mcc(true, inferred, num_components=None, seed: int = 0) -> dict:
    """Strong and weak (CCA-aligned) MCC, in and out of sample.

    :param true: ``(N, D)`` true latents.
    :param inferred: ``(N, D')`` inferred latents.
    :param num_components: CCA components (default ``min(D, D')``).
    :returns: ``{"weak_out", "weak_in", "strong_out", "strong_in"}``; the data are split in
        two random halves (``seed``): "in" uses the fitting half, "out" the other.
    """
    x, y = _as_2d(true), _as_2d(inferred)
    if len(x) != len(y):
        raise ValueError(f"true ({len(x)}) and inferred ({len(y)}) latents differ in number")
    if len(x) < 4:
        raise ValueError("MCC needs at least 4 data points")
    perm = np.random.default_rng(seed).permutation(len(x))
    fit, held = perm[: len(x) // 2], perm[len(x) // 2:]
    k = num_components or min(x.shape[1], y.shape[1])
    cca = CCA(k).fit(x[fit], y[fit])
    return {
        "weak_out": mean_corr_coef(*cca.transform(x[held], y[held])),
        "weak_in": mean_corr_coef(*cca.transform(x[fit], y[fit])),
        "strong_out": mean_corr_coef(x[held], y[held]),
        "strong_in": mean_corr_coef(x[fit], y[fit]),
    }
