"""The training loop: :func:`fit` and :func:`fit_two_stage`."""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_mmvae.protocol import num_points, validate_batch

from .callbacks import Checkpoint, EarlyStopping, Evaluate, Metrics, TrainingRun, Validate
from .checkpoints import (CONFIG, PathLike, load_checkpoint, rng_state, set_rng_state,
                          write_json)
from .distributed import DataParallelStep, all_reduce_sum
from .distributed import resolve as distributed_place
from .step import NonFiniteStep, SVIStep, clear_param_grads, make_optimizer


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
    is dropped: :meth:`~pyro_mmvae.data.dataset.MultimodalDataset.batches` on dicts (``mask``
    None stays None).

    :param data: ``{modality: (N, ...)}``; ``mask``: ``{modality: (N,)}`` bool or None.
    :param generator: a CPU ``torch.Generator`` that drives the permutation (seeded by
        :func:`fit`, saved in checkpoints).
    :yields: ``({m: (batch_size, ...)}, {m: (batch_size,)} or None)``.
    """
    from pyro_mmvae.data.dataset import MultimodalDataset

    dataset = MultimodalDataset(data, mask)
    for batch, batch_mask in dataset.batches(batch_size, shuffle=True, generator=generator,
                                             drop_last=True):
        yield batch, (None if mask is None else batch_mask)


def split_validation(data: Mapping[str, torch.Tensor],
                     mask: Optional[Mapping[str, torch.Tensor]] = None, *, fraction: float,
                     seed: int = 0):
    """Hold out a random ``fraction`` of the data points: ``(train, train_mask, val,
    val_mask)`` (masks None when ``mask`` is), the points chosen by a generator seeded with
    ``seed`` (the same split for the same seed, whatever the global RNG)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {fraction}")
    n = num_points(data)
    n_val = int(round(n * fraction))
    if not 1 <= n_val < n:
        raise ValueError(f"val_fraction {fraction} of {n} data points leaves {n_val} for "
                         "validation; it needs at least one point on each side")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values

    def take(tensors, idx):
        return None if tensors is None else {m: x[idx.to(x.device)] for m, x in tensors.items()}
    return take(data, train_idx), take(mask, train_idx), take(data, val_idx), take(mask, val_idx)


VALIDATE = ("first", "always", "never")

# pyro.module's warning for a parameter with requires_grad=False: under fit such a parameter is
# frozen on purpose (module docstring), so the warning is noise there
_FROZEN_WARNING = r".* was not registered in the param store because requires_grad=False"


def _frozen_warning_silenced(fn):
    """``fn`` with pyro.module's warning about frozen parameters silenced while it runs, and,
    with ``isolate_params=True``, in a fresh param store (``ParamStoreDict.scope``) that leaves
    the caller's as it was."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        scope = (pyro.get_param_store().scope() if kwargs.get("isolate_params")
                 else contextlib.nullcontext())
        with warnings.catch_warnings(), scope:
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


HISTORY_LISTS = ("epoch", "loss", "epoch_time", "step_loss", "eval", "val_loss")
HISTORY_TABLES = ("terms", "val_terms")


@_frozen_warning_silenced
def fit(model, guide, loss, train_data: Mapping[str, torch.Tensor], *,
        mask: Optional[Mapping[str, torch.Tensor]] = None, epochs: int, batch_size: int,
        lr: float = 1e-3, clip_norm: Optional[float] = None,
        run_dir: Optional[PathLike] = None, seed: Optional[int] = 0,
        generator: Optional[torch.Generator] = None,
        gradient_transform: Optional[Callable[[list], None]] = None,
        device: Union[str, torch.device, None] = "cpu", progress: bool = True,
        eval_fn: Optional[Callable[[int], Mapping[str, float]]] = None,
        val_data: Optional[Mapping[str, torch.Tensor]] = None,
        val_mask: Optional[Mapping[str, torch.Tensor]] = None,
        val_fraction: Optional[float] = None,
        early_stopping: Union[EarlyStopping, int, None] = None,
        callbacks: Sequence = (),
        config: Optional[Mapping] = None,
        resume_from: Optional[PathLike] = None, validate: str = "first",
        transform: Optional[Callable] = None, isolate_params: bool = False,
        distributed=None) -> dict:
    """Train ``model`` and ``guide`` with SVI on shuffled mini-batches; return the history.

    :param model: Pyro program ``model(data, mask)`` (an ``nn.Module``, e.g. a ``PyroModule``).
    :param guide: Pyro program ``guide(data, mask)`` (an ``nn.Module``).
    :param loss: a ``pyro.infer.ELBO`` (e.g. :class:`~pyro_mmvae.infer.MaskedMultimodalELBO`);
        ``loss_and_grads`` must return the loss *summed* over the batch.
    :param train_data: ``{modality: (N, ...)}``, or a
        :class:`~pyro_mmvae.data.dataset.MultimodalDataset` (with its mask). ``mask``:
        ``{modality: (N,)}`` bool, True where observed (None: all observed). Both are moved to
        ``device``.
    :param epochs: total number of epochs (with ``resume_from``, including those already done).
    :param batch_size: mini-batch size; the last incomplete batch of each epoch is dropped.
    :param lr: Adam learning rate. ``clip_norm``: use ``ClippedAdam`` with this gradient norm.
    :param run_dir: where to write ``checkpoint.pt`` (after every epoch), ``config.json``,
        ``metrics.json`` and ``loss_curve.png`` (and ``best.pt`` with ``early_stopping``);
        None writes nothing.
    :param seed: seeds ``pyro.set_rng_seed`` and the shuffling generator. None leaves the
        global RNGs as they are (the caller seeded them) and needs ``generator``.
    :param generator: the shuffling generator (a CPU ``torch.Generator``, advanced in place);
        None: a new one seeded with ``seed``.
    :param gradient_transform: ``gradient_transform(params)``, called after every backward
        pass and before the gradients are checked for non-finite values and the update, changes
        the gradients in place: e.g. :func:`~pyro_mmvae.train.clamp_gradients` (NaN → 0,
        element-wise clip).
    :param device: ``"cpu"`` or ``"cuda"`` (``ValueError`` if CUDA is unavailable).
    :param progress: show a tqdm bar with the running mean loss per data point of the epoch.
    :param eval_fn: called as ``eval_fn(epoch)`` after each epoch (model and guide in eval
        mode); its dict of numbers is stored in ``history["eval"]``.
    :param val_data, val_mask: held-out data (and mask) whose loss per data point (and mean
        terms, for the library's bounds) is recorded after every epoch
        (:class:`~pyro_mmvae.train.callbacks.Validate`).
    :param val_fraction: instead of ``val_data``, hold out this random fraction of
        ``train_data`` (:func:`split_validation`, seeded with ``seed``, or 0).
    :param early_stopping: an :class:`~pyro_mmvae.train.callbacks.EarlyStopping` (or an integer
        patience for ``EarlyStopping(patience)``, monitoring the validation loss): stop when
        the monitored loss stops improving and end with the best epoch's parameters.
    :param callbacks: further callbacks (:mod:`pyro_mmvae.train.callbacks`), run after every
        epoch after evaluation and validation and before early stopping and the run files.
    :param config: extra entries for ``config.json`` and the checkpoint (e.g. CLI arguments).
    :param resume_from: a checkpoint to continue from: restores parameters, optimiser state,
        RNG states, history and the step of a ``beta`` schedule, then trains epochs
        ``ckpt["epoch"] + 1 .. epochs``.
    :param validate: when Pyro's validation checks run: ``"first"`` (default) for the first
        step of this call (and the parameter-registration pass before it), ``"always"`` for
        every step, ``"never"`` for none. The global setting is restored after every step.
    :param transform: applied to every mini-batch before the step, as
        ``transform(batch, mask, generator) -> (batch, mask)`` with ``generator`` the
        shuffling generator (saved in checkpoints, so a resumed run draws what the
        uninterrupted one would): a per-epoch augmentation such as the dynamic binarisation of
        :func:`pyro_mmvae.data.binarization`. The registration pass sees a transformed first
        batch drawn from a copy of the generator.
    :param isolate_params: train in a fresh Pyro param store and give the caller's back
        afterwards, untouched (``pyro.get_param_store().scope()``): for training something
        on the side, such as the coherence classifiers, without clearing a model's
        ``pyro.param`` values. The modules keep their trained parameters either way.
    :param distributed: data-parallel training (:mod:`pyro_mmvae.train.distributed`): None
        (default) trains data-parallel when a ``torch.distributed`` process group of more
        than one process is initialised (as under ``torchrun``), False never, or a
        :class:`~pyro_mmvae.train.distributed.Distributed`. ``batch_size`` is then the global
        batch, split over the processes; the steps are those of one process with the same
        seed, to float tolerance; only rank 0 writes ``run_dir`` and shows progress. Every
        process of the group must call ``fit`` then: a fit on some of them only (a side model
        trained on rank 0) needs ``distributed=False``.
    :returns: history dict: ``epoch`` (list of 1-based epochs), ``loss`` (mean loss per data
        point of each epoch), ``epoch_time`` (seconds), ``step_loss`` (loss per data point of
        every step), ``terms`` (for the library's bounds: ``{name: [epoch mean per data
        point]}`` of every per-datapoint term, ``elbo``, ``reconstruction``, ``rate`` and
        ``reconstruction/<modality>`` among them), ``eval`` (list of ``eval_fn`` results),
        with validation ``val_loss`` and ``val_terms``, with early stopping ``best_epoch``,
        ``steps_per_epoch``, ``status`` (``"completed"`` or ``"stopped_early"``, then
        ``stop_reason``).
    :raises TrainingDiverged: on a non-finite loss or gradient (see the package docstring).
    :raises ValueError: bad arguments or data (before any step).

    The global Pyro param store is cleared at the start (unless ``isolate_params``).
    Parameters with ``requires_grad=False`` are held fixed (package docstring).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if validate not in VALIDATE:
        raise ValueError(f"validate must be one of {VALIDATE}, got {validate!r}")
    if seed is None and generator is None:
        raise ValueError("seed=None (keep the global RNG state) needs a shuffling generator")
    train_data, mask = _dataset_parts(train_data, mask, "train_data", "mask")
    val_data, val_mask = _dataset_parts(val_data, val_mask, "val_data", "val_mask")
    if val_fraction is not None:
        if val_data is not None:
            raise ValueError("give val_data or val_fraction, not both")
        train_data, mask, val_data, val_mask = split_validation(
            train_data, mask, fraction=val_fraction, seed=0 if seed is None else seed)
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(early_stopping)
    with pyro.validation_enabled(True):  # ValueError naming the modality, NaNs included
        checked = validate_batch(train_data, mask)
        mask = None if mask is None else checked
        if val_data is not None:
            checked = validate_batch(val_data, val_mask)
            val_mask = None if val_mask is None else checked
    n = num_points(train_data)
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} data "
                         "points); no complete batch can be formed")
    steps_per_epoch = n // batch_size

    dev = resolve_device(device)
    place = distributed_place(distributed)
    if place is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", place.local_rank)  # one GPU per process
    if place is not None and batch_size < place.world_size:
        raise ValueError(f"batch_size ({batch_size}) is smaller than the {place.world_size} "
                         "processes of the data-parallel run: each needs a data point")
    writes = place is None or place.is_main
    pyro.clear_param_store()
    if seed is not None:
        pyro.set_rng_seed(seed)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    model.to(dev)
    guide.to(dev)
    train_data, mask = to_device(train_data, dev), to_device(mask, dev)
    val_data, val_mask = to_device(val_data, dev), to_device(val_mask, dev)

    optim = make_optimizer(lr, clip_norm)
    history = {**{k: [] for k in HISTORY_LISTS}, **{k: {} for k in HISTORY_TABLES},
               "steps_per_epoch": steps_per_epoch, "status": "running"}
    start_epoch = 0
    global_step = 0  # optimisation steps taken over the run (what a beta schedule reads)
    ckpt_path = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, model, guide, optim, map_location=dev)
        set_rng_state(ckpt["rng"], generator)
        saved_device = ckpt["rng"].get("cuda_device")
        if place is not None and dev.type == "cuda" and saved_device is not None:
            # rank 0 saved the stream of its own GPU: every process continues it on its own
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][saved_device], dev)
        saved = ckpt["history"]
        history.update({k: saved[k] for k in HISTORY_LISTS + HISTORY_TABLES + ("best_epoch",)
                        if k in saved})
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
                   "loss": type(loss).__name__,
                   "world_size": 1 if place is None else place.world_size, **dict(config or {})}
    if run_dir is not None and writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG, full_config)

    hooks = ([Evaluate(eval_fn)] if eval_fn is not None else [])
    if val_data is not None:
        hooks.append(Validate(val_data, val_mask, batch_size=batch_size,
                              seed=0 if seed is None else seed))
    hooks += list(callbacks)
    if early_stopping is not None:
        hooks.append(early_stopping)
    if run_dir is not None:
        hooks += [Checkpoint(), Metrics()]
    run = TrainingRun(model=model, guide=guide, loss=loss, optim=optim, generator=generator,
                      history=history, config=full_config, run_dir=run_dir, epoch=start_epoch,
                      global_step=global_step, checkpoint=ckpt_path, writes=writes)
    _call(hooks, "on_fit_start", run)

    stepper = SVIStep(model, guide, loss, optim, gradient_transform)
    if epochs > start_epoch and not run.stop:  # parameters and optimisers before step one
        if set_step is not None:
            set_step(global_step)
        with pyro.validation_enabled(validate != "never"):
            first_batch = {m: x[:batch_size] for m, x in train_data.items()}
            first_mask = None if mask is None else {m: v[:batch_size] for m, v in mask.items()}
            if transform is not None:
                copy = torch.Generator().set_state(generator.get_state())
                first_batch, first_mask = transform(first_batch, first_mask, copy)
            _build_optimizer_state(model, guide, loss, optim, first_batch, first_mask)
        if place is not None:  # DDP over the parameters the registration pass created
            stepper = DataParallelStep(model, guide, loss, optim, place, gradient_transform,
                                       device_ids=[dev.index] if dev.type == "cuda" else None)
    first = True

    bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, disable=not (progress and writes),
               unit="step", dynamic_ncols=True, leave=True)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            if run.stop:
                break
            model.train()
            guide.train()
            t0 = time.perf_counter()
            total, sums = 0.0, {}
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
                    clear_param_grads()
                    _diverged(err, epoch, step, run, hooks)
                first = False
                global_step += 1
                total += value
                for k, v in (getattr(loss, "last_terms", None) or {}).items():
                    sums[k] = sums.get(k, 0.0) + v
                history["step_loss"].append(value)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{total / step:.4g}",
                                refresh=False)
            history["epoch"].append(epoch)
            history["loss"].append(total / steps_per_epoch)
            history["epoch_time"].append(time.perf_counter() - t0)
            if place is not None and sums:  # each process summed its shards' terms
                keys = sorted(sums)
                summed = all_reduce_sum(torch.tensor([float(sums[k]) for k in keys],
                                                     dtype=torch.float64, device=dev))
                sums = dict(zip(keys, summed.tolist()))
            for k, v in sums.items():
                history["terms"].setdefault(k, []).append(float(v) / (steps_per_epoch
                                                                      * batch_size))
            run.epoch, run.global_step = epoch, global_step
            _call(hooks, "on_epoch_end", run)
    finally:
        bar.close()
    if set_step is not None:
        set_step(global_step)  # the step the loss would take next
    if run.stop:
        history["status"], history["stop_reason"] = "stopped_early", run.stop_reason
    else:
        history["status"] = "completed"
    _call(hooks, "on_fit_end", run)
    return history


def _dataset_parts(data, mask, name: str, mask_name: str):
    """``(data, mask)`` of a :class:`~pyro_mmvae.data.dataset.MultimodalDataset` (its own mask),
    or of dicts as given."""
    from pyro_mmvae.data.dataset import MultimodalDataset

    if not isinstance(data, MultimodalDataset):
        return data, mask
    if mask is not None:
        raise ValueError(f"{name} is a MultimodalDataset, which has its own mask: drop "
                         f"{mask_name}")
    return data.data, data.mask


def _call(hooks, name: str, run: TrainingRun) -> None:
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(run)


def _diverged(err: NonFiniteStep, epoch, step, run: TrainingRun, hooks):
    history = run.history
    global_step = (epoch - 1) * history["steps_per_epoch"] + step
    history["status"] = "diverged"
    history["diverged_at"] = {"epoch": epoch, "step": step, "global_step": global_step,
                              "loss": err.loss, "non_finite": err.what}
    ckpt_path = run.checkpoint
    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {ckpt_path}"
            if ckpt_path is not None else "no checkpoint was written")
    message = (f"training diverged: non-finite {err.what} (loss {err.loss}) at epoch {epoch}, "
               f"step {step}; the step was not applied and {kept}. Try a lower learning rate "
               "or gradient clipping (clip_norm).")
    _call(hooks, "on_fit_end", run)
    raise TrainingDiverged(message, epoch=epoch, step=step, global_step=global_step,
                           loss=err.loss, checkpoint=ckpt_path, history=history) from None
