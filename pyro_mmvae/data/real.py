r"""Loaders for the real datasets of the MoPoE and MVAE papers, from files the user already has.

Nothing here downloads anything. Each loader checks the files it needs before reading them
and raises :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`) whose message gives
the full expected path and how to obtain the files, or :class:`DatasetFormatError` (a
:class:`ValueError`) naming the file that is truncated or malformed.

=====================  ==================================================  ====================
loader                 modalities (shape of one data point)                labels
=====================  ==================================================  ====================
:func:`mnist`          ``mnist`` (1, 28, 28)                               digit (N,)
:func:`svhn`           ``svhn`` (3, 32, 32)                                digit (N,), 10 -> 0
:func:`mnist_svhn`     ``mnist``, ``svhn`` [, ``text`` (8, 71) one-hot]    digit (N,)
:func:`polymnist`      ``m0`` ... ``m{M-1}`` (3, 28, 28)                   digit (N,)
:func:`celeba`         ``image`` (3, S, S), ``attributes`` (A,) {0, 1}     attributes (N, A)
=====================  ==================================================  ====================

Every loader returns a :class:`RealDataset`, the library's
:class:`~pyro_mmvae.data.MultimodalDataset` with lazily materialised data: ``data`` (float
images in [0, 1], channels first), an all-True ``mask``, ``labels``, ``name``, ``split``,
``path`` (the folder read) and ``info`` (the files read, attribute names, the pairing). Images
are kept as ``uint8`` in ``sources`` and converted to float only for the items asked for, so
large sets are iterated with :meth:`~pyro_mmvae.data.MultimodalDataset.batches` (or cut with
``ds[idx]``, itself lazy) without materialising ``ds.data``.

The file readers (:mod:`pyro_mmvae.data.real_formats`) are the library's own (IDX, MATLAB v5
via :mod:`scipy.io`, PNG/JPEG via PIL), not :mod:`torchvision.datasets`: torchvision's SVHN and
CelebA classes verify MD5 checksums and so reject anything but the byte-identical official
files, and its MNIST class reads neither gzipped files nor truncated ones with a useful
message. The layouts are torchvision's, so a ``root`` prepared by torchvision works here
unchanged.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from .dataset import MultimodalDataset
from .real_formats import (  # noqa: F401 (DatasetFormatError etc. are re-exported)
    _CELEBA_HOW, _POLY_HOW, _POLY_NAME, DatasetFormatError, DatasetNotFoundError, PathLike,
    _celeba_file, _celeba_table, _celeba_transform, _load_index_file, _load_mnist_arrays,
    _load_svhn_arrays, _not_found, _read_bytes, _read_idx, _read_rgb)
from .text import DIGIT_WORDS, encode_text

__all__ = ["DatasetNotFoundError", "DatasetFormatError", "RealDataset", "mnist", "svhn",
           "mnist_svhn", "polymnist", "celeba", "CELEBA_ATTRIBUTES"]


# --- the dataset object -----------------------------------------------------------------------

class RealDataset(MultimodalDataset):
    """A :class:`~pyro_mmvae.data.MultimodalDataset` whose modalities are stored once,
    optionally indexed into (paired data), and materialised per batch.

    :ivar sources: ``{modality: (K_m, ...)}`` distinct items; ``uint8`` images (channels first,
        read back as ``value / 255``) or float tensors (one-hot text, attributes).
    :ivar index: ``{modality: (N,)}`` long rows of ``sources`` forming data point ``n``; None
        means the identity (``K_m = N``).
    :ivar dtype: the float dtype of ``data`` (default ``torch.float32``).
    :ivar labels: ``(N,)`` long class labels, or ``(N, A)`` long {0, 1} attributes (CelebA).
    :ivar info: what was read: ``files``, ``pairing``, ``attribute_names``, ...

    ``data`` (``{modality: (N, ...)}``) is built and kept on first access: for the full
    MNIST-SVHN-Text training set (about 1.1 M triples at 20 pairs per image) that is about
    20 GB. :meth:`batches` converts only the rows of each batch, ``ds[idx]`` is a
    :class:`RealDataset` indexing the same ``sources`` and :meth:`to` moves the ``uint8``
    sources, so none of them materialises ``data``. A
    :class:`torch.utils.data.DataLoader` (e.g. for worker processes) reads sub-datasets with
    ``DataLoader(ds, batch_size=None, sampler=BatchSampler(RandomSampler(ds), 256, False))``.
    """

    def __init__(self, sources: Dict[str, torch.Tensor], labels: Optional[torch.Tensor] = None,
                 index: Optional[Dict[str, torch.Tensor]] = None,
                 dtype: torch.dtype = torch.float32, info: Optional[Dict[str, Any]] = None,
                 name: str = "", split: str = "", path: Optional[PathLike] = None, *,
                 mask: Optional[Dict[str, torch.Tensor]] = None,
                 latents: Optional[torch.Tensor] = None, item_info: Iterable[str] = ()):
        self.sources = dict(sources)
        self.index = None if index is None else dict(index)
        self.dtype = dtype
        if self.index is not None:
            for m in self.sources:
                if m not in self.index:
                    raise ValueError(f"modality '{m}' has no index")
            for m, idx in self.index.items():
                if m not in self.sources:
                    raise ValueError(f"index names modality '{m}', which has no source")
                if idx.dim() != 1:
                    raise ValueError(f"modality '{m}': index of shape {tuple(idx.shape)}, "
                                     f"expected (N,)")
        self._setup(mask, labels, latents, info, name, split, path, item_info)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", paired={self.index is not None})"

    def _lengths(self) -> Dict[str, int]:
        if self.index is None:
            return {m: int(src.shape[0]) for m, src in self.sources.items()}
        return {m: int(self.index[m].shape[0]) for m in self.sources}

    def _shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {m: tuple(src.shape[1:]) for m, src in self.sources.items()}

    def _devices(self) -> Dict[str, torch.device]:
        return {m: src.device for m, src in self.sources.items()}

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.to(self.dtype).div_(255)
        return x.to(self.dtype)

    def _rows(self, m: str, idx: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return idx.to(self.sources[m].device)
        return self.index[m][idx.to(self.index[m].device)].to(self.sources[m].device)

    def _gather(self, idx: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {m: self._convert(src[self._rows(m, idx)]) for m, src in self.sources.items()}

    @cached_property
    def data(self) -> Dict[str, torch.Tensor]:
        """``{modality: (N, ...)}`` float tensors, built (and kept) on first access."""
        return {m: self._convert(src if self.index is None else src[self.index[m]])
                for m, src in self.sources.items()}

    def _select(self, idx: torch.Tensor) -> "RealDataset":
        out = self._with_items(idx)
        out.__dict__.pop("data", None)
        out.index = {m: self._rows(m, idx) for m in self.sources}
        return out

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "RealDataset":
        """A copy with ``sources`` (still ``uint8``), index, masks and labels on ``device``;
        ``dtype`` becomes the dtype ``data`` is materialised in."""
        out = copy.copy(self)
        out.__dict__.pop("data", None)
        out.sources = {m: src.to(device) for m, src in self.sources.items()}
        out.index = None if self.index is None else {m: i.to(device)
                                                     for m, i in self.index.items()}
        out.dtype = dtype or self.dtype
        self._move_rest(out, device, dtype)
        return out


# --- the loaders ------------------------------------------------------------------------------

def mnist(root: PathLike, train: bool = True, dtype: torch.dtype = torch.float32) -> RealDataset:
    """MNIST as one modality ``"mnist"``: ``(N, 1, 28, 28)`` in [0, 1] and digit labels.

    Reads ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each optionally
    ``.gz``; torchvision's layout), else the same files directly in ``root``, else the legacy
    ``root/MNIST/processed/{training,test}.pt`` that MoPoE reads.
    """
    images, labels, files = _load_mnist_arrays(root, train)
    return RealDataset({"mnist": images}, labels, dtype=dtype, info={"files": files},
                       name="mnist", split="train" if train else "test", path=root)


def svhn(root: PathLike, split: str = "train", dtype: torch.dtype = torch.float32) -> RealDataset:
    """SVHN (cropped digits) as one modality ``"svhn"``: ``(N, 3, 32, 32)`` in [0, 1].

    Reads ``root/{split}_32x32.mat`` (torchvision's layout) or ``root/SVHN/{split}_32x32.mat``
    (MoPoE's); ``split`` is ``"train"``, ``"test"`` or ``"extra"``. Label 10 becomes 0.
    """
    images, labels, files = _load_svhn_arrays(root, split)
    return RealDataset({"svhn": images}, labels, dtype=dtype, info={"files": files},
                       name="svhn", split=split, path=root)


# --- MNIST-SVHN(-Text) ------------------------------------------------------------------------

def _rand_match_on_idx(labels1: torch.Tensor, labels2: torch.Tensor, max_per_class: int,
                       dm: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shi et al.'s / MoPoE's ``rand_match_on_idx``: per class, ``dm`` random matchings."""
    idx1, idx2 = [], []
    for label in torch.unique(labels1).tolist():
        l1 = torch.nonzero(labels1 == label).flatten()
        l2 = torch.nonzero(labels2 == label).flatten()
        n = min(len(l1), len(l2), max_per_class)
        l1, l2 = l1[:n], l2[:n]
        for _ in range(dm):
            idx1.append(l1[torch.randperm(n, generator=generator)])
            idx2.append(l2[torch.randperm(n, generator=generator)])
    empty = torch.empty(0, dtype=torch.long)
    return torch.cat(idx1) if idx1 else empty, torch.cat(idx2) if idx2 else empty


def _text_table(length: int):
    """All (digit, start) strings of :func:`~pyro_mmvae.data.text.digit_text`, encoded."""
    strings, first = [], []
    for word in DIGIT_WORDS:
        first.append(len(strings))
        for start in range(length - len(word)):
            strings.append(" " * start + word + " " * (length - start - len(word)))
    return encode_text(strings, length), torch.tensor(first), strings


def mnist_svhn(root: PathLike, train: bool = True, pairs_per_digit: int = 20, text: bool = False,
               seed: int = 0, max_per_class: int = 10000, use_index_files: bool = True,
               text_length: int = 8, dtype: torch.dtype = torch.float32) -> RealDataset:
    r"""MNIST-SVHN (Shi et al. 2019) or, with ``text=True``, MNIST-SVHN-Text (Sutter et al.).

    Modalities ``"mnist"`` ``(N, 1, 28, 28)``, ``"svhn"`` ``(N, 3, 32, 32)`` and optionally
    ``"text"`` ``(N, text_length, 71)`` one-hot; ``labels`` the shared digit.

    Pairing, as ``rand_match_on_idx`` in both papers' code: for each digit ``l``, take the
    first ``n_l = min(#MNIST_l, #SVHN_l, max_per_class)`` images of that class of each set (in
    file order), then ``pairs_per_digit`` times (the "data multiplication" ``dm``; 20 in MoPoE,
    30 in MMVAE's script) zip a random permutation of the MNIST ones with a random
    permutation of the SVHN ones, so each image is in about ``dm`` pairs. If
    ``root/{train,test}-ms-mnist-idx.pt`` and ``-svhn-idx.pt`` exist (MMVAE's
    ``make-mnist-svhn-idx.py`` writes them) and ``use_index_files``, those indices are used
    and ``pairs_per_digit``, ``max_per_class`` and ``seed`` do not affect the pairing. The
    pairing is in ``info["pairing"]`` and ``index``; save it with ``torch.save`` to reuse it.

    Text (MoPoE ``create_text_from_label_mnist``): the digit's English word at a random start
    index ``0 .. text_length - 1 - len(word)`` in a string of spaces, one-hot over the
    71-symbol :data:`~pyro_mmvae.data.text.ALPHABET`. MoPoE redraws the start index at every
    ``__getitem__``; here it is drawn once per pair from ``seed`` (reload with another seed for
    new offsets).

    Files: MNIST as in :func:`mnist` and SVHN as in :func:`svhn`, under the same ``root``.
    The float ``data`` of the full training set is about 20 GB; see :class:`RealDataset`.
    """
    if pairs_per_digit < 1 or max_per_class < 1:
        raise ValueError(f"pairs_per_digit ({pairs_per_digit}) and max_per_class "
                         f"({max_per_class}) must be positive")
    if text and text_length < 1 + max(map(len, DIGIT_WORDS)):
        raise ValueError(f"text_length must be at least {1 + max(map(len, DIGIT_WORDS))}, got "
                         f"{text_length}")
    root = Path(root)
    m_images, m_labels, m_files = _load_mnist_arrays(root, train)
    s_images, s_labels, s_files = _load_svhn_arrays(root, "train" if train else "test")
    prefix = "train" if train else "test"
    m_idx_path, s_idx_path = root / f"{prefix}-ms-mnist-idx.pt", root / f"{prefix}-ms-svhn-idx.pt"
    generator = torch.Generator().manual_seed(seed)
    have = [p.is_file() for p in (m_idx_path, s_idx_path)]
    if use_index_files and any(have):
        if not all(have):
            missing = s_idx_path if have[0] else m_idx_path
            raise _not_found("MNIST-SVHN pairing index", [missing],
                             "the other index file of the pair exists: restore this one, "
                             "or delete the other (or pass use_index_files=False) to draw "
                             "a new pairing")
        m_idx = _load_index_file(m_idx_path, len(m_labels))
        s_idx = _load_index_file(s_idx_path, len(s_labels))
        if m_idx.shape != s_idx.shape:
            raise DatasetFormatError(f"{m_idx_path} has {len(m_idx)} indices but {s_idx_path} "
                                     f"has {len(s_idx)}")
        bad = torch.nonzero(m_labels[m_idx] != s_labels[s_idx]).flatten()
        if len(bad):
            k = int(bad[0])
            raise DatasetFormatError(
                f"{m_idx_path} and {s_idx_path} do not pair images of the same digit with "
                f"these MNIST/SVHN files ({len(bad)} mismatches; pair {k}: MNIST "
                f"{int(m_idx[k])} is a {int(m_labels[m_idx[k]])}, SVHN {int(s_idx[k])} a "
                f"{int(s_labels[s_idx[k]])}); pass use_index_files=False to draw a new pairing")
        pairing, files = "files", m_files + s_files + [str(m_idx_path), str(s_idx_path)]
    else:
        m_idx, s_idx = _rand_match_on_idx(m_labels, s_labels, max_per_class, pairs_per_digit,
                                          generator)
        pairing, files = "generated", m_files + s_files
    if len(m_idx) == 0:
        raise DatasetFormatError(f"no MNIST-SVHN pairs: the files {m_files + s_files} share no "
                                 f"digit class")
    labels = m_labels[m_idx]
    sources = {"mnist": m_images, "svhn": s_images}
    index = {"mnist": m_idx, "svhn": s_idx}
    info = {"files": files, "pairing": pairing}
    if text:
        table, first, strings = _text_table(text_length)
        word_len = torch.tensor([len(w) for w in DIGIT_WORDS])
        choices = text_length - word_len[labels]  # number of valid start indices
        start = (torch.rand(len(labels), generator=generator, dtype=torch.float64)
                 * choices).long()
        start = torch.minimum(start, choices - 1)
        sources["text"] = table
        index["text"] = first[labels] + start
        info["text_strings"] = strings
    return RealDataset(sources, labels, index=index, dtype=dtype, info=info,
                       name="mnist_svhn_text" if text else "mnist_svhn", split=prefix, path=root)


# --- PolyMNIST --------------------------------------------------------------------------------


def polymnist(root: PathLike, train: bool = True, num_modalities: int = 5,
              limit: Optional[int] = None, dtype: torch.dtype = torch.float32) -> RealDataset:
    """PolyMNIST (MoPoE): modalities ``"m0"`` ... ``"m{M-1}"``, each ``(N, 3, 28, 28)``.

    Reads the unpacked ``PolyMNIST.zip``: ``root/{train,test}/m{k}/{index}.{label}.png`` (or
    the same under ``root/PolyMNIST``). MoPoE's generator saves tuple ``index`` of digit
    ``label`` under that name in every modality, so the data point is the set of files with
    one name; every ``m{k}`` must hold the same names. Data points are ordered by ``(index,
    label)``, which interleaves the digits, so ``limit`` (the first ``limit`` tuples) keeps
    the classes balanced. Reading all 60,000 x 5 training PNGs takes a minute or so.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be positive, got {num_modalities}")
    root = Path(root)
    split = "train" if train else "test"
    split_dir = root / split
    if not split_dir.is_dir() and (root / "PolyMNIST" / split).is_dir():
        split_dir = root / "PolyMNIST" / split
    names: Dict[str, set] = {}
    for k in range(num_modalities):
        folder = split_dir / f"m{k}"
        if not folder.is_dir():
            raise _not_found(f"PolyMNIST ({split}, modality m{k})", [folder], _POLY_HOW)
        names[f"m{k}"] = {e.name for e in os.scandir(folder)
                          if e.name.lower().endswith(".png") and e.is_file()}
    reference = names["m0"]
    if not reference:
        raise DatasetFormatError(f"{split_dir / 'm0'}: no .png files; expected "
                                 f"{{index}}.{{label}}.png images (e.g. 0.7.png)")
    parsed = {}
    for name in reference:
        match = _POLY_NAME.match(name)
        if match is None:
            raise DatasetFormatError(f"{split_dir / 'm0' / name}: file name is not "
                                     f"{{index}}.{{label}}.png (e.g. 0.7.png)")
        parsed[name] = (int(match.group(1)), int(match.group(2)))
    for m, found in names.items():
        if found != reference:
            gone, extra = sorted(reference - found), sorted(found - reference)
            detail = (f"{split_dir / m / gone[0]} is missing ({len(gone)} missing)" if gone
                      else f"{split_dir / m / extra[0]} has no partner in m0")
            raise DatasetFormatError(f"PolyMNIST modalities do not hold the same tuples: "
                                     f"{detail}; every m<k> must have the same file names")
    order = sorted(reference, key=parsed.__getitem__)
    if limit is not None:
        order = order[:limit]
    sources = {}
    for m in names:
        arrays = [_read_rgb(split_dir / m / name) for name in order]
        odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
        if odd is not None:
            raise DatasetFormatError(f"{split_dir / m / order[odd]}: size "
                                     f"{arrays[odd].shape[:2]} differs from "
                                     f"{arrays[0].shape[:2]} ({split_dir / m / order[0]})")
        sources[m] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([parsed[n][1] for n in order], dtype=torch.long)
    return RealDataset(sources, labels, dtype=dtype,
                       info={"files": order, "split_dir": str(split_dir)}, name="polymnist",
                       split=split, path=split_dir, item_info=("files",))


# --- CelebA -----------------------------------------------------------------------------------

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
"""The 40 CelebA attributes in ``list_attr_celeba.txt`` order."""

_CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2, "all": None}


def celeba(root: PathLike, split: str = "train", image_size: Optional[int] = 64,
           attributes: Optional[Sequence[str]] = None, center_crop: Optional[int] = 148,
           limit: Optional[int] = None, dtype: torch.dtype = torch.float32) -> RealDataset:
    """Bimodal CelebA: ``"image"`` ``(N, 3, S, S)`` in [0, 1] and ``"attributes"`` ``(N, A)``.

    ``attributes`` are the binary face attributes as float {0, 1} (``-1`` in the file is 0),
    all 40 in file order by default (:data:`CELEBA_ATTRIBUTES`) or the named ones in the
    given order (e.g. MVAE's 18). ``labels`` holds the same values as a long ``(N, A)``
    tensor; the names are in ``info["attribute_names"]``.

    The MoPoE paper's second modality is a text string of the present attributes' names; its
    code reads that text from a precomputed CSV that is not part of CelebA, so it is omitted
    here: encode your own with :func:`pyro_mmvae.data.text.encode_text` if you need it.

    Reads the torchvision layout ``root/celeba/img_align_celeba/*.jpg``,
    ``root/celeba/list_attr_celeba.txt`` and ``root/celeba/list_eval_partition.txt`` (the
    ``celeba`` level may be omitted; the Kaggle ``.csv`` versions of the two lists are accepted
    too). ``split``: ``"train"`` (partition 0), ``"valid"`` (1, MoPoE's test set), ``"test"``
    (2) or ``"all"``. Images: ``center_crop=148`` then a bicubic resize to ``image_size`` as
    MoPoE does; ``center_crop=None`` resizes the shorter side to ``image_size`` then
    centre-crops (MVAE, torchvision); both None keeps the 178 x 218 originals. ``limit`` reads
    only the first ``limit`` images of the split. The full training split at 64 x 64 is 2 GB as
    ``uint8`` (8 GB as float ``data``) and takes minutes to decode.
    """
    if split not in _CELEBA_SPLITS:
        raise ValueError(f"split must be one of {sorted(_CELEBA_SPLITS)}, got {split!r}")
    root = Path(root)
    base = root / "celeba"
    if not base.is_dir() and any((root / f).is_file() for f in (
            "list_attr_celeba.txt", "list_attr_celeba.csv")):
        base = root
    attr_path = _celeba_file(base, "list_attr_celeba")
    part_path = _celeba_file(base, "list_eval_partition")
    img_dir = base / "img_align_celeba"
    if not img_dir.is_dir():
        raise _not_found("CelebA images", [img_dir], _CELEBA_HOW)
    names, rows = _celeba_table(attr_path)
    _, partition_rows = _celeba_table(part_path)
    partition = {}
    for fname, (value,) in partition_rows:
        if value not in ("0", "1", "2"):
            raise DatasetFormatError(f"{part_path}: partition {value!r} for {fname}, expected "
                                     f"0, 1 or 2")
        partition[fname] = int(value)
    want = _CELEBA_SPLITS[split]
    selected = []
    for fname, values in rows:
        if fname not in partition:
            raise DatasetFormatError(f"{part_path} has no partition for {fname} (listed in "
                                     f"{attr_path})")
        if want is None or partition[fname] == want:
            selected.append((fname, values))
    if limit is not None:
        selected = selected[:limit]
    if attributes is None:
        columns = list(range(len(names)))
    else:
        unknown = [a for a in attributes if a not in names]
        if unknown:
            raise ValueError(f"unknown CelebA attribute {unknown[0]!r}; {attr_path} has "
                             f"{names}")
        columns = [names.index(a) for a in attributes]
    try:
        table = np.array([[int(v) for v in values] for _, values in selected],
                         dtype=np.int64).reshape(len(selected), len(names))
    except ValueError as err:
        raise DatasetFormatError(f"{attr_path}: attribute values must be -1/1 ({err})") from err
    attrs = torch.from_numpy((table[:, columns] > 0).astype(np.int64))
    # Kaggle's archive nests the folder twice: img_align_celeba/img_align_celeba/*.jpg.
    if selected and not (img_dir / selected[0][0]).is_file() \
            and (img_dir / "img_align_celeba" / selected[0][0]).is_file():
        img_dir = img_dir / "img_align_celeba"
    arrays = []
    from PIL import Image, UnidentifiedImageError

    for fname, _ in selected:
        path = img_dir / fname
        if not path.is_file():
            raise _not_found("CelebA image", [path], _CELEBA_HOW)
        try:
            with Image.open(path) as img:
                img = _celeba_transform(img.convert("RGB"), image_size, center_crop)
                arrays.append(np.asarray(img))
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetFormatError(f"{path}: not a readable image ({err})") from err
        if arrays[-1].shape != arrays[0].shape:
            raise DatasetFormatError(f"{path}: size {arrays[-1].shape[:2]} differs from "
                                     f"{arrays[0].shape[:2]}; pass image_size to resize")
    if arrays:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        side = image_size or 0
        images = torch.empty(0, 3, side, side, dtype=torch.uint8)
    return RealDataset({"image": images, "attributes": attrs.to(dtype)}, attrs, dtype=dtype,
                       info={"files": [f for f, _ in selected],
                             "attribute_names": [names[c] for c in columns],
                             "image_dir": str(img_dir)},
                       name="celeba", split=split, path=base, item_info=("files",))
