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

Layout. This module holds the loaders and the cache files; the recipes that build the arrays are
in :mod:`pyro_mmvae.data.digits_recipes`, the bundled images and the fixed split in
:mod:`pyro_mmvae.data.sklearn_images`, the dataset type in :mod:`pyro_mmvae.data.dataset`
(names such as ``MultimodalDataset``, ``split_indices`` and ``poly_backgrounds`` stay
importable from here).

Example::

    train, test = load_poly_digits()                    # 10000 / 2000 tuples, 3x16x16 each
    for data, mask in train.batches(128, generator=torch.Generator().manual_seed(0)):
        svi.step(data, mask)
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .dataset import MultimodalDataset
from .digits_recipes import DST_MODALITIES, POLY_MODALITIES
from .digits_recipes import build_digits_svhn_text as _build_digits_svhn_text
from .digits_recipes import build_poly_digits as _build_poly_digits
from .sklearn_images import (  # noqa: F401 (re-exported)
    SPLIT_SEED, SPLITS, TEST_FRACTION, _check_int, _check_split, _glyphs, _photos,
    _poly_backgrounds, _resize, _sk_digits, poly_backgrounds, split_indices)
from .text import ALPHABET as TEXT_ALPHABET
from .text import DIGIT_WORDS, TEXT_LENGTH, decode_text, encode_text  # noqa: F401 (re-exported)
from .text import digit_text as digit_strings

PathLike = Union[str, os.PathLike]

DATA_VERSION = "v1"
"""Bumped whenever a recipe changes; part of every cache file name."""

DEFAULT_NUM_TUPLES = {"train": 10000, "test": 2000}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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


def _one_hot(idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx.long(), len(TEXT_ALPHABET)).to(dtype)


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
    source = {m: torch.from_numpy(np.asarray(arrays[f"source_{m}"], dtype=np.int64))
              for m in modalities if f"source_{m}" in arrays}
    info = {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.int64))
            for k in ("text_offset", "svhn_distractors") if k in arrays}
    return MultimodalDataset.fully_observed(data, labels, name, split, source, info,
                                            item_info=tuple(info), path=path)


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
