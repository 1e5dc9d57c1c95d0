"""Checkpoints and run files: atomic, verified, resumable.

:func:`save_checkpoint` writes model and guide ``state_dict``, optimiser state, epoch, every RNG
state, the history and the configuration, with the SHA-256 digest of each entry;
:func:`load_checkpoint` verifies the digests (:class:`CheckpointError` on a flipped bit or an
edited file) and, given a configuration, that the checkpoint was written by it. Every file is
first written to a temporary file in the same directory, flushed to disk and then moved into
place (:func:`pyro_mmvae.io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch

from pyro_mmvae.io import atomic_write as _atomic_write

PathLike = Union[str, os.PathLike]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
LOSS_CURVE = "loss_curve.png"


CHECKSUMS = "sha256"  # the checkpoint entry holding the SHA-256 digest of every other entry


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match the model and guide."""


# --- atomic files -------------------------------------------------------------------------

def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become ``null``)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text), mode="w")


def _json_safe(obj):
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# --- checkpoints -----------------------------------------------------------------------------

def rng_state(generator: Optional[torch.Generator] = None) -> dict:
    """All RNG states a run depends on, as tensors and plain Python values (so the checkpoint
    loads with ``torch.load(..., weights_only=True)``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if torch.cuda.is_initialized():  # the device this process trains on
            state["cuda_device"] = torch.cuda.current_device()
    if generator is not None:
        state["shuffle"] = generator.get_state()
    return state


def set_rng_state(state: Mapping, generator: Optional[torch.Generator] = None) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "shuffle" in state:
        generator.set_state(state["shuffle"])


def save_checkpoint(path: PathLike, model, guide, optim, *, epoch: int, history: Mapping,
                    generator: Optional[torch.Generator] = None,
                    config: Optional[Mapping] = None, step: Optional[int] = None) -> None:
    """Atomically save model/guide ``state_dict``, optimiser state, epoch, RNG states, history
    and ``config``, with the SHA-256 digest of each entry (:func:`state_digest`) under
    ``"sha256"``, which :func:`load_checkpoint` verifies.

    :param optim: a :class:`pyro.optim.PyroOptim` (its ``get_state()`` is stored) or None.
    :param step: optimisation steps taken over the run (stored as ``"step"``, what a ``beta``
        schedule is evaluated at); None stores nothing.
    """
    ckpt = {
        "epoch": int(epoch),
        "model": _cpu_state(model.state_dict()),
        "guide": _cpu_state(guide.state_dict()),
        "optimizer": None if optim is None else optim.get_state(),
        "rng": rng_state(generator),
        "history": _json_safe(history),
        "config": _json_safe(dict(config or {})),
    }
    if step is not None:
        ckpt["step"] = int(step)
    ckpt[CHECKSUMS] = {key: state_digest(value) for key, value in ckpt.items()}
    _atomic_write(Path(path), lambda f: torch.save(ckpt, f))


def _cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}


def state_digest(obj) -> str:
    """SHA-256 hex digest of a checkpoint entry: tensors by dtype, shape and bytes, mappings
    in sorted key order, sequences in order, plain values by type and ``repr``. It depends only
    on the values, not on how ``torch.save`` laid them out, so it is the same after a round
    trip through the file and differs after any change of a stored value."""
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        h.update(f"tensor:{t.dtype}:{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy())  # the raw bytes, without a copy
    elif isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        h.update(f"map:{len(items)}:".encode())
        for key, value in items:
            _digest(key, h)
            _digest(value, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq:{len(obj)}:".encode())
        for value in obj:
            _digest(value, h)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__} in a checkpoint")


def _verify_checksums(ckpt: Mapping, path: Path) -> None:
    sums = ckpt.get(CHECKSUMS)
    if sums is None:
        warnings.warn(f"the checkpoint {path} was written without checksums (by an older "
                      "pyro_mmvae); it is loaded unverified", stacklevel=3)
        return
    if not isinstance(sums, Mapping):
        raise CheckpointError(f"the checkpoint {path} is corrupted: its {CHECKSUMS!r} entry is "
                              "not a table of checksums")
    for key, value in ckpt.items():
        if key == CHECKSUMS:
            continue
        if key not in sums:
            raise CheckpointError(f"the checkpoint {path} is corrupted: its entry {key!r} has "
                                  "no checksum")
        if state_digest(value) != sums[key]:
            raise CheckpointError(f"the checkpoint {path} is corrupted: its {key!r} entry does "
                                  "not match the SHA-256 checksum written with it (a changed "
                                  "bit on disk, or a file edited since); restore the file or "
                                  "train again")


def _short(value, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def config_differences(saved: Mapping, config: Mapping, ignore: Iterable[str] = ()) -> list:
    """The keys present in both configurations, outside ``ignore``, whose values differ (as
    JSON), sorted."""
    ignore = set(ignore)
    saved, config = _json_safe(dict(saved)), _json_safe(dict(config))
    return sorted(k for k in set(saved) & set(config)
                  if k not in ignore and json.dumps(saved[k], sort_keys=True)
                  != json.dumps(config[k], sort_keys=True))


def load_checkpoint(path: PathLike, model=None, guide=None, optim=None, *,
                    map_location: Union[str, torch.device, None] = "cpu",
                    config: Optional[Mapping] = None, ignore: Iterable[str] = ()) -> dict:
    """Load a checkpoint written by :func:`fit` / :func:`save_checkpoint`.

    Verifies the SHA-256 checksum of every entry (:class:`CheckpointError` naming the file and
    the entry on a mismatch: a flipped bit or an edited file; checkpoints written before
    checksums load with a warning). With ``config``, the configuration the checkpoint was
    written with (its ``"config"``) must agree with it on every key that both have, outside
    ``ignore``: :class:`CheckpointError` naming the differing keys otherwise (a checkpoint of
    another run). Then restores ``model`` and ``guide`` parameters (``load_state_dict``,
    strict) and, if given, the optimiser state of a :class:`pyro.optim.PyroOptim` (applied when
    each parameter is next seen). RNG states are *not* restored here (see
    :func:`set_rng_state`). Returns the checkpoint dict (keys ``epoch``, ``model``, ``guide``,
    ``optimizer``, ``rng``, ``history``, ``config``, ``sha256``, and ``step`` in checkpoints
    written by :func:`fit`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or not ours
        raise CheckpointError(f"cannot read the checkpoint {path}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}; it is corrupted "
                              "or not a pyro_mmvae checkpoint") from err
    missing = [k for k in ("epoch", "model", "guide", "rng", "history")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint {path} lacks {missing}; it is not a complete "
                              "pyro_mmvae checkpoint")
    _verify_checksums(ckpt, path)
    if config is not None and isinstance(ckpt.get("config"), Mapping):
        differ = config_differences(ckpt["config"], config, ignore)
        if differ:
            shown = "; ".join(f"{k}: {_short(ckpt['config'][k])} in the checkpoint, "
                              f"{_short(config[k])} here" for k in differ[:5])
            more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
            raise CheckpointError(f"the checkpoint {path} was written by another "
                                  f"configuration: {shown}{more}")
    return restore_checkpoint(ckpt, model, guide, optim, path=path)


def restore_checkpoint(ckpt: Mapping, model=None, guide=None, optim=None, *,
                       path: PathLike = "the checkpoint") -> Mapping:
    """Put a loaded checkpoint's parameters into ``model`` and ``guide`` (``load_state_dict``,
    strict; :class:`CheckpointError` naming ``path`` when they do not fit) and its optimiser
    state into ``optim``; returns ``ckpt``. :func:`load_checkpoint` does this after its checks
    (call it first, with no model, to check a checkpoint before building anything)."""
    try:
        if model is not None:
            model.load_state_dict(ckpt["model"])
        if guide is not None:
            guide.load_state_dict(ckpt["guide"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint {path} does not fit this model and guide (was it "
                              f"written by another configuration?): {err}") from err
    if optim is not None and ckpt.get("optimizer") is not None:
        optim.set_state(ckpt["optimizer"])
    return ckpt
