"""What :func:`~pyro_mmvae.train.fit` does after every epoch, as callbacks.

A callback is an object with any of the methods ``on_fit_start(run)``, ``on_epoch_end(run)``
and ``on_fit_end(run)`` (subclass :class:`Callback` for the empty defaults); ``run`` is the
:class:`TrainingRun` of the call: model, guide, loss, optimiser, the history so far, the epoch
just completed, the step count, the run directory, and ``stop``, which a callback sets to end
training after this epoch. :func:`fit` runs, after every epoch and in this order:
:class:`Evaluate` (``eval_fn=``), :class:`Validate` (``val_data=`` or ``val_fraction=``), the
caller's ``callbacks=``, :class:`EarlyStopping` (``early_stopping=``), and with a ``run_dir``
:class:`Checkpoint` and :class:`Metrics`. ``on_fit_end`` runs in the same order when training
ends: completed, stopped early, or diverged (``run.history["status"]`` says which).

Example: log the epoch's validation reconstruction of every modality::

    class Print(Callback):
        def on_epoch_end(self, run):
            terms = run.history["val_terms"]
            print(run.epoch, {k: v[-1] for k, v in terms.items()
                              if k.startswith("reconstruction/")})

    fit(model, guide, loss, data, val_fraction=0.1, callbacks=[Print()], ...)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pyro
import torch

from pyro_mmvae.infer.base import term_sums
from pyro_mmvae.io import atomic_write as _atomic_write
from pyro_mmvae.protocol import num_points

from .checkpoints import (CHECKPOINT, LOSS_CURVE, METRICS, PathLike, load_checkpoint,
                          rng_state, save_checkpoint, set_rng_state, write_json)

BEST_CHECKPOINT = "best.pt"


@dataclass
class TrainingRun:
    """The state of one :func:`~pyro_mmvae.train.fit` call, as callbacks see it.

    ``epoch``: the 1-based epoch just completed (0 before the first); ``global_step``:
    optimisation steps over the run; ``history``: what :func:`fit` returns, filled as it goes;
    ``checkpoint``: the last checkpoint written (or resumed from); ``stop``: set it to True to
    end training after this epoch (``stop_reason`` says why, for the history); ``writes``:
    whether this process writes the run's files (in a data-parallel run only rank 0 does).
    """

    model: Any
    guide: Any
    loss: Any
    optim: Any
    generator: torch.Generator
    history: dict
    config: dict = field(default_factory=dict)
    run_dir: Optional[Path] = None
    epoch: int = 0
    global_step: int = 0
    checkpoint: Optional[Path] = None
    stop: bool = False
    stop_reason: Optional[str] = None
    writes: bool = True


class Callback:
    """Base class of :func:`fit`'s callbacks: every hook does nothing."""

    def on_fit_start(self, run: TrainingRun) -> None:
        pass

    def on_epoch_end(self, run: TrainingRun) -> None:
        pass

    def on_fit_end(self, run: TrainingRun) -> None:
        pass


def _eval_mode(run: TrainingRun) -> None:
    run.model.eval()
    run.guide.eval()


class Evaluate(Callback):
    """``eval_fn(epoch)`` after every epoch, model and guide in eval mode; its dict of numbers
    is appended to ``history["eval"]``."""

    def __init__(self, eval_fn: Callable[[int], Mapping[str, float]]):
        self.eval_fn = eval_fn

    def on_epoch_end(self, run: TrainingRun) -> None:
        _eval_mode(run)
        run.history["eval"].append(dict(self.eval_fn(run.epoch)))


class Validate(Callback):
    r"""The loss per data point on held-out data after every epoch, appended to
    ``history["val_loss"]``, and, for a bound with ``terms()`` (every
    :class:`~pyro_mmvae.infer.MultimodalELBO`), the mean of each per-datapoint term in
    ``history["val_terms"][name]`` (``elbo``, ``reconstruction``, ``rate`` and
    ``reconstruction/<modality>`` for every bound; see :mod:`pyro_mmvae.infer.base`).

    The loss is the training objective at the current step (with a ``beta`` warm-up, the
    warm-up's :math:`\beta`), estimated with the same random draws at every epoch (the RNGs
    are seeded with ``seed`` inside and restored after, so training draws what it would
    without validation and a resumed run validates as the uninterrupted one), in eval mode,
    without gradients, in fixed chunks of ``batch_size`` points.
    """

    def __init__(self, data: Mapping[str, torch.Tensor],
                 mask: Optional[Mapping[str, torch.Tensor]] = None, *, batch_size: int,
                 seed: int = 0):
        self.data, self.mask = dict(data), (None if mask is None else dict(mask))
        self.batch_size, self.seed = batch_size, seed

    def on_epoch_end(self, run: TrainingRun) -> None:
        _eval_mode(run)
        n = num_points(self.data)
        loss, sums = 0.0, {}
        state = rng_state()
        try:
            pyro.set_rng_seed(self.seed)
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    rows = slice(start, start + self.batch_size)
                    batch = {m: x[rows] for m, x in self.data.items()}
                    mask = (None if self.mask is None
                            else {m: v[rows] for m, v in self.mask.items()})
                    if hasattr(run.loss, "terms"):
                        terms = term_sums(run.loss.terms(run.model, run.guide, batch, mask))
                        loss -= float(terms["elbo"])
                        for k, v in terms.items():
                            sums[k] = sums.get(k, 0.0) + v
                    else:
                        loss += float(run.loss.loss(run.model, run.guide, batch, mask))
        finally:
            set_rng_state(state)
        run.history.setdefault("val_loss", []).append(loss / n)
        for k, v in sums.items():
            run.history.setdefault("val_terms", {}).setdefault(k, []).append(float(v) / n)


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved by more than ``min_delta`` for
    ``patience`` epochs, and keep the best parameters.

    :param patience: epochs without improvement before stopping (``>= 1``).
    :param monitor: a history entry with one value per epoch, lower is better: ``"val_loss"``
        (default; needs ``val_data`` or ``val_fraction``) or ``"loss"`` (the training loss).
    :param min_delta: the improvement that counts (``>= 0``).
    :param restore_best: put the best epoch's parameters back into model and guide when
        training ends (stopped early or not).

    The state is the history itself (``history["best_epoch"]``), so a resumed run stops where
    the uninterrupted one would. With a ``run_dir`` the best epoch's checkpoint is written to
    ``best.pt`` beside ``checkpoint.pt`` (which always holds the last epoch, for resuming), and
    restoring reads it; without one the best parameters are kept in memory.
    """

    def __init__(self, patience: int = 10, *, monitor: str = "val_loss", min_delta: float = 0.0,
                 restore_best: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta)
                and min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        if monitor not in ("val_loss", "loss"):
            raise ValueError(f"monitor must be 'val_loss' or 'loss', got {monitor!r}")
        self.patience, self.monitor, self.min_delta = patience, monitor, min_delta
        self.restore_best = restore_best
        self.best_state = None

    def on_fit_start(self, run: TrainingRun) -> None:
        self.best_state = None
        best, epochs = run.history.get("best_epoch"), run.history["epoch"]
        if best is not None and epochs and epochs[-1] - best >= self.patience:
            run.stop = True  # a resumed run that had stopped early stays stopped
            run.stop_reason = (f"no improvement of {self.monitor} for {self.patience} epochs "
                               f"(best at epoch {best})")

    def on_epoch_end(self, run: TrainingRun) -> None:
        values = run.history.get(self.monitor)
        if not values:
            raise ValueError(f"early stopping monitors {self.monitor!r}, which this run does "
                             "not record: give fit val_data or val_fraction, or monitor "
                             "'loss'")
        best = run.history.get("best_epoch")
        epochs = run.history["epoch"]
        best_value = values[epochs.index(best)] if best in epochs else math.inf
        if values[-1] < best_value - self.min_delta:
            run.history["best_epoch"] = best = run.epoch
            self.best_state = (_copy_state(run.model), _copy_state(run.guide))
            if run.run_dir is not None and run.writes:
                save_checkpoint(run.run_dir / BEST_CHECKPOINT, run.model, run.guide, run.optim,
                                epoch=run.epoch, history=run.history, generator=run.generator,
                                config=run.config, step=run.global_step)
        since = run.epoch - (best if best is not None else epochs[0] - 1)
        if since >= self.patience:
            run.stop = True
            run.stop_reason = (f"no improvement of {self.monitor} for {self.patience} epochs "
                               f"(best {min(best_value, values[-1]):.6g} at epoch {best})")

    def on_fit_end(self, run: TrainingRun) -> None:
        if (not self.restore_best or "best_epoch" not in run.history
                or run.history["status"] == "diverged"):
            return
        if self.best_state is not None:
            run.model.load_state_dict(self.best_state[0])
            run.guide.load_state_dict(self.best_state[1])
        elif run.run_dir is not None and (run.run_dir / BEST_CHECKPOINT).is_file():
            load_checkpoint(run.run_dir / BEST_CHECKPOINT, run.model, run.guide)


def _copy_state(module) -> dict:
    return copy.deepcopy(module.state_dict())


class Checkpoint(Callback):
    """``checkpoint.pt`` in the run directory after every epoch (atomic, with checksums)."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        run.checkpoint = run.run_dir / CHECKPOINT
        if run.writes:
            save_checkpoint(run.checkpoint, run.model, run.guide, run.optim, epoch=run.epoch,
                            history=run.history, generator=run.generator, config=run.config,
                            step=run.global_step)


class Metrics(Callback):
    """``metrics.json`` (the history) and ``loss_curve.png`` in the run directory after every
    epoch and when training ends."""

    def on_epoch_end(self, run: TrainingRun) -> None:
        if run.writes:
            write_metrics(run.run_dir, run.history)

    def on_fit_end(self, run: TrainingRun) -> None:
        if run.writes:
            write_metrics(run.run_dir, run.history)


def write_metrics(run_dir: Path, history: Mapping, extra: Optional[Mapping] = None) -> None:
    write_json(run_dir / METRICS, {"history": history, **dict(extra or {})})
    plot_loss_curve(run_dir / LOSS_CURVE, history)


def plot_loss_curve(path: PathLike, history: Mapping) -> None:
    """Atomically write a PNG of the per-step and per-epoch loss per data point (and the
    validation loss, when recorded).

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
    val = history.get("val_loss", [])
    if val:
        ax.plot(epochs[:len(val)], val, "s-", color="C1", ms=3, label="validation")
    if history.get("best_epoch") is not None:
        ax.axvline(history["best_epoch"], color="C1", ls=":", lw=1, label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per data point")
    ax.set_title("training loss")
    if step_loss or epochs:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
