r"""The PolyDigits and DigitsSVHNText recipes: numpy arrays from the bundled images.

:func:`build_poly_digits` and :func:`build_digits_svhn_text` turn the sklearn digits of a split
(:func:`~pyro_mmvae.data.sklearn_images.split_indices`) and the photographs of
:mod:`pyro_mmvae.data.sklearn_images` into the arrays of one cache file: ``uint8`` images
``(N, C, H, W)`` per modality, the text as alphabet indices ``(N, 8)``, ``labels`` and the
generation records (``source_<modality>``, ``text_offset``, ``svhn_distractors``). The recipes
themselves are documented by :func:`pyro_mmvae.data.digits.poly_digits` and
:func:`pyro_mmvae.data.digits.digits_svhn_text`, which cache and load these arrays.
"""

from __future__ import annotations

import math

import numpy as np

from .sklearn_images import (_RGB2YIQ, SPLITS, _glyphs, _hue_matrices, _photos,
                             _poly_backgrounds, _sk_digits, split_indices)
from .text import ALPHABET as TEXT_ALPHABET
from .text import DIGIT_WORDS, TEXT_LENGTH

POLY_MODALITIES = ("m0", "m1", "m2", "m3", "m4")
DST_MODALITIES = ("mnist", "svhn", "text")

_DATASET_IDS = {"polydigits": 1, "digitssvhntext": 2}
_CHUNK = 2048  # tuples composited at once (bounds memory for large image sizes)


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, _DATASET_IDS[name], SPLITS.index(split)])


def _quantize(x: np.ndarray) -> np.ndarray:
    """``(n, H, W, C)`` floats in [0, 1] -> ``(n, C, H, W)`` uint8."""
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2)


def _text_indices(labels: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    idx = np.full((len(labels), length), TEXT_ALPHABET.index(" "), dtype=np.int64)
    for i, (c, o) in enumerate(zip(labels.tolist(), offsets.tolist())):
        for j, ch in enumerate(DIGIT_WORDS[c]):
            idx[i, o + j] = TEXT_ALPHABET.index(ch)
    return idx


# --- builders (numpy arrays -> the cache file) -------------------------------------------------

def build_poly_digits(split: str, image_size: int, num_tuples: int, seed: int) -> dict:
    """The arrays of a PolyDigits split (recipe: :func:`pyro_mmvae.data.digits.poly_digits`)."""
    rng = _rng("polydigits", split, seed)
    pool = split_indices(split)
    labels_all = _sk_digits()[1]
    rounds = math.ceil(num_tuples / len(pool))
    # per modality, per class: `rounds` independent permutations of the class's digits
    src = np.empty((len(POLY_MODALITIES), rounds * len(pool)), dtype=np.int64)
    labels = np.empty(rounds * len(pool), dtype=np.int64)
    start = 0
    for c in range(10):
        idx = pool[labels_all[pool] == c]
        n = rounds * len(idx)
        labels[start:start + n] = c
        for m in range(len(POLY_MODALITIES)):
            src[m, start:start + n] = np.concatenate([rng.permutation(idx) for _ in range(rounds)])
        start += n
    keep = rng.permutation(len(labels))[:num_tuples]
    labels, src = labels[keep], src[:, keep]

    glyphs = _glyphs(image_size) > 0.5  # (1797, H, H) binarised digits
    backgrounds = _poly_backgrounds(image_size)  # (5, Hb, Wb, 3)
    hb, wb = backgrounds.shape[1:3]
    ys = rng.integers(0, hb - image_size + 1, size=(len(POLY_MODALITIES), num_tuples))
    xs = rng.integers(0, wb - image_size + 1, size=(len(POLY_MODALITIES), num_tuples))
    ar = np.arange(image_size)
    out = {"labels": labels}
    for m, name in enumerate(POLY_MODALITIES):
        images = np.empty((num_tuples, 3, image_size, image_size), dtype=np.uint8)
        for a in range(0, num_tuples, _CHUNK):
            b = min(a + _CHUNK, num_tuples)
            rows = (ys[m, a:b, None] + ar)[:, :, None]
            cols = (xs[m, a:b, None] + ar)[:, None, :]
            crop = backgrounds[m][rows, cols]  # (n, H, W, 3)
            on = glyphs[src[m, a:b]][..., None]
            images[a:b] = _quantize(np.where(on, 1.0 - crop, crop))
        out[name] = images
        out[f"source_{name}"] = src[m]
    return out


def build_digits_svhn_text(split: str, image_size: int, pairs_per_digit: int,
                           seed: int) -> dict:
    """The arrays of a DigitsSVHNText split (recipe:
    :func:`pyro_mmvae.data.digits.digits_svhn_text`)."""
    rng = _rng("digitssvhntext", split, seed)
    pool = split_indices(split)
    labels_all = _sk_digits()[1]
    src_m, src_s, labels = [], [], []
    for c in range(10):
        idx = pool[labels_all[pool] == c]
        for _ in range(pairs_per_digit):
            a, b = rng.permutation(idx), rng.permutation(idx)
            _derange(a, b, rng)
            src_m.append(a)
            src_s.append(b)
            labels.append(np.full(len(idx), c, dtype=np.int64))
    order = rng.permutation(len(pool) * pairs_per_digit)
    src_m, src_s = np.concatenate(src_m)[order], np.concatenate(src_s)[order]
    labels = np.concatenate(labels)[order]
    n, h = len(labels), image_size

    # every random quantity is drawn up front, in a fixed order, then rendered in chunks
    lens = np.array([len(w) for w in DIGIT_WORDS])[labels]
    text_offset = rng.integers(0, TEXT_LENGTH - lens)  # = randint(0, 8 - 1 - len) inclusive
    photos = np.stack(_photos(image_size))  # (2, Hb, Wb, 3)
    hb, wb = photos.shape[1:3]
    which = rng.integers(0, 2, size=n)
    ys, xs = rng.integers(0, hb - h + 1, size=n), rng.integers(0, wb - h + 1, size=n)
    hue = rng.uniform(0, 2 * math.pi, size=n)
    contrast = rng.uniform(0.3, 0.9, size=n)
    fg_u = rng.uniform(0, 1, size=(n, 3))
    max_shift = max(1, round(2 * h / 16))
    shift = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    distractors = np.where(rng.uniform(size=(n, 2)) < 0.75, rng.choice(pool, size=(n, 2)), -1)
    noise = 0.05 * rng.standard_normal((n, h, h, 3))

    glyphs = _glyphs(h)  # (1797, H, H) soft intensities
    svhn_alpha = np.clip((glyphs - 0.15) / 0.5, 0, 1)
    spacing = round(0.7 * h)
    ar = np.arange(h)
    svhn = np.empty((n, 3, h, h), dtype=np.uint8)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        rows = (ys[a:b, None] + ar)[:, :, None]
        cols = (xs[a:b, None] + ar)[:, None, :]
        bg = photos[which[a:b, None, None], rows, cols]  # (k, H, W, 3)
        bg = np.einsum("nij,nhwj->nhwi", _hue_matrices(hue[a:b]), bg)
        mean = bg.mean(axis=(1, 2), keepdims=True)
        bg = np.clip(mean + contrast[a:b, None, None, None] * (bg - mean), 0, 1)
        lum = (mean[:, 0, 0] @ _RGB2YIQ[0])[:, None]  # (k, 1)
        fg = np.where(lum > 0.5, 0.3 * fg_u[a:b], 0.7 + 0.3 * fg_u[a:b])[:, None, None, :]
        alpha = np.zeros((b - a, h, h))
        yy = ar[None, :] - shift[a:b, 0, None]  # (k, H)
        for k, digit in ((0, src_s[a:b]), (-1, distractors[a:b, 0]), (1, distractors[a:b, 1])):
            xx = ar[None, :] - shift[a:b, 1, None] - k * spacing
            valid = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < h))[:, None, :]
            g = svhn_alpha[np.maximum(digit, 0)[:, None, None], np.clip(yy, 0, h - 1)[:, :, None],
                           np.clip(xx, 0, h - 1)[:, None, :]]
            alpha = np.maximum(alpha, np.where(valid & (digit >= 0)[:, None, None], g, 0.0))
        img = (1 - alpha[..., None]) * bg + alpha[..., None] * fg + noise[a:b]
        svhn[a:b] = _quantize(img)

    return {"labels": labels, "mnist": _quantize(glyphs[src_m][..., None]), "svhn": svhn,
            "text": _text_indices(labels, text_offset, TEXT_LENGTH).astype(np.uint8),
            "source_mnist": src_m, "source_svhn": src_s, "text_offset": text_offset,
            "svhn_distractors": distractors}


def _derange(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> None:
    """Swap entries of ``b`` in place until ``a[i] != b[i]`` everywhere (for >= 2 items)."""
    if len(b) < 2:
        raise ValueError("a class needs at least two digits to pair different images")
    while True:
        bad = np.flatnonzero(a == b)
        if not len(bad):
            return
        for i in bad:
            j = int(rng.integers(len(b)))
            if j != i and a[i] != b[j] and a[j] != b[i]:
                b[i], b[j] = b[j], b[i]
