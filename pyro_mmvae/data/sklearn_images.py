r"""The images bundled with scikit-learn that the built-in datasets are made from.

- ``_sk_digits()``: :func:`sklearn.datasets.load_digits`, 1,797 8x8 digits with values
  0..16, and their classes; :func:`split_indices` the library's fixed stratified 80/20
  train/test split of them (seed :data:`SPLIT_SEED`, independent of any dataset seed).
- The two photographs of :func:`sklearn.datasets.load_sample_images` (``china.jpg``,
  ``flower.jpg``), downscaled for an image size, and :func:`poly_backgrounds`, the five
  PolyDigits backgrounds made from them and a procedural texture.
- The resampling (bilinear up, area down; einsum, so bit-reproducible) and hue-rotation
  helpers the recipes of :mod:`pyro_mmvae.data.digits_recipes` render with.

The arrays are cached in memory and read-only; :func:`poly_backgrounds` returns a copy.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import numpy as np

SPLIT_SEED = 0
"""Seed of the fixed stratified train/test split of the sklearn digits."""

TEST_FRACTION = 0.2

SPLITS = ("train", "test")


# --- backgrounds -----------------------------------------------------------------------------

def poly_backgrounds(image_size: int = 16) -> np.ndarray:
    """The five PolyDigits backgrounds at the scale used for ``image_size``: ``(5, Hb, Wb, 3)``
    float64 in ``[0, 1]`` (``Hb, Wb = 107, 160`` at 16 px)."""
    return _poly_backgrounds(_check_int("image_size", image_size, 8)).copy()


@lru_cache(maxsize=4)
def _poly_backgrounds(image_size: int) -> np.ndarray:
    china, flower = _photos(image_size)
    hb, wb = china.shape[:2]
    return _frozen(np.clip(np.stack([
        china,                                            # m0
        flower,                                           # m1
        china[:, ::-1][..., [2, 0, 1]],                   # m2: mirrored, channels BRG
        _hue_rotate(flower[::-1], math.pi),               # m3: upside down, hue + 180 deg
        _texture(hb, wb, image_size),                     # m4: procedural
    ]), 0.0, 1.0))


@lru_cache(maxsize=4)
def _photos(image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """china.jpg and flower.jpg in [0, 1], downscaled by 64 / image_size."""
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images()
    out = []
    for name in ("china.jpg", "flower.jpg"):
        (img,) = [im for im, fn in zip(imgs.images, imgs.filenames) if fn.endswith(name)]
        img = np.asarray(img, dtype=np.float64) / 255.0
        h, w = img.shape[:2]
        out.append(_resize(img, max(image_size, round(h * image_size / 64)),
                           max(image_size, round(w * image_size / 64))))
    return _frozen(out[0]), _frozen(out[1])


def _frozen(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only."""
    a.flags.writeable = False
    return a


def _texture(h: int, w: int, image_size: int) -> np.ndarray:
    """Two coloured oriented sinusoidal gratings plus smooth noise (fixed seed)."""
    rng = np.random.default_rng(12345)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) / image_size
    g1 = 0.5 + 0.5 * np.sin(2 * math.pi * (0.8 * x + 0.6 * y) / 0.45)
    g2 = 0.5 + 0.5 * np.sin(2 * math.pi * (-0.5 * x + 0.87 * y) / 0.8)
    coarse = rng.random((max(2, h // 6), max(2, w // 6)))
    noise = _resize(coarse[..., None], h, w)[..., 0]
    c1, c2, c3 = (np.array([0.95, 0.75, 0.15]), np.array([0.1, 0.35, 0.75]),
                  np.array([0.8, 0.2, 0.4]))
    img = (g1[..., None] * c1 + (1 - g1[..., None]) * c2) * (0.6 + 0.4 * g2[..., None])
    return 0.75 * img + 0.25 * noise[..., None] * c3


# --- numerics helpers ------------------------------------------------------------------------

def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear resampling weights: bilinear (half-pixel centres, like
    ``torch.nn.functional.interpolate(align_corners=False)``) when enlarging, area averaging
    when shrinking."""
    mat = np.zeros((n_out, n_in))
    if n_out >= n_in:
        s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = s - i0
        np.add.at(mat, (np.arange(n_out), i0), 1 - w)
        np.add.at(mat, (np.arange(n_out), i1), w)
    else:
        scale = n_in / n_out
        for o in range(n_out):
            lo, hi = o * scale, (o + 1) * scale
            for i in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
                mat[o, i] = (min(hi, i + 1) - max(lo, i)) / scale
    return mat


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize ``(..., H, W, C)`` images (einsum: no BLAS, so bit-reproducible)."""
    ry = _resize_matrix(img.shape[-3], h)
    rx = _resize_matrix(img.shape[-2], w)
    tmp = np.einsum("hi,...iwc->...hwc", ry, img)
    return np.einsum("vw,...hwc->...hvc", rx, tmp)


_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _hue_matrices(angles: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` RGB -> RGB hue rotations (a rotation of the YIQ chroma plane)."""
    c, s = np.cos(angles), np.sin(angles)
    rot = np.zeros(angles.shape + (3, 3))
    rot[..., 0, 0] = 1
    rot[..., 1, 1], rot[..., 1, 2], rot[..., 2, 1], rot[..., 2, 2] = c, -s, s, c
    return np.einsum("ij,njk,kl->nil", _YIQ2RGB, rot.reshape(-1, 3, 3), _RGB2YIQ)


def _hue_rotate(img: np.ndarray, angle: float) -> np.ndarray:
    return np.clip(np.einsum("ij,hwj->hwi", _hue_matrices(np.array([angle]))[0], img), 0, 1)


def _glyphs(image_size: int) -> np.ndarray:
    """All 1,797 sklearn digits upsampled to ``(1797, H, H)`` in [0, 1]."""
    images = _sk_digits()[0] / 16.0
    return np.clip(_resize(images[..., None], image_size, image_size)[..., 0], 0, 1)


@lru_cache(maxsize=1)
def _sk_digits() -> Tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64)``, read-only."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (_frozen(np.array(d.images, dtype=np.float64)),
            _frozen(np.array(d.target, dtype=np.int64)))


def split_indices(split: str) -> np.ndarray:
    """Sorted indices into :func:`sklearn.datasets.load_digits` of the ``split`` digits
    (stratified 80/20, :data:`SPLIT_SEED`): 1,438 train, 359 test, disjoint."""
    split = _check_split(split)
    labels = _sk_digits()[1]
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[:int(round(TEST_FRACTION * len(idx)))])
    test = np.sort(np.concatenate(test))
    if split == "test":
        return test
    return np.setdiff1d(np.arange(len(labels)), test)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
