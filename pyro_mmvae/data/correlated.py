r"""Correlated multimodal data from unimodal datasets: the M2VAE's e-MNIST recipe, offline.

The M2VAE paper (*Deep Generative Models for learning Coherent Latent Representations from
Multi-Modal Data*, ICLR 2019 submission, §4.1; later Korthals et al.) builds a bimodal dataset
whose modalities are related *within* a class, not only through the class: a label-conditional
VAE (CVAE; Sohn, Lee and Yan, *Learning Structured Output Representation using Deep
Conditional Generative Models*, NeurIPS 2015) is trained on each of two labelled unimodal
datasets with the same ten classes,

.. math::
    p(z)=\mathcal N(0, I),\qquad p_{\theta_m}(x_m\mid z, c)=\mathrm{Bernoulli}\big(
    \sigma(f_{\theta_m}(z, c))\big),\qquad q_{\phi_m}(z\mid x_m, c)=\mathcal N\big(
    \mu_{\phi_m}(x_m, c), \mathrm{diag}\,\sigma^2_{\phi_m}(x_m, c)\big),

each by its ELBO :math:`\mathbb E_q\log p(x_m\mid z, c) - \beta\,\mathrm{KL}(q\,\|\,p(z))`
(binary cross-entropy on [0, 1] intensities). Conditioned on the label, every class's
posterior is pulled onto the same prior, so the two latent manifolds lie on top of each other:
one ``z`` means "the same style" in every class of both datasets. A tuple is then one class
:math:`c` drawn uniformly, one :math:`z\sim\mathcal N(0, I)` kept only within :math:`2\sigma`
(:math:`|z_i|\le 2` for every coordinate, by rejection) and both decoders' means at
:math:`(z, c)` (:func:`correlated_pairs`): a small move of ``z`` moves both modalities.

Two controls with the same class structure (§4.1): **me-** (mixed-e, :func:`within_class_shuffle`)
permutes modality ``b`` within each class, keeping every marginal and the class correlation but
destroying the correlation through ``z``; **m-** (mixed, :func:`class_pairing`) pairs *real*
images of the same class at random.

**e-digits** (:func:`e_digits`) is the offline substitute for e-MNIST: modality ``a`` is
scikit-learn's bundled 8x8 digits (:func:`digit_images`), modality ``b`` a procedurally
rendered, class-labelled, continuously varying 8x8 dataset of ten shapes
(:func:`procedural_shapes`), since no second labelled image dataset ships offline.

The CVAE itself is in :mod:`pyro_mmvae.data.conditional_vae` (its names stay importable from
here). Everything is deterministic given its seed, in memory (no files), and returns the library's
:class:`~pyro_mmvae.data.MultimodalDataset` (every modality observed), images flattened to
``(N, 64)`` as :func:`~pyro_mmvae.data.digit_sources` gives the digits, in
``torch.get_default_dtype()`` unless a ``dtype`` is given.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .conditional_vae import (  # noqa: F401 (re-exported)
    IMAGE, LABEL, NUM_CLASSES, ConditionalVAE, ConditionalVAEGuide, ConditionalVAEModel,
    train_conditional_vae)
from .dataset import MultimodalDataset
from .sklearn_images import _sk_digits, split_indices

SHAPE_CLASSES = ("square", "circle", "triangle", "horizontal bar", "vertical bar", "cross",
                 "diagonal", "ring", "L-shape", "dot")
"""The ten classes of :func:`procedural_shapes`, in label order."""

E_DIGITS_EPOCHS = 150
"""Default CVAE training epochs of :func:`e_digits` (each CVAE, batch 128, Adam 3e-3)."""

_SEED_TAGS = {"digits_cvae": 1, "shapes_cvae": 2, "shapes_train": 3, "shapes_test": 4,
              "pairs_train": 5, "pairs_test": 6, "shuffle_train": 7, "shuffle_test": 8,
              "pairing_train": 9, "pairing_test": 10}


def _seed(seed: int, tag: str) -> int:
    """An independent integer seed for the stream ``tag`` of a builder seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), _SEED_TAGS[tag]]).generate_state(1)[0])


# --- the unimodal datasets ----------------------------------------------------------------

def digit_images(split: str = "train", dtype: Optional[torch.dtype] = None
                 ) -> MultimodalDataset:
    """scikit-learn's bundled 8x8 digits of the library's fixed stratified ``split``
    (1,438 train / 359 test) as intensities in [0, 1] (the 0..16 values divided by 16),
    flattened: ``data["image"]`` ``(N, 64)``, ``labels`` the digit, ``source_index["image"]``
    the index into :func:`sklearn.datasets.load_digits`."""
    images, labels = _sk_digits()
    idx = split_indices(split)
    dtype = dtype or torch.get_default_dtype()
    x = torch.as_tensor(images[idx].reshape(len(idx), -1) / 16.0, dtype=dtype)
    return MultimodalDataset.fully_observed(
        {IMAGE: x}, labels[idx], "digits", split, {IMAGE: torch.as_tensor(idx, dtype=torch.long)})


def _shape_masks(label: int, dx: np.ndarray, dy: np.ndarray, h: np.ndarray,
                 t: np.ndarray) -> np.ndarray:
    """Whether each supersampled point ``(dx, dy)`` (offsets from the shape's centre, image
    width 1, y pointing down) lies in shape ``label`` of half-size ``h`` and stroke ``t``."""
    ax, ay = np.abs(dx), np.abs(dy)
    radius = np.hypot(dx, dy)
    hbar = (ax <= h) & (ay <= t / 2)
    vbar = (ay <= h) & (ax <= t / 2)
    if label == 0:  # square: an outline of stroke t
        r = np.maximum(ax, ay)
        return (r <= h) & (r >= h - t)
    if label == 1:  # circle: a filled disc
        return radius <= 0.9 * h
    if label == 2:  # triangle: filled, apex up
        top, bottom = -h, 0.85 * h
        return (dy >= top) & (dy <= bottom) & (ax <= h * (dy - top) / (bottom - top))
    if label == 3:
        return hbar
    if label == 4:
        return vbar
    if label == 5:  # cross: both bars
        return hbar | vbar
    if label == 6:  # diagonal: a stroke from the top left to the bottom right corner
        return (np.abs(dx - dy) <= t / math.sqrt(2)) & (np.abs(dx + dy) <= 2 * h)
    if label == 7:  # ring: a circle outline of stroke t
        return np.abs(radius - (h - t / 2)) <= t / 2
    if label == 8:  # L-shape: the left and the bottom strokes of the square
        left = (np.abs(dx + h - t / 2) <= t / 2) & (ay <= h)
        bottom = (np.abs(dy - h + t / 2) <= t / 2) & (ax <= h)
        return left | bottom
    return radius <= 0.45 * h  # dot: a small filled disc


def procedural_shapes(n: int, seed: int = 0, dtype: Optional[torch.dtype] = None, *,
                      size: int = 8, supersample: int = 4) -> MultimodalDataset:
    r"""``n`` anti-aliased ``size`` x ``size`` images of ten shapes (:data:`SHAPE_CLASSES`:
    square outline, filled circle, filled triangle, horizontal bar, vertical bar, cross,
    diagonal stroke, ring, L-shape, dot) with continuous variation: a class-labelled,
    continuously varying second dataset beside the 8x8 digits (the M2VAE research note's
    "e-digits" substitute for Fashion-MNIST).

    Per image, with the image spanning :math:`[0, 1]^2`: the half-size
    :math:`h\sim\mathcal U(0.25, 0.42)`, the stroke thickness :math:`t\sim\mathcal U(0.12,
    0.22)` (about one to two pixels at 8 px; the filled shapes ignore it), and the centre
    :math:`0.5 + \mathcal U(-1, 1)\,(0.48 - h)` in each coordinate (so the shape stays in the
    frame). Each pixel is the fraction of its ``supersample`` x ``supersample`` sub-pixel
    centres inside the shape (supersample, then average), an intensity in [0, 1]. Classes are
    balanced (``n // 10`` or one more each) in a random order.

    :returns: a :class:`~pyro_mmvae.data.MultimodalDataset` with ``data["image"]``
        ``(n, size**2)`` flattened row by row (as the digits), ``labels`` the class and
        ``info`` ``"center"`` ``(n, 2)`` (x, y), ``"half_size"`` ``(n,)`` and
        ``"thickness"`` ``(n,)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if size < 2 or supersample < 1:
        raise ValueError(f"size must be >= 2 and supersample >= 1, got {size}, {supersample}")
    rng = np.random.default_rng([int(seed), 12])
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    h = rng.uniform(0.25, 0.42, n)
    t = rng.uniform(0.12, 0.22, n)
    center = 0.5 + rng.uniform(-1, 1, (n, 2)) * (0.48 - h)[:, None]
    fine = size * supersample
    grid = (np.arange(fine) + 0.5) / fine
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # (fine, fine): row (y), column (x)
    gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)
    images = np.empty((n, size * size))
    for label in range(NUM_CLASSES):  # one vectorised pass per class
        rows = np.flatnonzero(labels == label)
        for chunk in np.array_split(rows, max(1, len(rows) // 2048 + 1)):
            if not len(chunk):
                continue
            inside = _shape_masks(label, gx - center[chunk, :1], gy - center[chunk, 1:],
                                  h[chunk, None], t[chunk, None])
            pixels = inside.reshape(len(chunk), size, supersample, size, supersample)
            images[chunk] = pixels.mean((2, 4)).reshape(len(chunk), -1)
    dtype = dtype or torch.get_default_dtype()
    info = {"center": torch.as_tensor(center, dtype=dtype),
            "half_size": torch.as_tensor(h, dtype=dtype),
            "thickness": torch.as_tensor(t, dtype=dtype)}
    return MultimodalDataset.fully_observed({IMAGE: torch.as_tensor(images, dtype=dtype)},
                                            labels, "shapes", "train", info=info,
                                            item_info=tuple(info))


# --- the correlated pairs and the controls ---------------------------------------------------

def truncated_normal(n: int, dim: int, bound: Optional[float], generator: torch.Generator
                     ) -> torch.Tensor:
    r"""``(n, dim)`` float64 draws of :math:`\mathcal N(0, I)` conditioned on
    :math:`|z_i|\le` ``bound`` for every coordinate (None: not truncated), by rejection in
    vectorised rounds (each draws the expected number still needed, plus 10%)."""
    if bound is None:
        return torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if not bound > 0:
        raise ValueError(f"truncation must be > 0 (or None), got {bound!r}")
    accept = math.erf(bound / math.sqrt(2)) ** dim
    if accept < 1e-6:
        raise ValueError(f"truncation {bound} keeps a fraction {accept:.2g} of the draws in "
                         f"{dim} dimensions; use a larger bound")
    parts, got = [], 0
    while got < n:
        draw = torch.randn(int((n - got) / accept * 1.1) + 16, dim, generator=generator,
                           dtype=torch.float64)
        kept = draw[(draw.abs() <= bound).all(-1)][:n - got]
        parts.append(kept)
        got += kept.shape[0]
    return torch.cat(parts)


def correlated_pairs(cvae_a: ConditionalVAE, cvae_b: ConditionalVAE, n: int, *, seed: int,
                     truncation: Optional[float] = 2.0, modalities: Tuple[str, str] = ("a", "b"),
                     dtype: Optional[torch.dtype] = None, name: str = "correlated",
                     split: str = "train") -> MultimodalDataset:
    r"""``n`` tuples :math:`(a, b, c)` sharing one latent (the M2VAE's §4.1 sampling loop):
    per tuple a class :math:`c` uniform over the classes, :math:`z\sim\mathcal N(0, I)`
    truncated to :math:`|z_i|\le` ``truncation`` (:func:`truncated_normal`; the paper's
    "within 2σ"), and both CVAEs' decoder means :math:`a=\sigma(f_{\theta_a}(z, c))`,
    :math:`b=\sigma(f_{\theta_b}(z, c))` in [0, 1].

    :param cvae_a, cvae_b: :class:`ConditionalVAE` s with the same latent size and classes.
    :param seed: seeds the classes and latents (a private ``torch.Generator``; float64 draws,
        so the same seed gives the same ``z`` and ``c`` whatever the dtype).
    :returns: a :class:`~pyro_mmvae.data.MultimodalDataset` with ``data[modalities[0]]`` and
        ``data[modalities[1]]``, ``labels`` :math:`c` and ``latents`` :math:`z` ``(n, D)``
        (also as the per-item record ``info["z"]``, the same tensor).
    """
    if cvae_a.latent_dim != cvae_b.latent_dim or cvae_a.num_classes != cvae_b.num_classes:
        raise ValueError("the two CVAEs must share the latent size and the classes, got "
                         f"latent sizes {cvae_a.latent_dim}, {cvae_b.latent_dim} and "
                         f"{cvae_a.num_classes}, {cvae_b.num_classes} classes")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if len(modalities) != 2 or modalities[0] == modalities[1]:
        raise ValueError(f"modalities must be two different names, got {modalities!r}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(cvae_a.num_classes, (int(n),), generator=g)
    z = truncated_normal(int(n), cvae_a.latent_dim, truncation, g)
    dtype = dtype or torch.get_default_dtype()
    data = {modalities[0]: cvae_a.decode(z, labels).to(dtype),
            modalities[1]: cvae_b.decode(z, labels).to(dtype)}
    z = z.to(dtype)
    return MultimodalDataset.fully_observed(data, labels, name, split, info={"z": z},
                                            latents=z, item_info=("z",))


def within_class_shuffle(dataset: MultimodalDataset, modality: str = "b", *, seed: int,
                         name: Optional[str] = None) -> MultimodalDataset:
    r"""The **me-** control (M2VAE §4.1): ``modality`` permuted at random *within each class*
    relative to the other modalities. Every class keeps its multiset of ``modality`` rows (so
    every marginal and the class correlation are kept); the correlation through the shared
    latent is destroyed. One vectorised permutation: the rows in a random order, stably sorted
    by class, fill the class blocks of the rows in their own order.

    :returns: a new :class:`~pyro_mmvae.data.MultimodalDataset` (the input is not changed):
        row ``i`` of ``modality`` (and of its mask and ``source_index`` entry) is the input's
        row ``info["shuffled_from"][i]``, of the same class; labels, the other modalities,
        ``latents`` and the other ``info`` (e.g. ``"z"``, now the latent of the other
        modalities only) as they were.
    """
    if modality not in dataset.data:
        raise ValueError(f"modality '{modality}' is not in the dataset {dataset.modalities}")
    labels = dataset.labels
    g = torch.Generator().manual_seed(int(seed))
    by_class = torch.argsort(labels, stable=True)  # the rows of each class, in order
    shuffled = torch.randperm(len(labels), generator=g)
    shuffled = shuffled[torch.argsort(labels[shuffled], stable=True)]  # same blocks, shuffled
    perm = torch.empty_like(by_class)
    perm[by_class] = shuffled
    data = dict(dataset.data)
    data[modality] = data[modality][perm]
    mask = dict(dataset.mask)
    mask[modality] = mask[modality][perm]
    info = {**dataset.info, "shuffled_from": perm}
    if modality in dataset.source_index:
        info["source_index"] = {**dataset.source_index,
                                modality: dataset.source_index[modality][perm]}
    return MultimodalDataset(data, mask, labels.clone(), dataset.latents, info,
                             name if name is not None else f"{dataset.name}-shuffled",
                             dataset.split, None,
                             item_info=dataset.item_info + ("shuffled_from",))


def class_pairing(images_a: torch.Tensor, labels_a: torch.Tensor, images_b: torch.Tensor,
                  labels_b: torch.Tensor, n: int, *, seed: int,
                  modalities: Tuple[str, str] = ("a", "b"), dtype: Optional[torch.dtype] = None,
                  name: str = "class_paired", split: str = "train") -> MultimodalDataset:
    r"""The **m-** control (M2VAE §4.1, "m-MNIST"): ``n`` naive pairs of *real* images of the
    same class — per pair a class uniform over those both datasets have, then an image of that
    class from each dataset, uniformly and independently (vectorised).

    :returns: a :class:`~pyro_mmvae.data.MultimodalDataset` with the two modalities,
        ``labels`` and ``source_index`` ``{modality: the row of images_a / images_b}``.
    """
    labels_a = torch.as_tensor(labels_a, dtype=torch.long)
    labels_b = torch.as_tensor(labels_b, dtype=torch.long)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if len(images_a) != len(labels_a) or len(images_b) != len(labels_b):
        raise ValueError("each image set needs one label per image")
    size = int(max(labels_a.max(), labels_b.max())) + 1
    counts_a = torch.bincount(labels_a, minlength=size)
    counts_b = torch.bincount(labels_b, minlength=size)
    shared = torch.nonzero((counts_a > 0) & (counts_b > 0)).flatten()
    if not len(shared):
        raise ValueError("the two datasets have no class in common")
    g = torch.Generator().manual_seed(int(seed))
    labels = shared[torch.randint(len(shared), (int(n),), generator=g)]

    def pick(class_labels, counts):
        order = torch.argsort(class_labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        u = torch.rand(int(n), generator=g, dtype=torch.float64)
        k = (u * counts[labels]).floor().to(torch.long).clamp_max(counts[labels] - 1)
        return order[starts[labels] + k]

    ia, ib = pick(labels_a, counts_a), pick(labels_b, counts_b)
    dtype = dtype or torch.get_default_dtype()
    data = {modalities[0]: torch.as_tensor(images_a)[ia].to(dtype),
            modalities[1]: torch.as_tensor(images_b)[ib].to(dtype)}
    return MultimodalDataset.fully_observed(data, labels, name, split,
                                            {modalities[0]: ia, modalities[1]: ib})


# --- e-digits --------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _e_digit_cvaes(seed: int, epochs: int, num_shapes: int, latent_dim: int, beta: float
                   ) -> Tuple[ConditionalVAE, ConditionalVAE]:
    digits = digit_images("train", torch.float32)
    shapes = procedural_shapes(num_shapes, _seed(seed, "shapes_train"), torch.float32)
    common = dict(epochs=epochs, latent_dim=latent_dim, beta=beta, dtype=torch.float32)
    return (train_conditional_vae(digits.data[IMAGE], digits.labels,
                                  seed=_seed(seed, "digits_cvae"), **common),
            train_conditional_vae(shapes.data[IMAGE], shapes.labels,
                                  seed=_seed(seed, "shapes_cvae"), **common))


def e_digit_cvaes(*, seed: int = 0, epochs: int = E_DIGITS_EPOCHS, num_shapes: int = 2000,
                  latent_dim: int = 2, beta: float = 1.0
                  ) -> Tuple[ConditionalVAE, ConditionalVAE]:
    """The two float32 CVAEs of :func:`e_digits` — on the digits' train split and on
    ``num_shapes`` :func:`procedural_shapes` — trained once per argument set and process and
    kept in memory (the four latest sets), never written to disk. Do not train them further
    in place: later calls return the same objects."""
    return _e_digit_cvaes(int(seed), int(epochs), int(num_shapes), int(latent_dim),
                          float(beta))


def e_digits(n_train: int = 10000, n_test: int = 2000, *, seed: int = 0,
             epochs: int = E_DIGITS_EPOCHS, num_shapes: int = 2000, latent_dim: int = 2,
             beta: float = 1.0, truncation: Optional[float] = 2.0,
             dtype: Optional[torch.dtype] = None
             ) -> Dict[str, Tuple[MultimodalDataset, MultimodalDataset]]:
    r"""**e-digits** and its two controls, the offline analogue of the M2VAE's e-MNIST,
    me-MNIST and m-MNIST (§4.1): modality ``"a"`` digits, ``"b"`` shapes.

    Procedure:

    1. Modality ``a``'s data: the bundled 8x8 digits' train split (1,438 images,
       :func:`digit_images`); modality ``b``'s: ``num_shapes`` :func:`procedural_shapes`
       (class ``c`` of the digits is paired with shape class ``c``).
    2. One :class:`ConditionalVAE` per dataset (MLPs ``64 + 10 -> 128 -> 2 D`` and
       ``D + 10 -> 128 -> 64``, ``D = latent_dim = 2``, prior :math:`\mathcal N(0, I)`,
       Bernoulli/BCE likelihood, KL weight ``beta``), ``epochs`` epochs each
       (:func:`train_conditional_vae`, float32, cached in memory by :func:`e_digit_cvaes`).
    3. **e**: :func:`correlated_pairs` — per tuple a uniform class, a latent
       :math:`z\sim\mathcal N(0, I)` with every :math:`|z_i|\le` ``truncation``, and both
       decoder means at :math:`(z, c)`; ``n_train`` and ``n_test`` tuples from independent
       streams of ``seed``.
    4. **me**: e with ``b`` permuted within each class (:func:`within_class_shuffle`).
    5. **m**: real digits and real shapes of the same class paired at random
       (:func:`class_pairing`): the digits' train split with the CVAE's training shapes, and
       the test split (359 digits) with ``num_shapes // 4`` fresh shapes.

    The CVAEs see only training data; the test tuples of e and me are new draws from the same
    CVAEs. Everything is deterministic given the arguments, whatever the default dtype (the
    CVAEs are float32); the caller's Pyro param store and RNG states are left as they were.
    At the defaults it takes about 13 s on two CPU cores (shared with another process), almost
    all of it the two CVAEs' training (one intra-op thread, see
    :func:`train_conditional_vae`), once per process.

    :returns: ``{"e": (train, test), "me": (train, test), "m": (train, test)}`` of
        :class:`~pyro_mmvae.data.MultimodalDataset` (named ``"e_digits"``, ``"me_digits"``,
        ``"m_digits"``) with modalities ``"a"`` and ``"b"`` ``(N, 64)`` in [0, 1] and
        ``labels``; e and me have ``latents`` and ``info["z"]`` (the latent of ``a``; for e
        also of ``b``), me ``info["shuffled_from"]``, m ``source_index`` (rows of the digits
        split and of the shapes).
    """
    cvae_a, cvae_b = e_digit_cvaes(seed=seed, epochs=epochs, num_shapes=num_shapes,
                                   latent_dim=latent_dim, beta=beta)
    out = {"e": [], "me": [], "m": []}
    shapes = {"train": procedural_shapes(num_shapes, _seed(seed, "shapes_train"), dtype),
              "test": procedural_shapes(max(num_shapes // 4, NUM_CLASSES),
                                        _seed(seed, "shapes_test"), dtype)}
    for split, n in (("train", n_train), ("test", n_test)):
        e = correlated_pairs(cvae_a, cvae_b, n, seed=_seed(seed, f"pairs_{split}"),
                             truncation=truncation, dtype=dtype, name="e_digits", split=split)
        out["e"].append(e)
        out["me"].append(within_class_shuffle(e, "b", seed=_seed(seed, f"shuffle_{split}"),
                                              name="me_digits"))
        digits = digit_images(split, dtype)
        out["m"].append(class_pairing(digits.data[IMAGE], digits.labels,
                                      shapes[split].data[IMAGE], shapes[split].labels, n,
                                      seed=_seed(seed, f"pairing_{split}"), dtype=dtype,
                                      name="m_digits", split=split))
    return {k: tuple(v) for k, v in out.items()}
