"""The one training loop, for Python use and for the ``pyro-mmvae`` CLI.

:func:`fit` trains a model and guide that follow the multimodal protocol (``model(data, mask)``,
``guide(data, mask)``) with :class:`pyro.infer.SVI` and Adam — one ``torch.optim.Adam`` over
all parameters (:class:`~pyro_mmvae.optim.SharedOptim`, the updates of :class:`pyro.optim.Adam`
with one optimiser step instead of one per parameter), or :class:`pyro.optim.ClippedAdam` —
on shuffled mini-batches of a dict-of-tensors dataset.

After every epoch it runs its callbacks (:mod:`pyro_mmvae.train.callbacks`): evaluation
(``eval_fn``), validation on held-out data (``val_data`` or ``val_fraction``: the loss and the
mean of every term of the bound, ``history["val_loss"]`` / ``history["val_terms"]``), the
caller's own, early stopping (``early_stopping``: stop when the validation loss stops
improving, end with the best epoch's parameters, ``best.pt``), and the run files. For the
library's bounds it also records the epoch mean of every per-datapoint term
(``history["terms"]``: ``elbo``, ``reconstruction``, ``rate``, ``reconstruction/<modality>``,
and each bound's own). Gradients pass through ``gradient_transform`` (e.g.
:func:`clamp_gradients`) before the finiteness check and the update.

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

from .callbacks import (BEST_CHECKPOINT, Callback, Checkpoint, EarlyStopping, Evaluate, Metrics,
                        TrainingRun, Validate, plot_loss_curve, write_metrics)
from .checkpoints import (CHECKPOINT, CHECKSUMS, CONFIG, LOSS_CURVE, METRICS, CheckpointError,
                          config_differences, load_checkpoint, restore_checkpoint, rng_state,
                          save_checkpoint, set_rng_state, state_digest, write_json)
from .loop import (VALIDATE, TrainingDiverged, fit, iterate_minibatches, resolve_device,
                   split_validation, to_device)
from .step import NonFiniteStep, SVIStep, clamp_gradients, clear_param_grads, make_optimizer
from .two_stage import fit_two_stage

__all__ = [
    "BEST_CHECKPOINT", "CHECKPOINT", "CHECKSUMS", "CONFIG", "LOSS_CURVE", "METRICS", "VALIDATE",
    "Callback", "Checkpoint", "CheckpointError", "EarlyStopping", "Evaluate", "Metrics",
    "NonFiniteStep", "SVIStep", "TrainingDiverged", "TrainingRun", "Validate",
    "clamp_gradients", "clear_param_grads", "config_differences", "fit", "fit_two_stage",
    "iterate_minibatches", "load_checkpoint", "make_optimizer", "plot_loss_curve",
    "resolve_device", "restore_checkpoint", "rng_state", "save_checkpoint", "set_rng_state",
    "split_validation", "state_digest", "to_device", "write_json", "write_metrics",
]
