r"""The library's one dataset type, :class:`MultimodalDataset`.

Every dataset of :mod:`pyro_mmvae.data` is one: the simulations
(:func:`~pyro_mmvae.data.shared_latent_study`, :func:`~pyro_mmvae.data.bimodal_label_study`,
...), the built-in image/text benchmarks (:func:`~pyro_mmvae.data.load_poly_digits`, ...) and
the real-data loaders of :mod:`pyro_mmvae.data.real` (whose :class:`~pyro_mmvae.data.real.
RealDataset` materialises its ``data`` lazily, per batch). It holds, for ``N`` items:

=============  =====================================================================
``data``       ``{modality: (N, ...)}`` tensors (float images, vectors, one-hot text)
``mask``       ``{modality: (N,)}`` bool, True where the modality is observed (all True
               unless given)
``labels``     ``(N,)`` class labels or ``(N, A)`` attributes, or None
``latents``    ``(N, d)`` ground-truth latents of a simulation, or None
``info``       a dict of anything else: per-item records (those named in ``item_info``,
               each of length ``N`` or a ``{modality: (N,)}`` dict), generating
               parameters, the files read, ...
``name``,      what it is (``"polydigits"``, ``"mnist"``, ...), ``"train"`` / ``"test"``
``split``,     / ... (``""`` when it has no split), the file or folder it was read from
``path``       (None when built in memory, and for sub-datasets)
=============  =====================================================================

Mini-batches come from :meth:`MultimodalDataset.batches`; ``ds[idx]`` is the sub-dataset of
the items ``idx``.

Example::

    train, test = load_poly_digits()
    for data, mask in train.batches(128, generator=torch.Generator().manual_seed(0)):
        svi.step(data, mask)
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["MultimodalDataset"]

Index = Union[int, slice, torch.Tensor, np.ndarray, list, tuple]


class MultimodalDataset:
    """``N`` items of several modalities, in the library's batch protocol (module docstring).

    :param data: ``{modality: (N, ...)}`` tensors.
    :param mask: ``{modality: (N,)}`` bool, one entry per modality; None: all True.
    :param labels: ``(N,)`` or ``(N, A)``, or None (unlabelled).
    :param latents: ``(N, d)`` ground-truth latents, or None.
    :param info: anything else (kept by reference; sub-datasets share the non-per-item part).
    :param name, split: descriptive strings; ``path``: where it was read from, or None.
    :param item_info: the keys of ``info`` that are per-item records, sliced by ``ds[idx]``:
        each a tensor, array, list or tuple of length ``N``, or a dict of such (e.g.
        ``info["source_index"] = {modality: (N,)}``). The other entries are shared as they are.
    :raises ValueError: a modality, mask, label, latent or per-item record whose length is not
        ``N`` (the modality or key is named), a mask that is not ``(N,)`` bool, or a mask
        whose modalities differ from ``data``'s.
    """

    def __init__(self, data: Mapping[str, torch.Tensor],
                 mask: Optional[Mapping[str, torch.Tensor]] = None,
                 labels: Optional[torch.Tensor] = None, latents: Optional[torch.Tensor] = None,
                 info: Optional[Dict[str, Any]] = None, name: str = "", split: str = "",
                 path: Optional[Union[str, os.PathLike]] = None, *,
                 item_info: Iterable[str] = ()):
        data = dict(data)
        for m, x in data.items():
            if not torch.is_tensor(x) or x.dim() < 1:
                raise ValueError(f"modality '{m}': expected a tensor of shape (N, ...), got "
                                 f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        self.data = data
        self._setup(mask, labels, latents, info, name, split, path, item_info)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def fully_observed(cls, data: Mapping[str, torch.Tensor], labels=None, name: str = "",
                       split: str = "", source_index: Optional[Dict[str, torch.Tensor]] = None,
                       info: Optional[Dict[str, Any]] = None, *, latents=None,
                       item_info: Iterable[str] = (), path=None) -> "MultimodalDataset":
        """A dataset whose every modality is observed for every item (all-True masks).

        ``labels`` (anything ``torch.as_tensor`` takes) become ``long``; ``source_index``
        ``{modality: (N,)}`` (the rows of the images each item was made from) is stored as the
        per-item record ``info["source_index"]``.
        """
        info = dict(info or {})
        item_info = tuple(item_info)
        if source_index:
            info["source_index"] = dict(source_index)
            item_info += ("source_index",)
        if labels is not None:
            labels = torch.as_tensor(labels).to(torch.long)
        return cls(data, labels=labels, latents=latents, info=info, name=name, split=split,
                   path=path, item_info=item_info)

    def _setup(self, mask, labels, latents, info, name, split, path, item_info) -> None:
        """Check and store everything but the data (whose lengths :meth:`_lengths` gives)."""
        lengths = self._lengths()
        if labels is not None:
            labels = torch.as_tensor(labels)
        if latents is not None:
            latents = torch.as_tensor(latents)
        if lengths:
            first = next(iter(lengths))
            n = lengths[first]
            for m, k in lengths.items():
                if k != n:
                    raise ValueError(f"modality '{m}' has {k} items but modality '{first}' has "
                                     f"{n}: every modality needs one entry per item")
        elif labels is not None and labels.dim():
            n = int(labels.shape[0])
        elif latents is not None and latents.dim():
            n = int(latents.shape[0])
        else:
            n = 0
        self._n = int(n)
        if labels is not None and (labels.dim() not in (1, 2) or labels.shape[0] != n):
            raise ValueError(f"labels must have shape (N,) or (N, A) with N = {n}, got "
                             f"{tuple(labels.shape)}")
        if latents is not None and (latents.dim() != 2 or latents.shape[0] != n):
            raise ValueError(f"latents must have shape (N, d) with N = {n}, got "
                             f"{tuple(latents.shape)}")
        self.mask = self._checked_mask(mask, n)
        self.labels, self.latents = labels, latents
        self.info = {} if info is None else dict(info)
        self.item_info = tuple(dict.fromkeys((item_info,) if isinstance(item_info, str)
                                             else item_info))
        for key in self.item_info:
            if key not in self.info:
                raise ValueError(f"item_info names '{key}', which is not in info")
            _check_record(key, self.info[key], n)
        self.name, self.split = name, split
        self.path = None if path is None else Path(path)

    def _checked_mask(self, mask, n: int) -> Dict[str, torch.Tensor]:
        devices = self._devices()
        if mask is None:
            return {m: torch.ones(n, dtype=torch.bool, device=d) for m, d in devices.items()}
        mask = dict(mask)
        for m in devices:
            if m not in mask:
                raise ValueError(f"mask has no entry for modality '{m}' (give all-True for an "
                                 f"always observed modality)")
        for m, k in mask.items():
            if m not in devices:
                raise ValueError(f"mask names modality '{m}', which is not in data "
                                 f"{tuple(devices)}")
            if not torch.is_tensor(k) or k.dtype != torch.bool or tuple(k.shape) != (n,):
                raise ValueError(f"mask of modality '{m}' must be a bool tensor of shape "
                                 f"({n},), got {getattr(k, 'dtype', type(k).__name__)} "
                                 f"{tuple(getattr(k, 'shape', ()))}")
        return mask

    # --- the storage hooks (overridden by lazily materialised datasets) --------------------

    def _lengths(self) -> Dict[str, int]:
        """``{modality: leading dimension}`` of the stored data."""
        return {m: int(x.shape[0]) for m, x in self.data.items()}

    def _shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {m: tuple(x.shape[1:]) for m, x in self.data.items()}

    def _devices(self) -> Dict[str, torch.device]:
        return {m: x.device for m, x in self.data.items()}

    def _gather(self, idx: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{modality: (len(idx), ...)}`` for a CPU long index tensor."""
        return {m: x[idx.to(x.device)] for m, x in self.data.items()}

    def _select(self, idx: torch.Tensor) -> "MultimodalDataset":
        out = self._with_items(idx)
        out.data = self._gather(idx)
        return out

    def _with_items(self, idx: torch.Tensor) -> "MultimodalDataset":
        """A shallow copy with masks, labels, latents and per-item records at ``idx``."""
        out = copy.copy(self)
        out.mask = {m: k[idx.to(k.device)] for m, k in self.mask.items()}
        out.labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        out.latents = (None if self.latents is None
                       else self.latents[idx.to(self.latents.device)])
        out.info = dict(self.info)
        for key in self.item_info:
            out.info[key] = _take(self.info[key], idx)
        out._n, out.path = len(idx), None
        return out

    # --- the protocol ---------------------------------------------------------------------

    @property
    def modalities(self) -> Tuple[str, ...]:
        return tuple(self._lengths())

    @property
    def modality_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{modality: the shape of one item}``."""
        return self._shapes()

    @property
    def modality_dims(self) -> Dict[str, int]:
        """``{modality: the number of values of one item}`` (``D_m`` of ``(N, D_m)`` data)."""
        return {m: int(math.prod(s)) for m, s in self._shapes().items()}

    @property
    def source_index(self) -> Dict[str, torch.Tensor]:
        """``info["source_index"]`` (``{modality: (N,)}``, the rows of the images each item was
        made from), ``{}`` when there is none."""
        return self.info.get("source_index", {})

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        shapes = ", ".join(f"{m}: {s}" for m, s in self._shapes().items())
        pairs = (("labels", self.labels), ("latents", self.latents))
        extra = "".join(f", {k} {tuple(v.shape)}" for k, v in pairs if v is not None)
        where = "".join(f", {k}={v!r}" for k, v in (("name", self.name), ("split", self.split))
                        if v)
        return f"{type(self).__name__}(N={len(self)}{where}, {{{shapes}}}{extra})"

    def __getitem__(self, index: Index) -> "MultimodalDataset":
        """The sub-dataset of the items ``index``: an int (kept as one item, a leading
        dimension of 1), a slice, a list, or an integer or bool (``(N,)``) tensor or array.
        Per-item records of ``info`` are sliced too; ``path`` is None."""
        return self._select(self._index(index))

    def _index(self, index: Index) -> torch.Tensor:
        n = len(self)
        if isinstance(index, slice):
            return torch.arange(n)[index]
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            index = int(index)
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} items")
            return torch.tensor([index % n])
        if isinstance(index, (list, tuple)):
            index = np.asarray(index) if len(index) else np.zeros(0, dtype=np.int64)
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if tuple(idx.shape) != (n,):
                raise IndexError(f"a bool index must have shape ({n},), got {tuple(idx.shape)}")
            return torch.nonzero(idx.cpu()).flatten()
        if idx.is_floating_point() or idx.is_complex():
            raise IndexError(f"index tensors must be integer or bool, got {idx.dtype}")
        idx = idx.cpu().to(torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            bad = int(idx.min()) if int(idx.min()) < -n else int(idx.max())
            raise IndexError(f"index {bad} out of range for {n} items")
        return torch.where(idx < 0, idx + n, idx)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MultimodalDataset":
        """A copy with every tensor on ``device``; ``dtype`` converts the floating-point
        tensors only (``data``, ``latents`` and those in ``info``: masks, labels and integer
        records keep theirs)."""
        out = copy.copy(self)
        out.data = {m: _move(x, device, dtype) for m, x in self.data.items()}
        self._move_rest(out, device, dtype)
        return out

    def _move_rest(self, out: "MultimodalDataset", device, dtype) -> None:
        out.mask = {m: k.to(device) for m, k in self.mask.items()}
        out.labels = None if self.labels is None else self.labels.to(device)
        out.latents = None if self.latents is None else _move(self.latents, device, dtype)
        out.info = {k: _move(v, device, dtype) for k, v in self.info.items()}

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: Optional[torch.Generator] = None, drop_last: bool = False,
                with_labels: bool = False) -> Iterator[tuple]:
        """Iterate once over the items in mini-batches.

        :param batch_size: items per batch; ``drop_last``: skip the final incomplete batch.
        :param shuffle: the order ``torch.randperm(N, generator=generator)`` (``generator`` a
            CPU ``torch.Generator``; None uses torch's global RNG), cut into consecutive
            slices: exactly the batches of :func:`pyro_mmvae.train.iterate_minibatches` with
            ``drop_last=True``. Else the items in order.
        :yields: ``(data, mask)`` with ``data[m]`` of shape ``(B, ...)`` and ``mask[m]`` of
            shape ``(B,)``; ``(data, mask, labels)`` with ``with_labels=True``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if with_labels and self.labels is None:
            raise ValueError(f"with_labels=True, but the dataset {self.name!r} has no labels")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        # drawn on the CPU (reproducible), moved once to where the masks live
        order = order.to(next(iter(self.mask.values())).device) if self.mask else order
        stop = n - batch_size + 1 if drop_last else n
        for start in range(0, max(stop, 0), batch_size):
            idx = order[start:start + batch_size]
            data = self._gather(idx)
            mask = {m: k[idx.to(k.device)] for m, k in self.mask.items()}
            if with_labels:
                yield data, mask, self.labels[idx.to(self.labels.device)]
            else:
                yield data, mask


def _move(value, device, dtype):
    """``value`` on ``device`` (``dtype`` for floating tensors), through dicts; others as is."""
    if torch.is_tensor(value):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, dict):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    return value


def _take(value, idx: torch.Tensor):
    """Rows ``idx`` of a per-item record (tensor, array, list, tuple, or a dict of them)."""
    if isinstance(value, dict):
        return {k: _take(v, idx) for k, v in value.items()}
    if torch.is_tensor(value):
        return value[idx.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[idx.numpy()]
    return type(value)(value[i] for i in idx.tolist())


def _check_record(key: str, value, n: int) -> None:
    """``value`` is a per-item record of length ``n`` (``key`` as in ``"info['r']"``)."""
    label = key if key.startswith("info[") else f"info[{key!r}]"
    if isinstance(value, dict):
        for k, v in value.items():
            _check_record(f"{label}[{k!r}]", v, n)
        return
    shape = getattr(value, "shape", None)
    if isinstance(value, (str, bytes)) or (shape is None and not hasattr(value, "__len__")) \
            or (shape is not None and not len(shape)):
        raise ValueError(f"{label} is listed in item_info but is a {type(value).__name__}, "
                         f"not a per-item record")
    length = int(shape[0]) if shape is not None else len(value)
    if length != n:
        raise ValueError(f"{label} has {length} entries but the dataset has {n} items")
