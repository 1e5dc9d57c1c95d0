r"""Datasets, models, guides and bounds of a ``pyro-mmvae`` run, built from its configuration.

A run is described by a :class:`~pyro_mmvae.config.RunConfig` (the typed, validated
configuration that the command line parses, saved as ``config.json`` in the run directory with
what the data gave). Everything a run needs is rebuilt from it by the functions here, which is
how ``pyro-mmvae evaluate RUN_DIR``, ``generate RUN_DIR`` and ``train --resume RUN_DIR`` restore
a trained model: :func:`load_run` reads the configuration (also those saved by earlier
versions: :meth:`~pyro_mmvae.config.RunConfig.from_saved`), loads the data, rebuilds model and
guide and loads the checkpoint. The names (datasets, aggregators, priors, bounds) and what each
builds are in :mod:`pyro_mmvae.registry`.

- :func:`load_data` loads the dataset named by ``--dataset`` into a
  :class:`~pyro_mmvae.registry.PreparedData` (train/test modalities, labels, the kind of each
  modality);
- :func:`build_guide` makes one encoder per modality from its kind (``"vector"``: MLP,
  ``"image"``: :class:`~pyro_mmvae.guides.ConvImageEncoder`, ``"text"``:
  :class:`~pyro_mmvae.guides.TextEncoder`) and the aggregator named by ``--aggregator``
  (:func:`~pyro_mmvae.registry.make_aggregator`); :func:`build_model` the matching decoders and
  the prior named by ``--prior``; :func:`build_loss` the bound named by ``--bound`` with its
  options (with ``--beta-warmup STEPS``, ``beta`` is the schedule
  ``linear_warmup(STEPS, start=0, end=--beta)``).

Every builder takes a configuration and resolves it first
(:meth:`~pyro_mmvae.config.RunConfig.resolve`: defaults filled, every option checked, a
``ValueError`` naming the option for a combination that means nothing).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Dict, Mapping, Optional

import pyro
from torch import nn

from pyro_mmvae import __version__
from pyro_mmvae.config import RESUME_OPTIONS, RunConfig, SavedConfig
from pyro_mmvae.guides import ConvImageEncoder, MLPEncoder, MultimodalGuide, TextEncoder
from pyro_mmvae.infer import linear_warmup
from pyro_mmvae.io import remove_stale_temp_files
from pyro_mmvae.models import MultimodalModel, dimension_likelihood_weights
from pyro_mmvae.models.decoders import CategoricalDecoder
from pyro_mmvae.models.networks import ConvImageDecoder, TextDecoder
from pyro_mmvae.nn import MLP
from pyro_mmvae.registry import (AGGREGATORS, BOUNDS, DATASET_OPTIONS, DATASETS,  # noqa: F401
                                 DEFAULT_DATASET, GAUSSIAN_AGGREGATORS, LIKELIHOODS,
                                 MIXTURE_AGGREGATORS, PRIORS, PreparedData, build_prior,
                                 make_aggregator, split)
from pyro_mmvae.report import CLASSIFIERS, EVALUATION
from pyro_mmvae.train import (BEST_CHECKPOINT, CHECKPOINT, CONFIG, LOSS_CURVE, METRICS,
                              load_checkpoint, restore_checkpoint)

__all__ = ["load_data", "build_guide", "build_model", "build_loss", "feature_dim",
           "likelihood_weights", "beta_option", "bound_options", "saved_config", "read_config",
           "read_run_config", "load_run", "check_same_data", "RUNTIME_KEYS", "check_output_dir",
           "open_run_dir"]


def load_data(config: RunConfig) -> PreparedData:
    """The dataset of ``config`` (the built-in image datasets from, or built into,
    ``config.data_root``)."""
    config = config.resolve()
    return DATASETS[config.dataset].load(config)


# --- guide, model, bound ------------------------------------------------------------------------


def feature_dim(config: RunConfig) -> int:
    """Encoder output size E: ``2 D`` Gaussian-expert parameters for PoE/MoE/MoPoE (and for
    every aggregator on vector data, as the authors' linear study); the aggregator width for
    the learnable aggregators on images and text."""
    config = config.resolve()
    if AGGREGATORS[config.aggregator].experts or DATASETS[config.dataset].expert_features:
        return 2 * config.latent_dim
    return config.aggregator_width


def build_guide(config: RunConfig, data: PreparedData) -> MultimodalGuide:
    """``MultimodalGuide`` with one encoder per modality (by kind) and the aggregator (for
    ``subset-encoders`` and ``joint`` the per-modality encoders give the features that every
    subset's network, or the joint one, reads)."""
    config = config.resolve()
    e = feature_dim(config)
    encoders = {}
    for m, kind in data.kinds.items():
        shape = data.modality_shapes[m]
        if kind == "image":
            encoders[m] = ConvImageEncoder(shape, e, channels=config.channels)
        elif kind == "text":
            encoders[m] = TextEncoder(shape[0], e, alphabet_size=shape[1])
        else:
            encoders[m] = MLPEncoder(shape[0], e, hidden=config.hidden)
    return MultimodalGuide(encoders, make_aggregator(config, e, len(encoders)))


def build_model(config: RunConfig, data: PreparedData) -> nn.Module:
    """The dataset's own model if it has one, else ``MultimodalModel`` with the prior named
    by ``--prior`` (:func:`~pyro_mmvae.registry.build_prior`) and one decoder per modality:
    images through :class:`~pyro_mmvae.models.ConvImageDecoder` and vectors through an MLP
    (the ``--hidden`` sizes reversed) with the ``--likelihood`` family
    (:data:`~pyro_mmvae.registry.LIKELIHOODS`), text through a
    :class:`~pyro_mmvae.models.TextDecoder` with a categorical likelihood."""
    config = config.resolve()
    dataset = DATASETS[config.dataset]
    if dataset.build_model is not None:
        return dataset.build_model(config, data)
    decoders = {}
    for m, kind in data.kinds.items():
        shape = data.modality_shapes[m]
        if kind == "image":
            net = ConvImageDecoder(config.latent_dim, shape, config.channels[::-1])
            decoders[m] = LIKELIHOODS[config.likelihood](net)
        elif kind == "text":
            decoders[m] = CategoricalDecoder(TextDecoder(config.latent_dim, shape[0], shape[1]))
        elif kind == "vector":
            net = MLP(config.latent_dim, tuple(reversed(config.hidden)), shape[0])
            decoders[m] = LIKELIHOODS[config.likelihood](net)
        else:
            raise ValueError(f"modality '{m}': no decoder for kind {kind!r}")
    return MultimodalModel(build_prior(config), decoders)


def likelihood_weights(config: RunConfig, data: PreparedData) -> Optional[Dict[str, float]]:
    """``--likelihood-weights dimension``: MoPoE's λ_m = D_max / D_m (text: one dimension per
    character); ``none``: None."""
    if config.likelihood_weights == "none":
        return None
    text = tuple(m for m, k in data.kinds.items() if k == "text")
    return dimension_likelihood_weights(data.modality_shapes, one_hot=text)


def beta_option(config: RunConfig):
    """``--beta``, or with ``--beta-warmup STEPS > 0`` the schedule
    ``linear_warmup(STEPS, start=0, end=--beta)``."""
    config = config.resolve()
    steps = config.beta_warmup
    return linear_warmup(steps, start=0.0, end=config.beta) if steps else config.beta


def bound_options(config) -> Dict[str, object]:
    """The bound-specific options of a configuration, resolved: ``{"num_particles",
    "objective", "alpha", "beta_norm", "mixture_form"}`` (None where the bound takes no such
    option); a mapping or namespace of :class:`~pyro_mmvae.config.RunConfig` fields is read
    with :meth:`~pyro_mmvae.config.RunConfig.from_dict`."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config if isinstance(config, Mapping) else vars(config))
    config = config.resolve()
    keys = ("num_particles", "objective", "alpha", "beta_norm", "mixture_form")
    return {k: getattr(config, k) for k in keys}


def build_loss(config: RunConfig, data: PreparedData):
    """The bound named by ``--bound`` (:data:`~pyro_mmvae.registry.BOUNDS`) with ``beta``
    (:func:`beta_option`), the likelihood weights, ``num_particles`` and its own options:

    - ``multisource``: ``MultiSourceELBO(K, objective=--objective)``, ``K`` = 16 unless
      ``--num-particles`` says otherwise (always importance-weighted);
    - ``recursive`` / ``jmvae``: ``alpha=--alpha``, with ``--beta-norm`` also ``beta_norm`` and
      ``input_dims=data.modality_dims``;
    - ``masked``, ``mixture`` (``form=--mixture-form``), ``subsampled``: ``masking=--masking``
      where given (else the bound's own default), ``iwae=--iwae``.
    """
    config = config.resolve()
    bound = BOUNDS[config.bound]
    kwargs = {"beta": beta_option(config),
              "likelihood_weights": likelihood_weights(config, data)}
    if bound.iwae:
        kwargs["iwae"] = config.iwae
    if "objective" in bound.options:
        kwargs["objective"] = config.objective
    if "alpha" in bound.options:
        kwargs["alpha"] = config.alpha
    if config.beta_norm is not None:
        kwargs.update(beta_norm=config.beta_norm, input_dims=data.modality_dims)
    if "mixture_form" in bound.options:
        kwargs["form"] = config.mixture_form
    if bound.masking and config.masking is not None:
        kwargs["masking"] = config.masking
    return bound.cls(config.num_particles, **kwargs)


# --- config.json and restoring a run ------------------------------------------------------------


def saved_config(config: RunConfig, data: PreparedData) -> dict:
    """``config.json`` of a run (what :func:`~pyro_mmvae.train.fit` gets as ``config=``): the
    options that apply (:meth:`~pyro_mmvae.config.RunConfig.saved`, no paths) and what the
    data gave (modality sizes, test points, dataset info) and the library's version."""
    return {**config.saved(), "modality_dims": data.modality_dims, "num_test": data.num_test,
            "dataset_info": data.info, "pyro_mmvae_version": __version__}


def read_config(run_dir) -> dict:
    """The saved ``config.json`` of a run directory, with a clear error if it is not one."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pyro-mmvae run directory: {path} is "
                                "missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the run cannot be restored") from err
    if not isinstance(config, dict) or "dataset" not in config:
        raise ValueError(f"{path} has no 'dataset' entry; was it written by pyro-mmvae train?")
    return config


def read_run_config(run_dir, saved: Optional[Mapping] = None) -> SavedConfig:
    """The configuration and record of a run directory's ``config.json`` (``saved``: its
    content, already read), resolved; ``ValueError`` naming the file otherwise."""
    path = Path(run_dir) / CONFIG
    try:
        config, record = RunConfig.from_saved(read_config(run_dir) if saved is None else saved)
        return SavedConfig(config.resolve(), record)
    except ValueError as err:
        raise ValueError(f"{path} {err}" if str(err).startswith("names the dataset")
                         else f"{path}: {err}") from None


# the entries of config.json that do not change what a run trains: the options a resume or an
# evaluation may set anew (the epochs to reach, where to run, the evaluation's sizes) and the
# informational entries (and those of earlier versions); a checkpoint must agree with its
# run's config.json on every other key they both have
RUNTIME_KEYS = RESUME_OPTIONS + ("dataset_info", "pyro_mmvae_version", "command", "output_dir",
                                 "world_size")  # a resume may run on another number of processes


def check_same_data(saved: Mapping, data: PreparedData, config: RunConfig) -> None:
    """``ValueError`` if the run of ``saved`` (its ``config.json``) was trained on files
    (``--data``) whose SHA-256 differs from that of the files just loaded."""
    trained_on = (saved.get("dataset_info") or {}).get("sha256")
    if trained_on is not None and data.info.get("sha256") != trained_on:
        raise ValueError(f"--data {config.data}: these are not the data the run was trained on "
                         f"(SHA-256 {str(data.info.get('sha256'))[:12]}..., the run's "
                         f"{trained_on[:12]}...); point --data at them")


def load_run(run_dir, device="cpu", data_root=None):
    """``(config, data, model, guide, checkpoint)`` of a trained run, model and guide in eval
    mode on ``device`` with the checkpoint's parameters (with ``--early-stopping``, those of
    the best epoch, ``best.pt``, which the run ended with).

    The built-in image datasets are read from (or rebuilt into) ``data_root`` (ignored for the
    datasets without a cache), else the
    ``data_root`` saved in the configuration (runs of older versions), else the default cache
    (:func:`~pyro_mmvae.data.digits.default_root`): ``pyro-mmvae train`` does not record the
    cache directory, which belongs to the machine, not to the run. The checkpoint must pass
    its checksums and agree with ``config.json`` (outside :data:`RUNTIME_KEYS`);
    :class:`~pyro_mmvae.train.CheckpointError` otherwise."""
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    config = read_run_config(run_dir, saved).config
    if data_root is not None and "data_root" in DATASETS[config.dataset].options:
        config = replace(config, data_root=Path(data_root))
    path = run_dir / CHECKPOINT
    if config.early_stopping is not None and (run_dir / BEST_CHECKPOINT).is_file():
        path = run_dir / BEST_CHECKPOINT  # the parameters the run ended with
    ckpt = load_checkpoint(path, config=saved, ignore=RUNTIME_KEYS)  # checked before the data
    data = load_data(config)
    check_same_data(saved, data, config)
    pyro.set_rng_seed(config.seed)
    model, guide = build_model(config, data), build_guide(config, data)
    model.to(data.dtype)
    guide.to(data.dtype)
    restore_checkpoint(ckpt, model, guide, path=path)
    model.to(device).eval()
    guide.to(device).eval()
    return config, data, model, guide, ckpt


# --- run directories ---------------------------------------------------------------------------

# the files whose presence makes a directory a run
RUN_MARKERS = (CONFIG, CHECKPOINT, METRICS)
# every file pyro-mmvae train and evaluate write into a run directory (what --overwrite deletes)
RUN_FILES = (CONFIG, CHECKPOINT, BEST_CHECKPOINT, METRICS, LOSS_CURVE, EVALUATION, CLASSIFIERS,
             "coherence.png", "rate_distortion.png", "samples.png")
RUN_FILE_PATTERNS = ("generation_*.png", "generate_*.png")


def run_files(run_dir: Path) -> list:
    """The files of :data:`RUN_FILES` and :data:`RUN_FILE_PATTERNS` in ``run_dir``."""
    found = [run_dir / name for name in RUN_FILES]
    found += [p for pattern in RUN_FILE_PATTERNS for p in sorted(run_dir.glob(pattern))]
    return [p for p in found if p.is_file() or p.is_symlink()]


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<dataset>-<aggregator>-<bound>-<timestamp>`` (a suffix avoids collisions)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.dataset}-{config.aggregator}-{config.bound}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def check_output_dir(out: Optional[Path], overwrite: bool) -> None:
    """``ValueError`` when ``--output-dir`` is a file, or already holds a run and
    ``--overwrite`` was not given."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file, not a directory")
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(f"--output-dir {out} already holds a run ({', '.join(held)}); "
                         f"continue it with --resume {out}, or train afresh there with "
                         "--overwrite")


def open_run_dir(run_dir: Path, option: str, overwrite: bool = False) -> None:
    """Create ``run_dir`` (``ValueError`` naming ``option`` if it cannot be); with
    ``overwrite`` delete the files an earlier run wrote there (:func:`run_files`); remove the
    temporary files of writes that were killed (:func:`~pyro_mmvae.io.remove_stale_temp_files`)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a component is a file, no permission, ...
        raise ValueError(f"{option} {run_dir}: cannot create the run directory "
                         f"({err.strerror or err})") from None
    if overwrite:
        for path in run_files(run_dir):
            path.unlink()
    removed = remove_stale_temp_files(run_dir)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) of an interrupted earlier write "
              f"from {run_dir}: {', '.join(p.name for p in removed)}", file=sys.stderr)
