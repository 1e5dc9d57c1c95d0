"""A small SVI training loop with checkpoints, for Python use and for the ``pyro-mmvae`` CLI.

:func:`fit` trains a model and guide that follow the multimodal protocol (``model(data, mask)``,
``guide(data, mask)``) with :class:`pyro.infer.SVI` and Adam — one ``torch.optim.Adam`` over
all parameters (:class:`~pyro_mmvae.optim.SharedOptim`, the updates of :class:`pyro.optim.Adam`
with one optimiser step instead of one per parameter), or :class:`pyro.optim.ClippedAdam` —
on shuffled mini-batches of a dict-of-tensors dataset.

With a ``run_dir`` it writes, after every epoch, an atomically replaced ``checkpoint.pt``
(model and guide ``state_dict``, optimiser state, epoch, RNG states, history, configuration,
and a SHA-256 checksum of each, verified by :func:`load_checkpoint`) plus
``config.json``, ``metrics.json`` and ``loss_curve.png``. Every file is first written to a
temporary file in the same directory, flushed to disk, and then moved into place with
:func:`os.replace` (:func:`pyro_mmvae.io.atomic_write`), so a crash mid-write never leaves a
truncated file.

Divergence: a non-finite loss (or gradient) stops training *before* the optimiser applies the
step, so the in-memory parameters are those of the last finite step. :func:`fit` then raises
:class:`TrainingDiverged` (carrying the epoch, step and loss); the checkpoint on disk is the one
of the last completed epoch and is never overwritten by a diverged state. ``metrics.json``
records ``"status": "diverged"``.

Overhead: Pyro's validation checks (distribution arguments, supports, plate shapes) run for the
parameter-registration pass and the first step of each :func:`fit` call and are switched off
for the others (``validate="first"``, default; ``"always"`` keeps them on, ``"never"`` off);
the caller's global setting is restored around every step, so ``eval_fn`` and everything after
:func:`fit` see it unchanged. Before the first timed step one forward pass of the loss
(``loss.loss`` on the first ``batch_size`` points, in eval mode, with every RNG state saved and
restored) registers the parameters, and the optimiser is built from them; the first
``torch.optim`` construction in a process costs about a second (importing ``torch._dynamo``),
which no longer lands in the first epoch's time.

Frozen parameters: a parameter of the model or guide with ``requires_grad=False`` when
:func:`fit` is called stays as it is — not optimised, not turned back on. (``pyro.module``
leaves such parameters of plain ``nn.Module`` children out of the param store, with a warning
that :func:`fit` silences; ``pyro.param``, which a ``PyroModule`` sends for its own
``nn.Parameter`` attributes, re-enables ``requires_grad`` when it first stores one, so
:func:`fit` switches it off again after the registration pass, before any step.)
:func:`fit_two_stage` uses this to train a model and guide in two stages, the second with the
model frozen (the tVAE of Vedantam et al. 2018).

A ``beta`` schedule (:mod:`pyro_mmvae.infer.schedules`): before every step :func:`fit` calls
``loss.set_step(k)`` with ``k`` the number of steps taken so far over the whole run (if the loss
has ``set_step``), checks the schedule's values for every step it will run before the first
(``loss.check_beta``), and stores ``k`` in the checkpoint (``"step"``), so a resumed run
continues the schedule where it stopped. After :func:`fit` the loss is at the step it would
take next.

Example::

    history = fit(model, guide, MaskedMultimodalELBO(), data, epochs=10, batch_size=128,
                  lr=1e-3, run_dir="runs/demo")
    load_checkpoint("runs/demo/checkpoint.pt", model, guide)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyro
import pyro.optim
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_mmvae.io import atomic_write as _atomic_write
from pyro_mmvae.optim import SharedOptim
from pyro_mmvae.params import registration_entries, registration_skipped, still_registered
from pyro_mmvae.protocol import num_points, validate_batch

PathLike = Union[str, os.PathLike]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
LOSS_CURVE = "loss_curve.png"


CHECKSUMS = "sha256"  # the checkpoint entry holding the SHA-256 digest of every other entry


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match the model and guide."""


class TrainingDiverged(RuntimeError):
    """Raised by :func:`fit` when a step produces a non-finite loss or gradient.

    The failing step is not applied. Attributes: ``epoch`` (1-based epoch of the failure),
    ``step`` (1-based step within that epoch), ``global_step`` (1-based over the run), ``loss``
    (the offending value, ``nan``/``inf``), ``checkpoint`` (path of the last good checkpoint, or
    None if no epoch completed or no ``run_dir`` was given) and ``history`` (what was recorded
    up to the failure).
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int, loss: float,
                 checkpoint: Optional[Path], history: dict):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.global_step = global_step
        self.loss = loss
        self.checkpoint = checkpoint
        self.history = history


class NonFiniteStep(ArithmeticError):
    """A step produced a non-finite loss or gradient (``what`` says which: ``"loss"`` or
    ``"gradient"``); raised by :class:`SVIStep` before the update."""

    def __init__(self, loss: float, what: str):
        super().__init__(what)
        self.loss = loss
        self.what = what


# --- devices and data ----------------------------------------------------------------------

def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``"cpu"``/``"cuda"``/``"cuda:1"``/None (cpu) -> ``torch.device``.

    Raises ``ValueError`` when CUDA is requested but not available.
    """
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available on this "
                         "machine (torch.cuda.is_available() is False); use device 'cpu'")
    return dev


def to_device(tensors: Optional[Mapping[str, torch.Tensor]], device: torch.device):
    """Move a dict of tensors to ``device`` (None passes through)."""
    if tensors is None:
        return None
    return {k: v.to(device) for k, v in tensors.items()}


def iterate_minibatches(data: Mapping[str, torch.Tensor], mask: Optional[Mapping] = None, *,
                        batch_size: int, generator: torch.Generator
                        ) -> Iterator[Tuple[dict, Optional[dict]]]:
    """Yield shuffled ``(batch, mask)`` pairs covering ``data`` once; the last incomplete batch
    is dropped.

    :param data: ``{modality: (N, ...)}``; ``mask``: ``{modality: (N,)}`` bool or None.
    :param generator: a CPU ``torch.Generator`` that drives the permutation (seeded by
        :func:`fit`, saved in checkpoints).
    :yields: ``({m: (batch_size, ...)}, {m: (batch_size,)} or None)``.
    """
    n = num_points(data)
    device = next(iter(data.values())).device
    perm = torch.randperm(n, generator=generator).to(device)  # drawn on CPU: reproducible
    for start in range(0, n - batch_size + 1, batch_size):
        idx = perm[start:start + batch_size]
        batch = {m: x[idx] for m, x in data.items()}
        yield batch, (None if mask is None else {m: mk[idx] for m, mk in mask.items()})


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


def plot_loss_curve(path: PathLike, history: Mapping) -> None:
    """Atomically write a PNG of the per-step and per-epoch loss per data point.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps_per_epoch = max(int(history.get("steps_per_epoch", 1)), 1)
    step_loss = history.get("step_loss", [])
    if step_loss:
        x = [(i + 1) / steps_per_epoch for i in range(len(step_loss))]
        ax.plot(x, step_loss, color="0.7", lw=0.8, label="per step")
    epochs = history.get("epoch", [])
    if epochs:
        # an epoch's mean sits at the middle of the steps it averages
        ax.plot([e - 0.5 for e in epochs], history["loss"], "o-", color="C0", ms=3,
                label="epoch mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per data point")
    ax.set_title("training loss")
    if step_loss or epochs:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))


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


# --- the loop ----------------------------------------------------------------------------------

def make_optimizer(lr: float, clip_norm: Optional[float] = None,
                   betas: Tuple[float, float] = (0.9, 0.999)) -> pyro.optim.PyroOptim:
    """Adam over all parameters as one ``torch.optim.Adam`` with its multi-tensor
    (``foreach``) kernels (:class:`~pyro_mmvae.optim.SharedOptim`: the updates of
    ``pyro.optim.Adam`` bit for bit, one optimiser step instead of one per parameter,
    checkpoints in its format), or
    ``pyro.optim.ClippedAdam`` with gradient-norm clipping at ``clip_norm``."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if clip_norm is None:
        return SharedOptim(torch.optim.Adam, {"lr": lr, "betas": betas, "foreach": True})
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    return pyro.optim.ClippedAdam({"lr": lr, "betas": betas, "clip_norm": clip_norm})


class SVIStep:
    """``SVI(model, guide, optim, loss).step`` — the same parameters, updates, RNG draws and
    returned loss — without the per-step cost of finding the parameters once they are known.

    ``SVI.step`` runs ``loss.loss_and_grads`` under ``poutine.trace(param_only=True)`` to collect
    the parameters at every step, and the library's models and guides send a ``param`` message
    for each of their parameters at every evaluation so that it can. ``SVIStep`` does exactly
    that at its first call and at any call after the param store changed (a parameter
    created, the store cleared, loaded or a value replaced) and records the parameters; the
    other calls run the loss without that trace and step the recorded parameters; under the
    library's bounds (:class:`~pyro_mmvae.infer.MultimodalELBO`) they also skip the
    registration of the top-level library modules
    (:func:`~pyro_mmvae.params.registration_skipped`). (Not under other losses: Pyro's own
    ``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO`` and ``RenyiELBO`` call
    ``backward`` only when their traces hold a ``param`` site, so with a library model and
    guide and the registration skipped they would compute no gradient at all.) A
    non-finite loss or gradient raises :class:`NonFiniteStep` before the update. This is the
    step of :func:`fit`; use it in a loop of your own as ``step = SVIStep(model, guide, loss,
    optim)``, ``value = step(data, mask)``.

    One difference from ``SVI``: a parameter that a program registers only at some steps
    (``pyro.param`` or ``pyro.module`` inside a branch) is stepped, with its zeroed gradient,
    at the others too once it has been found; with Adam its momentum keeps moving it there.

    :param model, guide: Pyro programs taking the same arguments.
    :param loss: a ``pyro.infer.ELBO`` (anything with ``loss_and_grads``).
    :param optim: a :class:`pyro.optim.PyroOptim`
        (e.g. :class:`~pyro_mmvae.optim.SharedOptim`, :func:`make_optimizer`).
    :param gradient_transform: called as ``gradient_transform(params)`` after the backward
        pass and before the gradients are checked and the update is made, to change the
        gradients in place (e.g. :func:`clamp_gradients`); None leaves them as they are.
    """

    def __init__(self, model, guide, loss, optim,
                 gradient_transform: Optional[Callable[[list], None]] = None):
        from pyro_mmvae.infer.base import MultimodalELBO

        self.model, self.guide, self.loss, self.optim = model, guide, loss, optim
        self.gradient_transform = gradient_transform
        # the library's bounds backpropagate whether or not their traces hold param sites
        self.skip_registration = isinstance(loss, MultimodalELBO)
        self.params: Optional[list] = None
        self.entries: tuple = ()
        self.store_size = -1
        self.grads = _FlatGradients()

    def _known(self) -> bool:
        return (self.params is not None and len(pyro.get_param_store()) == self.store_size
                and still_registered(self.entries))

    def __call__(self, *args) -> float:
        """One step on ``args`` (the model's and guide's arguments); returns the loss."""
        known = self._known()
        if known and self.skip_registration:
            with registration_skipped(self.model, self.guide):
                loss = self.loss.loss_and_grads(self.model, self.guide, *args)
        elif known:
            loss = self.loss.loss_and_grads(self.model, self.guide, *args)
        else:
            with poutine.trace(param_only=True) as capture:
                loss = self.loss.loss_and_grads(self.model, self.guide, *args)
            self.params = list({site["value"].unconstrained()
                                for site in capture.trace.nodes.values()})
            self.entries = registration_entries(self.model, self.guide)
            self.store_size = len(pyro.get_param_store())
        value = float(loss)
        if not math.isfinite(value):
            raise NonFiniteStep(value, "loss")
        if self.gradient_transform is not None:
            self.gradient_transform(self.params)
        self.grads.gather(self.params)
        if not self.grads.finite():
            raise NonFiniteStep(value, "gradient")
        self.optim(self.params)
        self.grads.zero()  # SVI's zero_grads: every gradient that exists becomes zeros
        return value


def clamp_gradients(limit: float, nan_to_zero: bool = True) -> Callable[[list], None]:
    """A ``gradient_transform`` for :func:`fit` and :class:`SVIStep`: every gradient element
    clamped to ``[-limit, limit]``, NaNs first replaced by 0 (with ``nan_to_zero``) — the
    gradient chain of the authors' code of Hirt et al., "Learning multi-modal generative models
    with permutation-invariant encoders and tighter variational bounds" (TMLR 2024,
    arXiv:2309.00380): NaN → 0, element-wise clip, Adam; unlike ``clip_norm``
    (``ClippedAdam``'s per-parameter norm clipping). Gradients stay in place (the
    views :func:`fit` keeps of them remain valid)."""
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit}")

    def transform(params) -> None:
        for p in params:
            if p.grad is not None:
                if nan_to_zero:
                    torch.nan_to_num_(p.grad, nan=0.0)
                p.grad.clamp_(-limit, limit)
    return transform


class _FlatGradients:
    """The parameters' gradients as views of one flat buffer per (device, dtype), so that
    checking them all for non-finite values and zeroing them are one operation each rather
    than two per parameter (70 parameters: 0.85 ms against 0.05 ms per step on one CPU
    thread).

    Autograd accumulates into an existing ``.grad`` in place, so once a gradient is a view of
    the buffer it stays one; a gradient that is not (new, replaced, or set to None and back by
    other code) makes :meth:`gather` rebuild the buffer, copying the values in. Parameters
    without a gradient are left without one (``torch.optim`` skips them, as after
    ``SVI.step``).
    """

    def __init__(self):
        self.views: dict = {}  # id(param) -> its gradient's view of a buffer
        self.buffers: list = []

    def gather(self, params) -> None:
        views = self.views
        if all(p.grad is None or views.get(id(p)) is p.grad for p in params):
            return
        groups: dict = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        self.views, self.buffers = {}, []
        for (device, dtype), members in groups.items():
            buffer = torch.empty(sum(p.grad.numel() for p in members), device=device,
                                 dtype=dtype)
            offset = 0
            for p in members:
                view = buffer[offset:offset + p.grad.numel()].view_as(p.grad)
                view.copy_(p.grad)
                p.grad = view
                self.views[id(p)] = view
                offset += view.numel()
            self.buffers.append(buffer)

    def finite(self) -> bool:
        """Whether every gradient is finite: the sum of each buffer is (a sum of finite values
        beyond the dtype's range, ~3e38 in float32, counts as non-finite too)."""
        if not self.buffers:
            return True
        return bool(torch.stack([b.sum() for b in self.buffers]).isfinite().all())

    def zero(self) -> None:
        for b in self.buffers:
            b.zero_()


def _zero_param_grads():
    for p in pyro.get_param_store().values():
        p.grad = None


VALIDATE = ("first", "always", "never")

# pyro.module's warning for a parameter with requires_grad=False: under fit such a parameter is
# frozen on purpose (module docstring), so the warning is noise there
_FROZEN_WARNING = r".* was not registered in the param store because requires_grad=False"


def _frozen_warning_silenced(fn):
    """``fn`` with pyro.module's warning about frozen parameters silenced while it runs."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FROZEN_WARNING, category=UserWarning)
            return fn(*args, **kwargs)
    return wrapper


def _build_optimizer_state(model, guide, loss, optim, batch, mask) -> None:
    """Register the parameters with one forward pass of ``loss`` and build ``optim``'s
    per-parameter optimisers, leaving no trace: every RNG state is restored, model and guide
    run in eval mode (no BatchNorm statistics move), no gradient is kept and no update is made.

    A :class:`pyro.optim.PyroOptim` creates (and loads resumed state into) an optimiser for a
    parameter the first time it is called with it; called here with gradient-free parameters
    it only does that (``torch.optim`` skips parameters without a gradient).

    Parameters with ``requires_grad=False`` stay frozen: ``pyro.param``, storing a
    ``PyroModule``'s own ``nn.Parameter`` for the first time, turns ``requires_grad`` on, and
    this turns it off again.
    """
    frozen = [p for module in (model, guide) for p in module.parameters()
              if not p.requires_grad]
    state = rng_state()
    modes = (model.training, guide.training)
    model.eval()
    guide.eval()
    try:
        with poutine.trace(param_only=True) as capture:
            loss.loss(model, guide, batch, mask)
    finally:
        set_rng_state(state)
        model.train(modes[0])
        guide.train(modes[1])
        for p in frozen:
            p.requires_grad_(False)
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    for p in params:
        p.grad = None
    optim(params)


@_frozen_warning_silenced
def fit(model, guide, loss, train_data: Mapping[str, torch.Tensor], *,
        mask: Optional[Mapping[str, torch.Tensor]] = None, epochs: int, batch_size: int,
        lr: float = 1e-3, clip_norm: Optional[float] = None,
        run_dir: Optional[PathLike] = None, seed: Optional[int] = 0,
        generator: Optional[torch.Generator] = None,
        gradient_transform: Optional[Callable[[list], None]] = None,
        device: Union[str, torch.device, None] = "cpu", progress: bool = True,
        eval_fn: Optional[Callable[[int], Mapping[str, float]]] = None,
        config: Optional[Mapping[str, Any]] = None,
        resume_from: Optional[PathLike] = None, validate: str = "first",
        transform: Optional[Callable] = None) -> dict:
    """Train ``model`` and ``guide`` with SVI on shuffled mini-batches; return the history.

    :param model: Pyro program ``model(data, mask)`` (an ``nn.Module``, e.g. a ``PyroModule``).
    :param guide: Pyro program ``guide(data, mask)`` (an ``nn.Module``).
    :param loss: a ``pyro.infer.ELBO`` (e.g. :class:`~pyro_mmvae.infer.MaskedMultimodalELBO`);
        ``loss_and_grads`` must return the loss *summed* over the batch.
    :param train_data: ``{modality: (N, ...)}``. ``mask``: ``{modality: (N,)}`` bool, True where
        observed (None: all observed). Both are moved to ``device``.
    :param epochs: total number of epochs (with ``resume_from``, including those already done).
    :param batch_size: mini-batch size; the last incomplete batch of each epoch is dropped.
    :param lr: Adam learning rate. ``clip_norm``: use ``ClippedAdam`` with this gradient norm.
    :param run_dir: where to write ``checkpoint.pt`` (after every epoch), ``config.json``,
        ``metrics.json`` and ``loss_curve.png``; None writes nothing.
    :param seed: seeds ``pyro.set_rng_seed`` and the shuffling generator. None leaves the
        global RNGs as they are (the caller seeded them) and needs ``generator``.
    :param generator: the shuffling generator (a CPU ``torch.Generator``, advanced in place);
        None: a new one seeded with ``seed``.
    :param gradient_transform: ``gradient_transform(params)``, called after every backward
        pass and before the gradients are checked for non-finite values and the update, changes
        the gradients in place: e.g. :func:`clamp_gradients` (NaN → 0, element-wise clip).
    :param device: ``"cpu"`` or ``"cuda"`` (``ValueError`` if CUDA is unavailable).
    :param progress: show a tqdm bar with the running mean loss per data point of the epoch.
    :param eval_fn: called as ``eval_fn(epoch)`` after each epoch (model and guide in their
        current state); its dict of numbers is stored in ``history["eval"]``.
    :param config: extra entries for ``config.json`` and the checkpoint (e.g. CLI arguments).
    :param resume_from: a checkpoint to continue from: restores parameters, optimiser state,
        RNG states, history and the step of a ``beta`` schedule, then trains epochs
        ``ckpt["epoch"] + 1 .. epochs``.
    :param validate: when Pyro's validation checks run: ``"first"`` (default) for the first
        step of this call (and the parameter-registration pass before it), ``"always"`` for
        every step, ``"never"`` for none. The global setting is restored after every step.
    :param transform: applied to every mini-batch before the step, as
        ``transform(batch, mask, generator) -> (batch, mask)`` with ``generator`` the
        shuffling generator (seeded by ``seed``, saved in checkpoints, so a resumed run draws
        what the uninterrupted one would): a per-epoch augmentation such as the dynamic
        binarisation of :func:`pyro_mmvae.data.binarization` (a fresh Bernoulli draw of the
        intensities at every step). The registration pass sees a transformed first batch
        drawn from a copy of the generator.
    :returns: history dict: ``epoch`` (list of 1-based epochs), ``loss`` (mean loss per data
        point of each epoch), ``epoch_time`` (seconds), ``step_loss`` (loss per data point of
        every step), ``eval`` (list of ``eval_fn`` results), ``steps_per_epoch``, ``status``
        (``"completed"``).
    :raises TrainingDiverged: on a non-finite loss or gradient (see the module docstring).
    :raises ValueError: bad arguments or data (before any step).

    The global Pyro param store is cleared at the start. Parameters with
    ``requires_grad=False`` are held fixed (module docstring).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if validate not in VALIDATE:
        raise ValueError(f"validate must be one of {VALIDATE}, got {validate!r}")
    with pyro.validation_enabled(True):  # ValueError naming the modality, NaNs included
        checked = validate_batch(train_data, mask)
    mask = None if mask is None else checked
    n = num_points(train_data)
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} data "
                         "points); no complete batch can be formed")
    steps_per_epoch = n // batch_size

    dev = resolve_device(device)
    pyro.clear_param_store()
    if seed is None and generator is None:
        raise ValueError("seed=None (keep the global RNG state) needs a shuffling generator")
    if seed is not None:
        pyro.set_rng_seed(seed)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    model.to(dev)
    guide.to(dev)
    train_data = to_device(train_data, dev)
    mask = to_device(mask, dev)

    optim = make_optimizer(lr, clip_norm)
    history = {"epoch": [], "loss": [], "epoch_time": [], "step_loss": [], "eval": [],
               "steps_per_epoch": steps_per_epoch, "status": "running"}
    start_epoch = 0
    global_step = 0  # optimisation steps taken over the run (what a beta schedule reads)
    ckpt_path = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, model, guide, optim, map_location=dev)
        set_rng_state(ckpt["rng"], generator)
        history.update({k: ckpt["history"][k] for k in ("epoch", "loss", "epoch_time",
                                                        "step_loss", "eval")
                        if k in ckpt["history"]})
        start_epoch = int(ckpt["epoch"])
        global_step = int(ckpt.get("step", start_epoch * steps_per_epoch))
        ckpt_path = Path(resume_from)
    set_step = getattr(loss, "set_step", None)
    check_beta = getattr(loss, "check_beta", None)
    if check_beta is not None:  # ValueError naming beta before any step
        check_beta(range(global_step,
                         global_step + (epochs - start_epoch) * steps_per_epoch + 1))

    run_dir = Path(run_dir) if run_dir is not None else None
    full_config = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                   "clip_norm": clip_norm, "seed": seed, "device": str(dev),
                   "num_train": n, "steps_per_epoch": steps_per_epoch,
                   "loss": type(loss).__name__, **dict(config or {})}
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG, full_config)

    stepper = SVIStep(model, guide, loss, optim, gradient_transform)
    if epochs > start_epoch:  # parameters and optimisers before the first timed step
        if set_step is not None:
            set_step(global_step)
        with pyro.validation_enabled(validate != "never"):
            first_batch = {m: x[:batch_size] for m, x in train_data.items()}
            first_mask = None if mask is None else {m: v[:batch_size] for m, v in mask.items()}
            if transform is not None:
                copy = torch.Generator().set_state(generator.get_state())
                first_batch, first_mask = transform(first_batch, first_mask, copy)
            _build_optimizer_state(model, guide, loss, optim, first_batch, first_mask)
    first = True

    bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, disable=not progress,
               unit="step", dynamic_ncols=True, leave=True)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            model.train()
            guide.train()
            t0 = time.perf_counter()
            total = 0.0
            batches = iterate_minibatches(train_data, mask, batch_size=batch_size,
                                          generator=generator)
            for step, (batch, batch_mask) in enumerate(batches, start=1):
                if transform is not None:
                    batch, batch_mask = transform(batch, batch_mask, generator)
                if set_step is not None:
                    set_step(global_step)
                try:
                    with pyro.validation_enabled(validate == "always" or
                                                 (validate == "first" and first)):
                        value = stepper(batch, batch_mask) / batch_size
                except NonFiniteStep as err:
                    _zero_param_grads()
                    _diverged(err, epoch, step, steps_per_epoch, history, run_dir, ckpt_path)
                first = False
                global_step += 1
                total += value
                history["step_loss"].append(value)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{total / step:.4g}",
                                refresh=False)
            history["epoch"].append(epoch)
            history["loss"].append(total / steps_per_epoch)
            history["epoch_time"].append(time.perf_counter() - t0)
            if eval_fn is not None:
                model.eval()
                guide.eval()
                history["eval"].append(dict(eval_fn(epoch)))
            if run_dir is not None:
                ckpt_path = run_dir / CHECKPOINT
                save_checkpoint(ckpt_path, model, guide, optim, epoch=epoch, history=history,
                                generator=generator, config=full_config, step=global_step)
                _write_metrics(run_dir, history)
    finally:
        bar.close()
    if set_step is not None:
        set_step(global_step)  # the step the loss would take next
    history["status"] = "completed"
    if run_dir is not None:
        _write_metrics(run_dir, history)
    return history


def _write_metrics(run_dir: Path, history: Mapping, extra: Optional[Mapping] = None) -> None:
    write_json(run_dir / METRICS, {"history": history, **dict(extra or {})})
    plot_loss_curve(run_dir / LOSS_CURVE, history)


def _diverged(err: NonFiniteStep, epoch, step, steps_per_epoch, history, run_dir, ckpt_path):
    global_step = (epoch - 1) * steps_per_epoch + step
    history["status"] = "diverged"
    history["diverged_at"] = {"epoch": epoch, "step": step, "global_step": global_step,
                              "loss": err.loss, "non_finite": err.what}
    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {ckpt_path}"
            if ckpt_path is not None else "no checkpoint was written")
    message = (f"training diverged: non-finite {err.what} (loss {err.loss}) at epoch {epoch}, "
               f"step {step}; the step was not applied and {kept}. Try a lower learning rate "
               "or gradient clipping (clip_norm).")
    if run_dir is not None:
        _write_metrics(run_dir, history)
    raise TrainingDiverged(message, epoch=epoch, step=step, global_step=global_step,
                           loss=err.loss, checkpoint=ckpt_path, history=history) from None


# --- two-stage training (tVAE) -------------------------------------------------------------

def fit_two_stage(model, guide, train_data: Mapping[str, torch.Tensor], *,
                  epochs: Tuple[int, int], batch_size: int, losses: Optional[Sequence] = None,
                  beta: float = 1.0, frozen: Iterable = (), run_dir: Optional[PathLike] = None,
                  **kwargs) -> Tuple[dict, dict]:
    r"""Train in two stages with :func:`fit`, the model frozen in the second: the tVAE.

    The triplet-ELBO VAE of Vedantam, Fischer, Huang and Murphy (*Generative Models of
    Visually Grounded Imagination*, ICLR 2018, arXiv:1705.10762) as the M2VAE paper (ICLR 2019
    submission, §5) trains its baseline:

    1. **Joint stage** (``epochs[0]`` epochs of ``losses[0]``; default
       ``JointMultimodalELBO(alpha=0, beta=beta)``): the joint encoder and the decoders by the
       joint ELBO of the observed set :math:`O` (M2VAE eq. 2),

       .. math:: \mathcal L_J = \mathbb E_{q(z\mid x_O)}\sum_{m\in O}\log p(x_m\mid z)
           - \beta\,\mathrm{KL}\big(q(z\mid x_O)\,\|\,p(z)\big).

    2. **Unimodal stage** (``epochs[1]`` epochs of ``losses[1]``; default
       ``RecursiveMultimodalELBO(alpha=0, beta=beta, subsets="unimodal")``): every parameter
       of ``model`` (decoders, a learnable prior) and of ``frozen`` held fixed, the unimodal
       encoders trained by their own ELBOs, each reconstructing its own modality only,

       .. math:: \sum_{m\in O}\mathbb E_{q(z\mid x_m)}\log p(x_m\mid z)
           - \beta\,\mathrm{KL}\big(q(z\mid x_m)\,\|\,p(z)\big).

    With :class:`~pyro_mmvae.guides.SubsetEncoders` one guide serves both stages: its full-set
    network is the joint encoder, its singleton networks the unimodal ones. The joint stage
    gives the singletons no gradient and the unimodal stage none to the full set, and each
    :func:`fit` builds a fresh Adam, so each stage moves only its own networks (shared
    modality feature encoders, e.g. MLP ``encoders`` of the guide, would move in both: pass
    them in ``frozen`` to keep the joint encoder fixed in stage 2).

    Freezing is ``requires_grad=False`` on those parameters for the second :func:`fit` (which
    keeps such parameters fixed; see the module docstring); the previous flags are restored
    afterwards.

    :param model, guide: as for :func:`fit`.
    :param train_data: ``{modality: (N, ...)}``, fully observed for the tVAE. With a
        ``mask=`` (in ``kwargs``) the joint stage trains each point's observed set's network
        (for a point observing one modality, that singleton's), so the singletons then move
        in both stages.
    :param epochs: ``(joint epochs, unimodal epochs)``; 0 skips a stage.
    :param batch_size: as for :func:`fit`, both stages.
    :param losses: ``(stage-1 loss, stage-2 loss)``, any bounds (default above).
    :param beta: the rates' weight of the default losses (not with ``losses``).
    :param frozen: further modules or parameters to hold fixed in stage 2.
    :param run_dir: each stage's files go to ``run_dir/stage1`` and ``run_dir/stage2``.
    :param kwargs: the other arguments of :func:`fit` (``mask``, ``lr``, ``seed``, ``device``,
        ``progress``, ``eval_fn``, ...), the same for both stages; ``resume_from`` is not
        supported (call :func:`fit` per stage for that).
    :returns: ``(history of stage 1, history of stage 2)``, each as :func:`fit` returns it.
    """
    if "resume_from" in kwargs:
        raise TypeError("fit_two_stage takes no 'resume_from'; resume a stage with fit()")
    if (not isinstance(epochs, (tuple, list)) or len(epochs) != 2
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs)):
        raise ValueError(f"epochs must be a pair of integers >= 0 (joint stage, unimodal "
                         f"stage), got {epochs!r}")
    if losses is None:
        from pyro_mmvae.infer.recursive_elbo import JointMultimodalELBO, RecursiveMultimodalELBO

        losses = (JointMultimodalELBO(alpha=0.0, beta=beta),
                  RecursiveMultimodalELBO(alpha=0.0, beta=beta, subsets="unimodal"))
    elif beta != 1.0:
        raise ValueError("beta sets the default losses; with losses= give beta to them")
    if len(losses) != 2:
        raise ValueError(f"losses must be a pair (stage 1, stage 2), got {len(losses)}")
    held = list(model.parameters())
    for item in frozen:
        held.extend(item.parameters() if isinstance(item, torch.nn.Module) else [item])
    if not all(isinstance(p, torch.Tensor) for p in held):
        raise TypeError("frozen must hold nn.Modules or parameters (tensors)")

    def stage_dir(k):
        return None if run_dir is None else Path(run_dir) / f"stage{k}"

    first = fit(model, guide, losses[0], train_data, epochs=epochs[0], batch_size=batch_size,
                run_dir=stage_dir(1), **kwargs)
    flags = [p.requires_grad for p in held]
    try:
        for p in held:
            p.requires_grad_(False)
        second = fit(model, guide, losses[1], train_data, epochs=epochs[1],
                     batch_size=batch_size, run_dir=stage_dir(2), **kwargs)
    finally:
        for p, flag in zip(held, flags):
            p.requires_grad_(flag)
    return first, second
