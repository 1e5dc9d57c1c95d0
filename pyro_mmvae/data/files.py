r"""Your own data from files: ``.npz`` archives and folders, checked at the door.

:func:`read_multimodal` reads the layouts ``pyro-mmvae train --data PATH`` takes:

- **an** ``.npz`` **archive** of named arrays: every array is a modality ``(N, ...)`` (one row
  per data point), except ``labels`` (optional, ``(N,)`` integer classes, for coherence and
  latent classification) and ``mask_<m>`` (optional, ``(N,)`` bool, True where modality ``m``
  is observed). A data point whose values of ``m`` are all NaN is missing too (a partly-NaN
  one is an error: say which entries are missing, or mark the whole row);
- **a folder of arrays**: ``<m>.npy`` per modality, with the same optional ``labels.npy`` and
  ``mask_<m>.npy``;
- **a folder per modality**: ``PATH/<m>/<id>.npy`` or ``PATH/<m>/<id>.png`` (one file per data
  point); the data points are the ids of all modalities' files, and a modality without a file
  for an id is missing there; optional ``PATH/labels.csv`` with lines ``id,label``.

The kind of each modality (how the CLI encodes and decodes it) is given (``kinds``) or
inferred from one data point's shape: ``(D,)`` a ``"vector"``, ``(H, W)`` a one-channel
``"image"`` (a channel axis is added), ``(C, H, W)`` with ``C`` in 1, 3, 4 an ``"image"``
(``(H, W, C)`` is moved to channels-first); ``"text"`` (one-hot ``(L, V)``) is never inferred.
Images stored as ``uint8`` (and PNG files) are scaled to ``[0, 1]``.

Every problem is a :class:`ValueError` (or ``FileNotFoundError``) naming the file or the
modality before anything is trained: unequal numbers of data points, non-numeric or infinite
values, masks of the wrong shape or naming no modality, a modality observed nowhere, a data
point observing nothing, labels that are not non-negative integers, an unknown kind.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from pyro_mmvae.protocol import from_nan

KINDS = ("vector", "image", "text")
PathLike = Union[str, os.PathLike]


def parse_kinds(text: Optional[str]) -> Dict[str, str]:
    """``"a=image,b=vector"`` -> ``{"a": "image", "b": "vector"}`` (None or ``""``: ``{}``)."""
    out: Dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, kind = part.partition("=")
        if not sep or not name.strip() or kind.strip() not in KINDS:
            raise ValueError(f"--modality-kinds: {part!r} is not MODALITY=KIND with KIND one of "
                             f"{', '.join(KINDS)}")
        out[name.strip()] = kind.strip()
    return out


def _numeric(name: str, a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype == bool:
        return a.astype(np.float64)
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"modality '{name}' ({where}): values of dtype {a.dtype}, expected "
                         "numbers")
    if a.ndim == 0:
        raise ValueError(f"modality '{name}' ({where}): a scalar, expected one row per data "
                         "point")
    return a


def _arrays_from_npz(path: Path) -> Tuple[dict, dict, Optional[np.ndarray]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip, truncated, pickled objects
        raise ValueError(f"{path.name}: cannot be read as an .npz archive of arrays "
                         f"({type(err).__name__}: {err})") from err
    with archive:
        items = {k: archive[k] for k in archive.files}
    return _split_named(items, path.name)


def _split_named(items: Mapping[str, np.ndarray], where: str):
    labels = items.get("labels")
    masks = {k[len("mask_"):]: v for k, v in items.items() if k.startswith("mask_")}
    arrays = {k: v for k, v in items.items() if k != "labels" and not k.startswith("mask_")}
    if not arrays:
        raise ValueError(f"{where}: no modality arrays (only {sorted(items) or 'nothing'}); "
                         "every array other than 'labels' and 'mask_<m>' is a modality")
    return arrays, masks, labels


def _arrays_from_folder(path: Path):
    files = sorted(path.glob("*.npy"))
    if files:
        items = {}
        for f in files:
            try:
                items[f.stem] = np.load(f, allow_pickle=False)
            except Exception as err:
                raise ValueError(f"{f.name}: cannot be read as a .npy array "
                                 f"({type(err).__name__}: {err})") from err
        return _split_named(items, path.name)
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{path}: neither <modality>.npy arrays nor one folder per modality")
    per_item = {p.name: {f.stem: f for f in sorted(p.iterdir())
                         if f.suffix.lower() in (".npy", ".png")} for p in folders}
    for m, found in per_item.items():
        if not found:
            raise ValueError(f"modality '{m}': its folder holds no .npy or .png files")
    ids = sorted(set().union(*map(set, per_item.values())))
    arrays, masks = {}, {}
    for m, found in per_item.items():
        first = _read_item(next(iter(found.values())), m)
        rows = np.full((len(ids),) + first.shape, np.nan)
        for i, key in enumerate(ids):
            if key in found:
                item = _read_item(found[key], m)
                if item.shape != first.shape:
                    raise ValueError(f"modality '{m}': {found[key].name} has shape {item.shape}, "
                                     f"the others {first.shape}")
                rows[i] = item
        arrays[m] = rows
        masks[m] = np.array([key in found for key in ids])
    labels = _labels_csv(path / "labels.csv", ids) if (path / "labels.csv").is_file() else None
    return arrays, masks, labels


def _read_item(path: Path, modality: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as img:
                a = np.asarray(img, dtype=np.float64) / 255.0
            return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]  # (C, H, W)
        a = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"modality '{modality}': {path.name} cannot be read "
                         f"({type(err).__name__}: {err})") from err
    a = _numeric(modality, a, path.name)
    return a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def _labels_csv(path: Path, ids) -> np.ndarray:
    table = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].strip().lower() == "id":
                continue
            if len(row) != 2:
                raise ValueError(f"{path.name}: line {row!r} is not 'id,label'")
            try:
                table[row[0].strip()] = int(row[1])
            except ValueError:
                raise ValueError(f"{path.name}: label {row[1]!r} of {row[0]!r} is not an "
                                 "integer") from None
    missing = [i for i in ids if i not in table]
    if missing:
        raise ValueError(f"{path.name}: no label for data point(s) {missing[:5]}")
    return np.array([table[i] for i in ids])


def _as_image(name: str, a: np.ndarray, given: bool) -> np.ndarray:
    item = a.shape[1:]
    if len(item) == 2:
        return a[:, None]
    if len(item) == 3 and item[0] in (1, 3, 4):
        return a
    if len(item) == 3 and item[-1] in (1, 3, 4):
        return np.moveaxis(a, -1, 1)
    raise ValueError(f"modality '{name}': data points of shape {item} are not images "
                     "(H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4"
                     + ("" if given else "; give its kind with --modality-kinds"))


def _kind(name: str, a: np.ndarray) -> str:
    item = a.shape[1:]
    if len(item) == 1:
        return "vector"
    if len(item) in (2, 3):
        return "image"
    raise ValueError(f"modality '{name}': cannot tell the kind of data points of shape {item}; "
                     "give it with --modality-kinds NAME=vector|image|text")


def digest(path: PathLike) -> str:
    """SHA-256 of a data file, or of a folder's files (relative names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def modality_names(path: PathLike) -> list:
    """The modalities of a data file or folder (module docstring) from its names alone, without
    reading or checking the values (:func:`read_multimodal` does that)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_dir():
        names = [p.stem for p in path.glob("*.npy")] or [p.name for p in path.iterdir()
                                                         if p.is_dir()]
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
        except Exception as err:
            raise ValueError(f"{path.name}: cannot be read as an .npz archive of arrays "
                             f"({type(err).__name__}: {err})") from err
    else:
        raise ValueError(f"--data {path.name}: expected an .npz archive or a folder "
                         "(<modality>.npy files, or one folder per modality)")
    return sorted(n for n in names if n != "labels" and not n.startswith("mask_"))


def read_multimodal(path: PathLike, kinds: Optional[Mapping[str, str]] = None,
                    dtype: Optional[torch.dtype] = None):
    """Read a multimodal dataset from ``path`` (module docstring), checked.

    :param kinds: ``{modality: "vector" | "image" | "text"}`` for some or all modalities; the
        others are inferred.
    :param dtype: of the data (default: torch's default dtype).
    :returns: ``(dataset, kinds)``: a :class:`~pyro_mmvae.data.MultimodalDataset` (``data``
        ``{m: (N, ...)}`` with finite placeholders where missing, ``mask``, ``labels`` or
        None, ``info``: format and SHA-256 of the files) and the kind of every modality.
    """
    from pyro_mmvae.data import MultimodalDataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_dir():
        arrays, masks, labels = _arrays_from_folder(path)
        layout = "folder"
    elif path.suffix == ".npz":
        arrays, masks, labels = _arrays_from_npz(path)
        layout = "npz"
    else:
        raise ValueError(f"--data {path.name}: expected an .npz archive or a folder "
                         "(<modality>.npy files, or one folder per modality)")
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(arrays))
    if unknown:
        raise ValueError(f"--modality-kinds names '{unknown[0]}', which is not a modality of the "
                         f"data ({', '.join(sorted(arrays))})")
    unknown = sorted(set(masks) - set(arrays))
    if unknown:
        raise ValueError(f"mask_{unknown[0]} masks no modality (the modalities are "
                         f"{', '.join(sorted(arrays))})")
    sizes = {}
    for m, a in arrays.items():
        raw = _numeric(m, np.asarray(a), layout)
        a = raw / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float64)
        given = m in kinds
        kind = kinds[m] if given else kinds.setdefault(m, _kind(m, a))
        arrays[m] = _as_image(m, a, given) if kind == "image" else a
        if kind == "text" and a.ndim != 3:
            raise ValueError(f"modality '{m}': text data points are one-hot (L, V) arrays, got "
                             f"shape {a.shape[1:]}")
        if np.isinf(a).any():
            raise ValueError(f"modality '{m}': infinite values; mark missing entries with NaN "
                             "or a mask")
        nan = np.isnan(a).reshape(a.shape[0], -1)
        partly = nan.any(1) & ~nan.all(1)
        if partly.any():
            raise ValueError(f"modality '{m}': data point(s) {np.flatnonzero(partly)[:5].tolist()} "
                             "are partly NaN; a missing entry is NaN throughout (or give "
                             f"mask_{m})")
        sizes[m] = a.shape[0]
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError("the modalities have different numbers of data points: "
                         + ", ".join(f"'{m}' {s}" for m, s in sizes.items()))
    if n == 0:
        raise ValueError("the data hold no data points")
    data, observed = from_nan(arrays, how="all", dtype=dtype)
    for m, given in masks.items():
        given = np.asarray(given)
        if given.shape != (n,) or not (given.dtype == bool or np.isin(given, (0, 1)).all()):
            raise ValueError(f"mask_{m}: expected ({n},) booleans, got shape {given.shape} of "
                             f"{given.dtype}")
        given = torch.as_tensor(given.astype(bool))
        nan_but_observed = given & ~observed[m]
        if nan_but_observed.any():
            i = int(nan_but_observed.nonzero()[0])
            raise ValueError(f"modality '{m}': data point {i} is NaN but mask_{m} says it is "
                             "observed")
        observed[m] = given
    for m, o in observed.items():
        if not o.any():
            raise ValueError(f"modality '{m}' is observed at no data point")
    nothing = ~torch.stack(list(observed.values())).any(0)
    if nothing.any():
        raise ValueError(f"data point(s) {nothing.nonzero().flatten()[:5].tolist()} observe no "
                         "modality; drop them (every data point needs one)")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) \
                or (labels < 0).any():
            raise ValueError(f"labels: expected ({n},) non-negative integers, got shape "
                             f"{labels.shape} of {labels.dtype}")
        labels = torch.as_tensor(labels, dtype=torch.long)
    info = {"format": layout, "name": path.name, "sha256": digest(path), "num_points": n,
            "observed_fraction": {m: float(o.double().mean()) for m, o in observed.items()}}
    dataset = MultimodalDataset(data=data, mask=observed, labels=labels, info=info,
                                name=path.name)
    return dataset, kinds
