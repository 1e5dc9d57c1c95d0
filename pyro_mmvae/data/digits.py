r"""The embedded default image datasets, built offline from scikit-learn's bundled 8x8 digits.

Two multimodal benchmarks of the MoPoE paper are rebuilt at small scale from data that ships
inside scikit-learn, so they need no download:

- :func:`poly_digits` -- **PolyDigits**, the PolyMNIST recipe of Sutter, Daunhawer & Vogt,
  "Generalized Multimodal ELBO", ICLR 2021 (App. D.1; code ``mmnist/MMNISTDataset.py``).
  Five image modalities ``"m0"`` to ``"m4"``; a tuple holds five digits of the *same* class,
  drawn independently per modality (so almost always five different images), each composited
  on a random crop of that modality's own background with the background colours inverted
  where the (binarised) digit is on.
- :func:`digits_svhn_text` -- **DigitsSVHNText**, the MNIST-SVHN-Text recipe of Sutter,
  Daunhawer & Vogt, "Multimodal Generative Learning Utilizing Jensen-Shannon Divergence",
  NeurIPS 2020, extending the MNIST-SVHN pairing of Shi, Siddharth, Paige & Torr,
  "Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models",
  NeurIPS 2019. Modalities ``"mnist"`` (a clean grey digit), ``"svhn"`` (a *different* digit of
  the same class rendered as a noisy colour street-number crop) and ``"text"`` (the digit's
  English word at a random offset in a length-8 string, one-hot over the 71-symbol alphabet of
  the MoPoE code, :data:`TEXT_ALPHABET`).

Sources. The digits are :func:`sklearn.datasets.load_digits` (1,797 images, 8x8, values 0..16,
about 180 per class); the backgrounds are the two photographs of
:func:`sklearn.datasets.load_sample_images` (``china.jpg``, ``flower.jpg``, 427x640 RGB) and a
procedural texture.

Train/test split. The 1,797 digits are split once, stratified by class, 80/20 (1,438 / 359) with
a fixed seed (:data:`SPLIT_SEED`, independent of the ``seed`` argument, like MNIST's fixed
split). Tuples are formed *within* a split afterwards, so train and test share no underlying
digit (``source_index`` records which digit each image was made from, as an index into
``load_digits()``).

Caching and determinism. Each split is generated on first use into ``root`` (argument, else the
environment variable ``PYRO_MMVAE_DATA``, else ``~/.cache/pyro_mmvae``) as one ``.npz`` file
whose name carries the format version and every parameter, e.g.
``polydigits-v1-train-16px-n10000-seed0.npz``. Later calls load that file and never regenerate
it. Files are written atomically (temporary file + :func:`os.replace`); images are stored as
``uint8`` (like the PNGs of the real datasets), uncompressed, and the zip entries carry a fixed
timestamp, so the same parameters produce the same bytes every time in a given environment (the
JPEG decoder of Pillow is the only outside input). Loaded images are ``float32`` in ``[0, 1]``,
i.e. the stored bytes divided by 255.

Example::

    train, test = load_poly_digits()                    # 10000 / 2000 tuples, 3x16x16 each
    for data, mask in train.batches(128, generator=torch.Generator().manual_seed(0)):
        svi.step(data, mask)
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from .text import ALPHABET as TEXT_ALPHABET
from .text import DIGIT_WORDS, TEXT_LENGTH, decode_text, encode_text  # noqa: F401 (re-exported)
from .text import digit_text as digit_strings

PathLike = Union[str, os.PathLike]

DATA_VERSION = "v1"
"""Bumped whenever a recipe changes; part of every cache file name."""

SPLIT_SEED = 0
"""Seed of the fixed stratified train/test split of the sklearn digits."""

TEST_FRACTION = 0.2


POLY_MODALITIES = ("m0", "m1", "m2", "m3", "m4")
DST_MODALITIES = ("mnist", "svhn", "text")

DEFAULT_NUM_TUPLES = {"train": 10000, "test": 2000}
_SPLITS = ("train", "test")
_DATASET_IDS = {"polydigits": 1, "digitssvhntext": 2}
_CHUNK = 2048  # tuples composited at once (bounds memory for large image sizes)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# --- the result object ---------------------------------------------------------------------


@dataclass
class MultimodalDataset:
    """A split of a multimodal dataset, in the library's batch protocol.

    :ivar data: ``{modality: (N, ...)}`` float tensors (``float32`` unless asked otherwise).
    :ivar mask: ``{modality: (N,)}`` bool tensors, all True (every modality is observed).
    :ivar labels: ``(N,)`` long, the digit class shared by all modalities of a tuple.
    :ivar source_index: ``{modality: (N,)}`` long, for each image modality the index into
        :func:`sklearn.datasets.load_digits` of the digit it was made from.
    :ivar info: other per-item generation records, e.g. ``"text_offset"`` ``(N,)`` and
        ``"svhn_distractors"`` ``(N, 2)`` (left/right neighbour digit, -1 when absent).
    :ivar name: ``"polydigits"`` or ``"digitssvhntext"``; ``split``: ``"train"`` or ``"test"``.
    :ivar path: the cache file it was loaded from (None for subsets).
    """

    data: Dict[str, torch.Tensor]
    mask: Dict[str, torch.Tensor]
    labels: torch.Tensor
    source_index: Dict[str, torch.Tensor] = field(default_factory=dict)
    info: Dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = ""
    split: str = ""
    path: Optional[Path] = None

    @classmethod
    def fully_observed(cls, data: Dict[str, torch.Tensor], labels, name: str = "",
                       split: str = "", source_index=None, info=None) -> "MultimodalDataset":
        """A dataset whose every modality is observed for every item (all-True masks);
        ``labels`` (anything ``torch.as_tensor`` takes) become ``long``."""
        labels = torch.as_tensor(labels).to(torch.long)
        n = int(labels.shape[0])
        return cls(dict(data), {m: torch.ones(n, dtype=torch.bool) for m in data}, labels,
                   dict(source_index or {}), dict(info or {}), name, split, None)

    @property
    def modalities(self) -> Tuple[str, ...]:
        return tuple(self.data)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index) -> "MultimodalDataset":
        """The sub-dataset at ``index`` (an int, slice, index tensor or bool mask); an int keeps
        a leading dimension of 1."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} items")
            index %= len(self)
            index = slice(index, index + 1)

        def take(d):
            return {k: v[index] for k, v in d.items()}

        return MultimodalDataset(take(self.data), take(self.mask), self.labels[index],
                                 take(self.source_index), take(self.info), self.name,
                                 self.split, None)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MultimodalDataset":
        """Move every tensor to ``device``; ``dtype`` converts the floating ``data`` only."""

        def move(d, convert=False):
            return {k: v.to(device=device, dtype=dtype if convert else None) for k, v in d.items()}

        return MultimodalDataset(move(self.data, True), move(self.mask), self.labels.to(device),
                                 move(self.source_index), move(self.info), self.name, self.split,
                                 self.path)

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: Optional[torch.Generator] = None, drop_last: bool = False,
                with_labels: bool = False) -> Iterator[tuple]:
        """Iterate once over the data in mini-batches.

        :param batch_size: items per batch. ``drop_last``: skip the final incomplete batch.
        :param shuffle: random order, drawn from ``generator`` (a CPU ``torch.Generator``;
            None uses torch's global RNG).
        :yields: ``(data, mask)`` with ``data[m]`` of shape ``(B, ...)`` and ``mask[m]`` of
            shape ``(B,)``; ``(data, mask, labels)`` with ``with_labels=True``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - batch_size + 1 if drop_last else n
        for start in range(0, max(stop, 0), batch_size):
            idx = order[start:start + batch_size].to(self.labels.device)
            data = {m: x[idx] for m, x in self.data.items()}
            mask = {m: k[idx] for m, k in self.mask.items()}
            yield (data, mask, self.labels[idx]) if with_labels else (data, mask)


# --- public loaders ------------------------------------------------------------------------

def default_root() -> Path:
    """``$PYRO_MMVAE_DATA`` if set, else ``~/.cache/pyro_mmvae``."""
    env = os.environ.get("PYRO_MMVAE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_mmvae"


def poly_digits(root: Optional[PathLike] = None, split: str = "train", *, image_size: int = 16,
                num_tuples: Optional[int] = None, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    r"""PolyDigits, the PolyMNIST recipe (Sutter et al. 2021, App. D.1) on sklearn's digits.

    Recipe (PolyMNIST's, with MNIST replaced by the 8x8 digits of the given split):

    1. Upsample each digit bilinearly to ``image_size`` and binarise it (intensity > 0.5;
       PolyMNIST: pixel > 128/255).
    2. For each class and modality draw independent random permutations of that class's digits
       (as many rounds as needed for ``num_tuples``, then a random subset of that size in a
       random order), so a tuple holds one digit per modality, all of the same class, paired at
       random, and every digit is used about equally often in every modality.
    3. Modality ``m`` composites its digit on a uniformly placed ``image_size`` square crop of
       its own background, inverting the crop's colours where the digit is on:
       ``x = 1 - crop`` on the digit, ``x = crop`` elsewhere.

    The five fixed backgrounds (:func:`poly_backgrounds`; PolyMNIST uses five photographs) are,
    for ``m0`` to ``m4``: ``china.jpg``; ``flower.jpg``; ``china.jpg`` mirrored with its channels
    permuted (BRG); ``flower.jpg`` upside down with its hue rotated by 180 degrees; a procedural
    texture of two coloured sinusoidal gratings plus smooth noise. The photographs are
    downscaled by ``64 / image_size`` (4 at 16 px) so that a crop contains texture.

    :param root: cache directory (default :func:`default_root`).
    :param split: ``"train"`` (made from 1,438 digits) or ``"test"`` (359 digits).
    :param image_size: ``H = W`` of the images (>= 8).
    :param num_tuples: number of tuples (default 10000 for train, 2000 for test).
    :param seed: seeds the pairing and the crops (not the digit split or the backgrounds).
    :returns: a :class:`MultimodalDataset` with ``data[m]`` of shape ``(N, 3, H, W)`` in
        ``[0, 1]`` for ``m`` in ``"m0"`` to ``"m4"``, ``labels`` ``(N,)`` and ``source_index[m]``.
    """
    split = _check_split(split)
    image_size = _check_int("image_size", image_size, 8)
    num_tuples = _check_int("num_tuples", DEFAULT_NUM_TUPLES[split] if num_tuples is None
                            else num_tuples, 1)
    seed = _check_int("seed", seed, 0)
    params = {"image_size": image_size, "num_tuples": num_tuples, "seed": seed}
    fname = f"polydigits-{DATA_VERSION}-{split}-{image_size}px-n{num_tuples}-seed{seed}.npz"
    return _cached("polydigits", split, params, fname, root, _build_poly_digits, dtype)


def digits_svhn_text(root: Optional[PathLike] = None, split: str = "train", *,
                     image_size: int = 16, pairs_per_digit: int = 5, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    r"""DigitsSVHNText, the MNIST-SVHN-Text recipe (Shi et al. 2019; Sutter et al. 2020/2021).

    Pairing (MoPoE's ``rand_match_on_idx`` with ``data_multiplications = pairs_per_digit``):
    for each class, ``pairs_per_digit`` times, a random permutation of that class's digits is
    zipped with an independent one; collisions are re-drawn so the ``"svhn"`` image always
    shows a *different* digit of the same class than the ``"mnist"`` one. Every digit thus
    appears in ``pairs_per_digit`` triples per modality; ``N = pairs_per_digit x`` (digits in
    the split), 7,190 train / 1,795 test by default, in random order.

    Modalities:

    - ``"mnist"``: the digit upsampled bilinearly to ``(1, H, W)``, grey levels in ``[0, 1]``.
    - ``"svhn"``: the partner digit as a street-number crop ``(3, H, W)``: a crop of
      ``china.jpg`` or ``flower.jpg`` with a random hue rotation and reduced contrast as the
      background; a digit of a random colour (dark on light backgrounds, light on dark ones)
      blended in by its intensity; left and right neighbour digits of random classes, each
      present with probability 3/4, partly visible at the edges; the digit row shifted by up
      to ``2 * H / 16`` pixels in each direction; Gaussian noise (std 0.05), clipped.
    - ``"text"``: the class's English word (:data:`DIGIT_WORDS`) at a random start index
      ``randint(0, 8 - 1 - len(word))`` (inclusive, as in the MoPoE code) in a string of 8
      spaces, one-hot over :data:`TEXT_ALPHABET`: shape ``(8, 71)``. The offset is drawn once
      per triple; :func:`digit_text` redraws it, e.g. per epoch as the MoPoE code does.

    :param root: cache directory (default :func:`default_root`).
    :param split: ``"train"`` or ``"test"``.
    :param image_size: ``H = W`` of both image modalities (>= 8).
    :param pairs_per_digit: the data multiplication (MoPoE uses 20 on 50k MNIST digits).
    :param seed: seeds the pairing and rendering (not the digit split).
    :returns: a :class:`MultimodalDataset`; ``source_index`` has ``"mnist"`` and ``"svhn"``;
        ``info`` has ``"text_offset"`` ``(N,)`` and ``"svhn_distractors"`` ``(N, 2)``.
    """
    split = _check_split(split)
    image_size = _check_int("image_size", image_size, 8)
    pairs_per_digit = _check_int("pairs_per_digit", pairs_per_digit, 1)
    seed = _check_int("seed", seed, 0)
    params = {"image_size": image_size, "pairs_per_digit": pairs_per_digit, "seed": seed}
    fname = (f"digitssvhntext-{DATA_VERSION}-{split}-{image_size}px-x{pairs_per_digit}"
             f"-seed{seed}.npz")
    return _cached("digitssvhntext", split, params, fname, root, _build_digits_svhn_text, dtype)


def load_poly_digits(root: Optional[PathLike] = None, *, image_size: int = 16,
                     num_train: int = DEFAULT_NUM_TUPLES["train"],
                     num_test: int = DEFAULT_NUM_TUPLES["test"], seed: int = 0,
                     dtype: torch.dtype = torch.float32
                     ) -> Tuple[MultimodalDataset, MultimodalDataset]:
    """``(train, test)`` of :func:`poly_digits`."""
    kw = dict(image_size=image_size, seed=seed, dtype=dtype)
    return (poly_digits(root, "train", num_tuples=num_train, **kw),
            poly_digits(root, "test", num_tuples=num_test, **kw))


def load_digits_svhn_text(root: Optional[PathLike] = None, *, image_size: int = 16,
                          pairs_per_digit: int = 5, seed: int = 0,
                          dtype: torch.dtype = torch.float32
                          ) -> Tuple[MultimodalDataset, MultimodalDataset]:
    """``(train, test)`` of :func:`digits_svhn_text`."""
    kw = dict(image_size=image_size, pairs_per_digit=pairs_per_digit, seed=seed, dtype=dtype)
    return digits_svhn_text(root, "train", **kw), digits_svhn_text(root, "test", **kw)


# --- text ------------------------------------------------------------------------------------

def digit_text(labels: torch.Tensor, generator: Optional[torch.Generator] = None,
               length: int = TEXT_LENGTH, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The DigitsSVHNText text modality for ``labels`` ``(N,)``, with fresh random offsets
    (MoPoE redraws them whenever an item is read; :func:`pyro_mmvae.data.text.digit_text`).

    :returns: ``(N, length, 71)`` one-hot.
    """
    return encode_text(digit_strings(labels, length, generator), length, dtype)


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


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, _DATASET_IDS[name], _SPLITS.index(split)])


def _quantize(x: np.ndarray) -> np.ndarray:
    """``(n, H, W, C)`` floats in [0, 1] -> ``(n, C, H, W)`` uint8."""
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2)


def _text_indices(labels: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    idx = np.full((len(labels), length), TEXT_ALPHABET.index(" "), dtype=np.int64)
    for i, (c, o) in enumerate(zip(labels.tolist(), offsets.tolist())):
        for j, ch in enumerate(DIGIT_WORDS[c]):
            idx[i, o + j] = TEXT_ALPHABET.index(ch)
    return idx


def _one_hot(idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx.long(), len(TEXT_ALPHABET)).to(dtype)


# --- builders (numpy arrays -> the cache file) -------------------------------------------------

def _build_poly_digits(split: str, image_size: int, num_tuples: int, seed: int) -> dict:
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


def _build_digits_svhn_text(split: str, image_size: int, pairs_per_digit: int,
                            seed: int) -> dict:
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


# --- cache files -------------------------------------------------------------------------------

def _cached(name, split, params, fname, root, builder, dtype) -> MultimodalDataset:
    root = Path(root).expanduser() if root is not None else default_root()
    path = root / fname
    meta = {"name": name, "version": DATA_VERSION, "split": split, **params}
    if path.exists():
        try:
            arrays = _read_npz(path)
            stored = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise ValueError(f"cache file {path} is unreadable ({err}); delete it to regenerate"
                             ) from err
        if stored != meta:
            raise ValueError(f"cache file {path} holds {stored}, expected {meta}; "
                             "delete it to regenerate")
    else:
        arrays = builder(split, **params)
        root.mkdir(parents=True, exist_ok=True)
        _write_npz(path, {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))})
    return _to_dataset(name, split, arrays, path, dtype)


def _to_dataset(name, split, arrays, path, dtype) -> MultimodalDataset:
    modalities = POLY_MODALITIES if name == "polydigits" else DST_MODALITIES
    data = {}
    for m in modalities:
        x = torch.from_numpy(np.ascontiguousarray(arrays[m]))
        data[m] = _one_hot(x, dtype) if m == "text" else x.to(dtype) / 255.0
    labels = torch.from_numpy(np.asarray(arrays["labels"], dtype=np.int64))
    mask = {m: torch.ones(len(labels), dtype=torch.bool) for m in modalities}
    source = {m: torch.from_numpy(np.asarray(arrays[f"source_{m}"], dtype=np.int64))
              for m in modalities if f"source_{m}" in arrays}
    info = {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.int64))
            for k in ("text_offset", "svhn_distractors") if k in arrays}
    return MultimodalDataset(data, mask, labels, source, info, name, split, path)


def _write_npz(path: Path, arrays: dict) -> None:
    """An ``np.load``-able ``.npz`` with fixed entry timestamps (``np.savez`` stamps the current
    time, so its bytes differ run to run), written atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w") as zf:
                for key in sorted(arrays):
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
                    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
                    info.compress_type = zipfile.ZIP_STORED  # noisy images barely deflate
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, buf.getvalue())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
