r"""The file readers of :mod:`pyro_mmvae.data.real`, and its two errors.

Each reader checks the files it needs before reading them and raises
:class:`DatasetNotFoundError` (a :class:`FileNotFoundError`) whose message gives the full
expected path and how to obtain the files, or :class:`DatasetFormatError` (a
:class:`ValueError`) naming the file that is truncated or malformed. Formats: IDX (MNIST,
optionally gzipped) and torchvision's legacy ``processed/*.pt``, MATLAB v5 via :mod:`scipy.io`
(SVHN), saved index tensors (MMVAE's MNIST-SVHN pairing), PNG/JPEG via PIL, and the CelebA
annotation lists (``.txt`` or Kaggle's ``.csv``). They return ``uint8`` arrays, channels first;
the dataset builders of :mod:`pyro_mmvae.data.real` put them into a
:class:`~pyro_mmvae.data.real.RealDataset`.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

_NOTHING_DOWNLOADED = "pyro_mmvae never downloads anything"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder is missing; the message names the full expected path."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is truncated or not in the expected format (file named)."""


def _not_found(what: str, expected: Sequence[Union[Path, str]],
               how: str) -> DatasetNotFoundError:
    paths = " or ".join(str(p) for p in expected)
    return DatasetNotFoundError(f"{what} not found: expected {paths}. {_NOTHING_DOWNLOADED}; "
                                f"{how}")


# --- MNIST ------------------------------------------------------------------------------------

_MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MNIST_HOW = ("copy the four IDX files (gzipped or not) of the MNIST distribution into that "
              "folder, e.g. from a machine with internet access run "
              "torchvision.datasets.MNIST(root, train=True, download=True) and "
              "(train=False) and copy root/MNIST/raw here")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: cannot be read ({err}); the file is corrupt or "
                                 f"truncated, copy it again") from err


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (magic number 0x00000800 + ndim, big-endian sizes)."""
    raw = _read_bytes(path)
    magic = 0x0800 + ndim
    if len(raw) < 4 or raw[:4] != struct.pack(">I", magic):
        got = f"{struct.unpack('>I', raw[:4])[0]:#010x}" if len(raw) >= 4 else "none"
        raise DatasetFormatError(f"{path}: not an unsigned-byte IDX file with {ndim} "
                                 f"dimension(s): magic number {got}, expected {magic:#010x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    need = header + int(np.prod(dims))
    if len(raw) != need:
        problem = "truncated" if len(raw) < need else "longer than its header says"
        raise DatasetFormatError(f"{path}: {problem}: {len(raw)} bytes, but a header of sizes "
                                 f"{dims} needs {need}; copy the file again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_mnist(root: Path, train: bool) -> Tuple[Optional[List[Path]], Optional[Path]]:
    """(raw IDX paths, legacy processed .pt path), whichever exists (raw first)."""
    for folder in (root / "MNIST" / "raw", root):
        found = []
        for name in _MNIST_FILES[train]:
            hit = next((folder / n for n in (name, name + ".gz") if (folder / n).is_file()), None)
            found.append(hit)
        if all(found):
            return found, None
    legacy = root / "MNIST" / "processed" / ("training.pt" if train else "test.pt")
    return None, legacy if legacy.is_file() else None


def _load_mnist_arrays(root: PathLike, train: bool) -> Tuple[torch.Tensor, torch.Tensor, list]:
    root = Path(root)
    raw, legacy = _find_mnist(root, train)
    if raw is None and legacy is None:
        raw_dir = root / "MNIST" / "raw"
        missing = [raw_dir / n for n in _MNIST_FILES[train] if not any(
            (raw_dir / x).is_file() for x in (n, n + ".gz"))]
        raise _not_found(f"MNIST ({'train' if train else 'test'})",
                         [missing[0], f"{missing[0]}.gz"],
                         _MNIST_HOW + f" (the legacy {root / 'MNIST' / 'processed'}/"
                         f"{'training' if train else 'test'}.pt of older torchvision also works)")
    if raw is not None:
        images = _read_idx(raw[0], 3)
        labels = _read_idx(raw[1], 1)
        files = [str(p) for p in raw]
        if images.shape[0] != labels.shape[0]:
            raise DatasetFormatError(f"{raw[0]} holds {images.shape[0]} images but {raw[1]} "
                                     f"holds {labels.shape[0]} labels")
        images, labels = torch.from_numpy(images), torch.from_numpy(labels).long()
    else:
        try:
            images, labels = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise DatasetFormatError(f"{legacy}: not a torchvision MNIST (images, labels) "
                                     f"file ({err})") from err
        files = [str(legacy)]
        if images.dim() != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise DatasetFormatError(f"{legacy}: expected uint8 images (N, 28, 28) and labels "
                                     f"(N,), got {tuple(images.shape)} and "
                                     f"{tuple(labels.shape)}")
        labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{files[-1]}: labels outside 0..9")
    return images.unsqueeze(1).contiguous(), labels, files


# --- SVHN -------------------------------------------------------------------------------------

_SVHN_SPLITS = ("train", "test", "extra")


def _find_svhn(root: Path, split: str) -> Path:
    if split not in _SVHN_SPLITS:
        raise ValueError(f"split must be one of {_SVHN_SPLITS}, got {split!r}")
    name = f"{split}_32x32.mat"
    for candidate in (root / name, root / "SVHN" / name):
        if candidate.is_file():
            return candidate
    raise _not_found(f"SVHN ({split})", [root / name, root / "SVHN" / name],
                     f"download {name} (format 2, cropped digits) from "
                     f"http://ufldl.stanford.edu/housenumbers/ on a machine with internet "
                     f"access and put it there")


def _load_svhn_arrays(root: PathLike, split: str) -> Tuple[torch.Tensor, torch.Tensor, list]:
    path = _find_svhn(Path(root), split)
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... on bad files
        raise DatasetFormatError(f"{path}: not a readable MATLAB (v5) file ({err}); copy it "
                                 f"again") from err
    if "X" not in mat or "y" not in mat:
        raise DatasetFormatError(f"{path}: expected variables 'X' and 'y', found "
                                 f"{sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DatasetFormatError(f"{path}: 'X' must be uint8 of shape (H, W, 3, N), got "
                                 f"{x.dtype} {x.shape}")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.shape[0] != x.shape[3]:
        raise DatasetFormatError(f"{path}: {x.shape[3]} images in 'X' but {y.shape[0]} labels "
                                 f"in 'y'")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DatasetFormatError(f"{path}: labels outside 0..10")
    images = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))))
    labels = torch.from_numpy(y % 10)  # SVHN writes the digit 0 as label 10
    return images, labels, [str(path)]


# --- MNIST-SVHN pairing files -----------------------------------------------------------------

def _load_index_file(path: Path, size: int) -> torch.Tensor:
    try:
        idx = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DatasetFormatError(f"{path}: not a saved index tensor ({err})") from err
    if not torch.is_tensor(idx) or idx.dim() != 1 or idx.dtype.is_floating_point \
            or idx.dtype == torch.bool:
        raise DatasetFormatError(f"{path}: expected a 1-D integer tensor of indices, got "
                                 f"{type(idx).__name__} {getattr(idx, 'shape', '')}")
    idx = idx.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= size):
        raise DatasetFormatError(f"{path}: indices outside 0..{size - 1} (the dataset it "
                                 f"indexes has {size} images)")
    return idx


# --- PolyMNIST --------------------------------------------------------------------------------

_POLY_NAME = re.compile(r"^(\d+)\.(\d)\.png$")
_POLY_HOW = ("download PolyMNIST.zip (linked from the README of "
             "https://github.com/thomassutter/MoPoE) on a machine with internet access and "
             "unzip it so that root/train/m0 ... root/test/m4 exist, each holding "
             "{index}.{label}.png files")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetFormatError(f"{path}: not a readable image ({err})") from err


# --- CelebA -----------------------------------------------------------------------------------

_CELEBA_HOW = ("get img_align_celeba.zip (aligned and cropped JPEGs), list_attr_celeba.txt and "
               "list_eval_partition.txt from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
               "(or run torchvision.datasets.CelebA(root, download=True) on a machine with "
               "internet access) and place them as root/celeba/img_align_celeba/*.jpg, "
               "root/celeba/list_attr_celeba.txt, root/celeba/list_eval_partition.txt")


def _celeba_table(path: Path) -> Tuple[List[str], List[Tuple[str, List[str]]]]:
    """(column names, [(file name, values)]) of a CelebA .txt (count line, header) or .csv."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot be read as text ({err})") from err
    if path.suffix == ".csv":
        rows = [ln.strip().split(",") for ln in lines]
        if not rows:
            raise DatasetFormatError(f"{path}: empty")
        header, body = rows[0][1:], rows[1:]
        count = None
    elif path.name == "list_eval_partition.txt":
        header, body, count = ["partition"], [ln.split() for ln in lines], None
    else:
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise DatasetFormatError(f"{path}: expected the image count on the first line and "
                                     f"the attribute names on the second")
        count, header, body = int(lines[0]), lines[1].split(), [ln.split() for ln in lines[2:]]
    for row in body:
        if len(row) != len(header) + 1:
            raise DatasetFormatError(f"{path}: line {' '.join(row)[:60]!r} has {len(row) - 1} "
                                     f"values, expected {len(header)}")
    if count is not None and count != len(body):
        raise DatasetFormatError(f"{path}: header announces {count} images but the file lists "
                                 f"{len(body)} (truncated?)")
    return header, [(row[0], row[1:]) for row in body]


def _celeba_file(base: Path, stem: str) -> Path:
    for ext in (".txt", ".csv"):
        if (base / (stem + ext)).is_file():
            return base / (stem + ext)
    raise _not_found("CelebA annotation file", [base / (stem + ".txt")], _CELEBA_HOW)


def _celeba_transform(img, image_size: Optional[int], center_crop: Optional[int]):
    from PIL import Image

    width, height = img.size
    if center_crop is not None:
        # MoPoE: crop a centred square (offsets (H - c) // 2, (W - c) // 2), bicubic resize.
        c = min(center_crop, width, height)
        top, left = (height - c) // 2, (width - c) // 2
        img = img.crop((left, top, left + c, top + c))
        if image_size is not None and image_size != c:
            img = img.resize((image_size, image_size), Image.BICUBIC)
    elif image_size is not None:
        # MVAE / torchvision: Resize(image_size) on the shorter side, then CenterCrop.
        short, long_ = min(width, height), max(width, height)
        new_long = int(image_size * long_ / short)
        size = (image_size, new_long) if width <= height else (new_long, image_size)
        if size != (width, height):
            img = img.resize(size, Image.BILINEAR)
        width, height = img.size
        top = int(round((height - image_size) / 2.0))
        left = int(round((width - image_size) / 2.0))
        img = img.crop((left, top, left + image_size, top + image_size))
    return img
