r"""Non-linear identifiable data generators (Hirt et al., arXiv:2309.00380, §5.2; after
Khemakhem et al. 2020).

Both draw a label :math:`u` uniformly, a latent :math:`z\mid u\sim\mathcal N(m_u,
\operatorname{diag}L_u^2)` with :math:`m_u\sim\mathcal U(-5,5)^d`, :math:`L_u\sim\mathcal
U(0.5,3)^d` (so the marginal of ``z`` is a Gaussian mixture), and observe non-linear mixings
of ``z`` with leaky-ReLU (slope 0.1) layers:

- :func:`bimodal_label_study` (Table 3): ``x = lrelu(z A) A + 0.1 eps`` with ``A`` orthogonal,
  and the label itself as the second modality (one-hot);
- :func:`multimodal_missing_study` (Table 4): ``M`` modalities
  ``x_s = lrelu(lrelu(z A_s) B_s) B_s + 0.5 eps`` with well-conditioned uniform mixing
  matrices, the labels unobserved, and modalities missing completely at random
  (:func:`missingness_mask`, the CPM-Nets generator the authors use).

Everything is seeded; the same seed gives the same arrays. Both return
:class:`~pyro_mmvae.data.MultimodalDataset` s with ``data``, ``mask``, the generating
``latents`` ``(N, d)`` and ``labels`` ``(N,)``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .dataset import MultimodalDataset

IdentifiableData = MultimodalDataset
"""The former container of these generators, now the library's one dataset type (note its
argument order: ``data, mask, labels, latents``)."""


def _lrelu(x, slope=0.1):
    return np.where(x > 0, x, slope * x)


def _label_latents(rng, num_labels, per_label, dim):
    means = rng.uniform(-5, 5, size=(num_labels, dim))
    stds = rng.uniform(0.5, 3, size=(num_labels, dim))
    labels = np.repeat(np.arange(num_labels), per_label)
    z = means[labels] + stds[labels] * rng.standard_normal((len(labels), dim))
    return z, labels


def _tensor(x, dtype):
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.get_default_dtype())


def bimodal_label_study(num_labels: int = 5, per_label: int = 800, latent_dim: int = 2,
                        noise: float = 0.1, seed: int = 0,
                        dtype: Optional[torch.dtype] = None) -> MultimodalDataset:
    """Table 3 data: modalities ``"x"`` (``latent_dim`` features) and ``"label"`` (one-hot)."""
    rng = np.random.default_rng(seed)
    z, labels = _label_latents(rng, num_labels, per_label, latent_dim)
    a, _ = np.linalg.qr(rng.uniform(-1, 1, size=(latent_dim, latent_dim)))
    x = _lrelu(z @ a) @ a + noise * rng.standard_normal(z.shape)
    order = rng.permutation(len(z))
    z, labels, x = z[order], labels[order], x[order]
    onehot = np.eye(num_labels)[labels]
    data = {"x": _tensor(x, dtype), "label": _tensor(onehot, dtype)}
    return MultimodalDataset(data, None, torch.as_tensor(labels), _tensor(z, dtype),
                             name="bimodal_label_study")


def well_conditioned_mixing(rng, rows: int, cols: int, reference_draws: int = 10000,
                            percentile: float = 25.0) -> np.ndarray:
    """Uniform(-1, 1) matrix with unit-norm columns, redrawn until its condition number is at
    most the given percentile of ``reference_draws`` random draws of the same shape."""
    def draw(n):
        w = rng.uniform(-1, 1, size=(n, rows, cols))
        return w / np.linalg.norm(w, axis=-2, keepdims=True)

    threshold = np.percentile(np.linalg.cond(draw(reference_draws)), percentile)
    while True:
        w = draw(1)[0]
        if np.linalg.cond(w) <= threshold:
            return w


def missingness_mask(num_points: int, num_modalities: int, missing_rate: float,
                     rng, tolerance: float = 0.005) -> np.ndarray:
    """MCAR observation mask ``(N, M)`` with about ``missing_rate`` of entries missing and at
    least one observed modality per row (CPM-Nets ``get_sn``, as the authors use it).

    One random modality per row is always kept; extra modalities are drawn independently with
    a rate corrected for overlaps, redrawing until the observed fraction is within
    ``tolerance`` of ``1 - missing_rate``.
    """
    if not 0 <= missing_rate < 1:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    n, m = num_points, num_modalities
    keep_rate = 1 - missing_rate

    def one_per_row():
        return np.eye(m, dtype=bool)[rng.integers(0, m, size=n)]

    if keep_rate <= 1 / m:
        return one_per_row()
    if missing_rate == 0:
        return np.ones((n, m), dtype=bool)
    while True:
        kept = one_per_row()
        extra = m * n * keep_rate - n  # entries to add on top of the kept one
        ratio = extra / (m * n)
        draw = rng.integers(0, 100, size=(n, m)) < int(ratio * 100)
        overlap = np.sum(draw & kept)
        ratio = extra / (1 - overlap / extra) / (m * n)
        draw = rng.integers(0, 100, size=(n, m)) < int(ratio * 100)
        mask = draw | kept
        if abs(keep_rate - mask.mean()) < tolerance:
            return mask


def multimodal_missing_study(num_modalities: int = 5, num_labels: int = 5, per_label: int = 2000,
                             latent_dim: int = 10, modality_dim: int = 25, noise: float = 0.5,
                             missing_rate: float = 0.5, seed: int = 0, authors_split: bool = False,
                             dtype: Optional[torch.dtype] = None):
    """Table 4 data: ``(train, test)`` :class:`~pyro_mmvae.data.MultimodalDataset` s, half the
    points each.

    Missing entries hold zeros and are False in the mask; train and test masks are drawn
    separately. ``authors_split=True`` reproduces the authors' unshuffled split (train holds
    the first labels, test the last), otherwise points are shuffled before splitting.
    """
    rng = np.random.default_rng(seed)
    z, labels = _label_latents(rng, num_labels, per_label, latent_dim)
    data = {}
    for s in range(num_modalities):
        a = well_conditioned_mixing(rng, latent_dim, modality_dim)
        b = well_conditioned_mixing(rng, modality_dim, modality_dim)
        data[f"m{s}"] = (_lrelu(_lrelu(z @ a) @ b) @ b
                         + noise * rng.standard_normal((len(z), modality_dim)))
    order = np.arange(len(z)) if authors_split else rng.permutation(len(z))
    half = len(z) // 2
    splits = []
    for split, idx in (("train", order[:half]), ("test", order[half:])):
        obs = missingness_mask(len(idx), num_modalities, missing_rate, rng)
        mask = {m: torch.as_tensor(obs[:, i]) for i, m in enumerate(data)}
        values = {m: _tensor(np.where(obs[:, i:i + 1], x[idx], 0.0), dtype)
                  for i, (m, x) in enumerate(data.items())}
        splits.append(MultimodalDataset(values, mask, torch.as_tensor(labels[idx]),
                                        _tensor(z[idx], dtype), name="multimodal_missing_study",
                                        split=split))
    return tuple(splits)
