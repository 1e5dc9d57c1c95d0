"""The ``pyro-mmvae`` command line: ``train``, ``evaluate`` and ``generate``.

``pyro-mmvae train`` with no options trains a SumPooling guide under the masked bound (Hirt et
al.) on PolyDigits, the PolyMNIST recipe rebuilt from scikit-learn's bundled digits (5 image
modalities, generated once into a cache, no downloads), then evaluates it. The run directory
``runs/<dataset>-<aggregator>-<bound>-<timestamp>`` holds ``config.json``, ``checkpoint.pt``
(after every epoch, written atomically), ``metrics.json``, ``loss_curve.png`` and the
evaluation (``evaluation.json``, ``classifiers.pt``, ``coherence.png``, ``rate_distortion.png``,
``generation_*.png``, ``samples.png``; see :mod:`pyro_mmvae.report`).

- ``pyro-mmvae train --resume RUN_DIR [--epochs N]`` continues an interrupted (or finished)
  run from its checkpoint with its own configuration, to the same result as an uninterrupted
  run;
- ``pyro-mmvae evaluate RUN_DIR`` (re)computes every metric of a trained run;
- ``pyro-mmvae generate RUN_DIR --given m0,m2`` writes a cross-generation grid.

Besides the masked, mixture and subsampled bounds, ``--bound multisource`` (MSNVI,
``--objective``), ``recursive`` (the M2VAE, ``--alpha``, ``--beta-norm``) and ``jmvae``
(JMVAE-kl, ``--alpha``) train the other papers' objectives, with ``--aggregator poe-divide``,
``subset-encoders`` or ``joint`` for their guides; an option that does not apply to the bound
is an error naming it, before any data is loaded (:func:`~pyro_mmvae.runs.bound_options`).

Datasets, models, guides and bounds are built from the configuration by :mod:`pyro_mmvae.runs`,
which is how a saved run is restored.

Safe runs. ``train`` never writes into a directory that already holds a run (``config.json``,
``checkpoint.pt`` or ``metrics.json``) unless told to: ``--resume RUN_DIR`` continues it,
``--overwrite`` deletes the files a run writes there (not others) and trains afresh. Checkpoints
carry a SHA-256 checksum per entry and the configuration they were written with; a resume, an
``evaluate`` or a ``generate`` verifies both (a flipped bit, or the checkpoint of another
configuration, is an error naming the file and the differing keys). Every file is written
atomically (a temporary file, flushed to disk, then renamed; ``SIGTERM`` is handled like
``Ctrl-C``, so an interrupted write removes its temporary file), and ``train`` deletes the
temporary files that a killed earlier write left in the run directory. An option that does not
apply to ``--dataset`` is an error, and ``config.json`` records only the options that apply,
without paths: the run directory is where it lies, and the datasets' cache directory
(``--data-root``) belongs to the machine (``evaluate``, ``generate`` and ``train --resume`` take
``--data-root`` again, else use ``$PYRO_MMVAE_DATA`` or ``~/.cache/pyro_mmvae``, where the
datasets are rebuilt identically if missing). A user error — an option, a path, a run
directory, a checkpoint — is one line ``pyro-mmvae COMMAND: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.diagnostics.plots import save_generation_grid
from pyro_mmvae.guides.aggregators import SCALES
from pyro_mmvae.infer import MASKINGS
from pyro_mmvae.infer.multisource import OBJECTIVES
from pyro_mmvae.io import remove_stale_temp_files
from pyro_mmvae.report import CLASSIFIERS, EVALUATION, evaluate_run, headline
from pyro_mmvae.runs import (AGGREGATORS, BOUNDS, DATASET_OPTIONS, DATASETS, DEFAULT_DATASET,
                             PRIORS, RUNTIME_KEYS, bound_options, build_guide, build_loss,
                             component_options,
                             build_model, config_namespace, load_run, read_config)
from pyro_mmvae.train import (CHECKPOINT, CONFIG, LOSS_CURVE, METRICS, CheckpointError,
                              TrainingDiverged, fit, load_checkpoint, resolve_device, write_json)

BOUND_HELP = {"masked": "the masked bound of Hirt et al. (default masking iid_half)",
              "mixture": "the mixture-based bound, MMVAE/MoPoE (default masking all)",
              "subsampled": "MVAE's full + unimodal + random-subset ELBOs (default masking mvae)",
              "multisource": "MSNVI's importance-weighted objectives, --objective ind, moe, poe "
                             "or hybrid, K = 16 samples by default (the paper's fusion: "
                             "--aggregator poe-divide)",
              "recursive": "the M2VAE's recursive objective over every subset, with --alpha "
                           "and --beta-norm (a Gaussian aggregator; the paper's: "
                           "subset-encoders)",
              "jmvae": "JMVAE-kl, the joint ELBO with --alpha KL pulls of the subsets one "
                       "modality smaller (a Gaussian aggregator)"}

# --- argument types -------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def modality_list(text: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one modality, e.g. m0,m2")
    return names


# --- parsers ---------------------------------------------------------------------------------

def one_line(message: str) -> str:
    """``message`` on one line (multi-line messages, e.g. of ``load_state_dict``, joined)."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``, exit status 2
    (no usage dump: ``--help`` has it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


DATASET_DEPENDENT = ("latent_dim", "epochs", "batch_size", "lr", "aggregator",
                     "aggregator_width", "hidden", "channels", "is_samples", "eval_points")


def add_data_root_arg(g) -> None:
    g.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="cache directory of the built-in image datasets, built there on first "
                        "use; not recorded in the run (default: $PYRO_MMVAE_DATA or "
                        "~/.cache/pyro_mmvae)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=list(DATASETS), default=DEFAULT_DATASET,
                   help="; ".join(f"{k}: {v.help}" for k, v in DATASETS.items())
                   + " (default: %(default)s)")
    add_data_root_arg(g)
    g.add_argument("--image-size", type=positive_int, default=16,
                   help="image side of PolyDigits / DigitsSVHNText (default: %(default)s)")
    g.add_argument("--train-points", type=positive_int, default=None, metavar="N",
                   help="train on the first N training points only (polydigits, "
                        "digits-svhn-text; for linear-gaussian set --num-points and "
                        "--test-fraction; default: all)")
    g.add_argument("--num-modalities", type=positive_int, default=5,
                   help="number of modalities M (linear-gaussian; default: %(default)s)")
    g.add_argument("--num-points", type=positive_int, default=5000,
                   help="data points simulated, before the train/test split "
                        "(linear-gaussian; default: %(default)s)")
    g.add_argument("--test-fraction", type=fraction, default=0.2,
                   help="fraction held out as the test split (linear-gaussian; default: "
                        "%(default)s)")
    g.add_argument("--data-seed", type=int, default=0,
                   help="seed of the data simulation / dataset build (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and guide (defaults depend on --dataset)")
    g.add_argument("--latent-dim", type=positive_int, default=None,
                   help="latent dimension D (polydigits, digits-svhn-text: 16; "
                        "linear-gaussian: 5, also the simulation's)")
    g.add_argument("--aggregator", choices=AGGREGATORS, default=None,
                   help="guide aggregator: poe (product of experts with a prior expert), "
                        "poe-divide (MSNVI's product of beliefs with the prior divided out), moe "
                        "(mixture of unimodal experts), mopoe (mixture of products over all "
                        "subsets), sumpooling (DeepSets), selfattention (masked self-attention), "
                        "and their mixture versions, subset-encoders (M2VAE: one network per "
                        "non-empty subset, 2^M - 1, on the modality encoders' features), joint "
                        "(one network on all modalities, the unobserved zeroed: JMVAE-Zero with "
                        "--bound mixture --masking zero_augmented) (images: sumpooling; "
                        "linear-gaussian: poe)")
    g.add_argument("--aggregator-width", type=positive_int, default=None, metavar="W",
                   help="hidden and pooling width of the learnable aggregators, and the "
                        "encoders' feature size for them on images/text (64; linear: 128)")
    g.add_argument("--prior", choices=PRIORS, default="normal",
                   help="normal: N(0, I); gmm: learned Gaussian mixture with the optimal "
                        "cluster factor (default: %(default)s)")
    g.add_argument("--prior-components", type=positive_int, default=None, metavar="K",
                   help="--prior gmm only: clusters of the Gaussian-mixture prior (default: "
                        "10)")
    g.add_argument("--mixture-components", type=positive_int, default=None, metavar="K",
                   help="sumpooling-mixture and selfattention-mixture only: components of the "
                        "mixture aggregator's q(z | x_S) (default: 10)")
    g.add_argument("--likelihood", choices=("laplace", "gaussian", "bernoulli"),
                   default="laplace",
                   help="image likelihood; laplace and gaussian with MoPoE's fixed scale 0.75 "
                        "(default: %(default)s)")
    g.add_argument("--hidden", type=positive_int, nargs="+", default=None, metavar="H",
                   help="hidden layer sizes of vector-modality encoders (linear: 128 128)")
    g.add_argument("--channels", type=positive_int, nargs="+", default=None, metavar="C",
                   help="channels of the image encoder's stride-2 convolutions, mirrored in "
                        "the decoder (default: 32 64)")
    g.add_argument("--expert-scale", choices=SCALES, default="softplus",
                   help="how the Gaussian heads' raw outputs r give the standard deviation, "
                        "in every aggregator: softplus, sigma = min_scale + log(1 + e^r); "
                        "logvar, r = log sigma^2, sigma = min_scale + e^(r/2) (MVAE's and "
                        "MultiVae's encoders) (default: %(default)s)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of parameter initialisation, shuffling and sampling "
                        "(default: %(default)s)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to run (default: %(default)s)")
    g.add_argument("--num-threads", type=int, default=1, metavar="N",
                   help="torch CPU threads; 0 keeps torch's default. One thread is fastest for "
                        "the small default networks on a busy machine (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_eval_args(g) -> None:
    g.add_argument("--is-samples", type=positive_int, default=None,
                   help="importance samples of the test log-likelihoods (images: 16; "
                        "linear: 100)")
    g.add_argument("--eval-points", type=positive_int, default=None,
                   help="test points used for the evaluation (images: 500)")
    g.add_argument("--classifier-epochs", type=positive_int, default=5,
                   help="epochs of the per-modality classifiers trained for coherence "
                        "(default: %(default)s)")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a multimodal VAE and write a run directory",
        description="Train a multimodal VAE with SVI, then evaluate it, and write a run "
                    "directory with config.json, checkpoint.pt (after every epoch), "
                    "metrics.json, loss_curve.png and the evaluation (evaluation.json, "
                    "classifiers.pt, coherence.png, rate_distortion.png, generation_*.png, "
                    "samples.png). Without options: a SumPooling guide under the masked bound "
                    "on PolyDigits (a few minutes on 2 CPU cores).")
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("objective")
    g.add_argument("--bound", choices=sorted(BOUNDS), default="masked",
                   help="; ".join(f"{k}: {v}" for k, v in BOUND_HELP.items())
                   + " (default: %(default)s)")
    g.add_argument("--masking", choices=sorted(MASKINGS), default=None,
                   help="masking distribution rho over modality subsets (default: the bound's "
                        "own default; multisource, recursive and jmvae score fixed subsets and "
                        "take none)")
    g.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="multisource only: ind (independent beliefs, eq. 1), moe (mixture of "
                        "beliefs), poe (their product, eqs. 3-4) or hybrid (ind and poe, "
                        "halves; eq. 5) (default: ind)")
    g.add_argument("--alpha", type=non_negative_float, default=None,
                   help="recursive and jmvae only: weight of the KL terms pulling "
                        "q(z | x_S minus one modality) towards q(z | x_S) (default: 0.01, the "
                        "M2VAE paper's)")
    g.add_argument("--beta-norm", type=positive_float, default=None,
                   help="recursive and jmvae only: a beta per subset, beta_S = BETA_NORM * D_S "
                        "/ D_z, D_S the input size of the subset's modalities (the M2VAE's "
                        "normalised beta; instead of --beta; default: off, --beta everywhere)")
    g.add_argument("--mixture-form", choices=("stratified", "average", "sampled"),
                   default=None,
                   help="mixture bound only: stratified (one draw per mixture component, "
                        "MMVAE/MoPoE), average or sampled (one draw from the mixture; cheap for "
                        "MoPoE, whose 2^M - 1 components all get decoded otherwise) "
                        "(default: stratified)")
    g.add_argument("--beta", type=positive_float, default=1.0,
                   help="weight of the KL (rate) terms (default: %(default)s)")
    g.add_argument("--beta-warmup", type=non_negative_int, default=0, metavar="STEPS",
                   help="KL warm-up: beta rises linearly from 0 at the first optimisation "
                        "step to --beta at step STEPS and stays there (linear_warmup; steps "
                        "are mini-batches, train points // batch size per epoch; a resumed "
                        "run continues the schedule); 0 keeps beta constant "
                        "(default: %(default)s)")
    g.add_argument("--likelihood-weights", choices=("none", "dimension"), default="none",
                   help="per-modality likelihood weights: dimension = MoPoE's D_max / D_m "
                        "(default: %(default)s)")
    g.add_argument("--num-particles", type=positive_int, default=None,
                   help="samples per data point in the bound (default: the bound's, 16 for "
                        "multisource as the MSNVI paper's K, else 1)")
    g.add_argument("--iwae", action="store_true",
                   help="importance-weighted version of the bound (DReG gradients); "
                        "use with --num-particles > 1")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (polydigits, digits-svhn-text: 30; linear: 50); with "
                        "--resume, the total to reach")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="mini-batch size; the last incomplete batch is dropped (128)")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (images: 1e-3; linear: 1e-2)")
    g.add_argument("--clip-norm", type=positive_float, default=None,
                   help="clip gradient norms at this value (ClippedAdam; default: no clipping)")
    g = p.add_argument_group("output and evaluation")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="run directory (default: runs/<dataset>-<aggregator>-<bound>-<timestamp>); "
                        "one that already holds a run is an error unless --overwrite")
    g.add_argument("--overwrite", action="store_true",
                   help="train afresh in an --output-dir that holds a run: the files a run "
                        "writes there (checkpoint, configuration, metrics, evaluation, "
                        "pictures) are deleted first, other files are left alone")
    g.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its checkpoint with its saved configuration "
                        "(only --epochs, --device, --num-threads, --no-progress, "
                        "--no-evaluate, --data-root and the evaluation options apply; the "
                        "checkpoint must pass its checksums and match config.json)")
    g.add_argument("--no-evaluate", action="store_true",
                   help="skip the evaluation after training (run `pyro-mmvae evaluate` later)")
    add_eval_args(g)
    add_runtime_args(p)
    p.set_defaults(func=functools.partial(run_train, parser=p))
    return p


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="compute every metric of a trained run",
        description="Evaluate a trained run: test log-likelihoods (joint and leave-one-out), "
                    "rates and distortions, conditional coherence from every subset of inputs, "
                    "joint coherence, latent linear classification (labelled datasets; "
                    "per-modality classifiers are trained once and kept in the run as "
                    "classifiers.pt), and pictures. Writes evaluation.json into RUN_DIR.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    add_eval_args(p)
    add_data_root_arg(p)
    add_runtime_args(p)
    p.set_defaults(func=functools.partial(run_evaluate, parser=p))
    return p


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="write a cross-generation grid of a trained run",
        description="Encode test points from the GIVEN modalities and generate every modality "
                    "from q(z | x_GIVEN): a PNG with the inputs on top and one row per "
                    "generated modality (reconstructions of the given ones).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--given", type=modality_list, required=True, metavar="M1,M2",
                   help="comma-separated input modalities, e.g. m0,m2")
    p.add_argument("--num-columns", type=positive_int, default=8,
                   help="test points shown (default: %(default)s)")
    p.add_argument("--sample", action="store_true",
                   help="draw from the likelihood instead of showing its mean")
    p.add_argument("--output", type=Path, default=None,
                   help="PNG path (default: RUN_DIR/generate_<given>.png)")
    add_data_root_arg(p)
    add_runtime_args(p)
    p.set_defaults(func=functools.partial(run_generate, parser=p))
    return p


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = Parser(
        prog="pyro-mmvae", description="Multimodal variational autoencoders for Pyro.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_generate_parser(subparsers)
    return parser


def apply_dataset_defaults(args) -> argparse.Namespace:
    """Fill the options left at None with the dataset's defaults."""
    defaults = DATASETS[args.dataset].defaults
    for key in DATASET_DEPENDENT:
        if getattr(args, key, None) is None:
            setattr(args, key, defaults[key])
    return args


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_dataset_options(args, parser: argparse.ArgumentParser) -> None:
    """A parser error naming the first option of :data:`~pyro_mmvae.runs.DATASET_OPTIONS` set
    to other than its default that does not apply to ``--dataset`` (e.g. ``--train-points``
    with the linear-Gaussian simulation, whose size ``--num-points`` sets). Call it before
    :func:`apply_dataset_defaults`."""
    spec = DATASETS[args.dataset]
    for key in DATASET_OPTIONS:
        if key in spec.options or getattr(args, key, None) == parser.get_default(key):
            continue
        takers = " / ".join(name for name, other in DATASETS.items() if key in other.options)
        hint = ("; its size is set by --num-points and --test-fraction"
                if key == "train_points" else "")
        parser.error(f"{_flag(key)} does not apply to --dataset {args.dataset} (it is an option "
                     f"of --dataset {takers}){hint}")


# --- commands ----------------------------------------------------------------------------------

# the files whose presence makes a directory a run
RUN_MARKERS = (CONFIG, CHECKPOINT, METRICS)
# every file pyro-mmvae train and evaluate write into a run directory (what --overwrite deletes)
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, LOSS_CURVE, EVALUATION, CLASSIFIERS, "coherence.png",
             "rate_distortion.png", "samples.png")
RUN_FILE_PATTERNS = ("generation_*.png", "generate_*.png")


def run_files(run_dir: Path) -> list:
    """The files of :data:`RUN_FILES` and :data:`RUN_FILE_PATTERNS` in ``run_dir``."""
    found = [run_dir / name for name in RUN_FILES]
    found += [p for pattern in RUN_FILE_PATTERNS for p in sorted(run_dir.glob(pattern))]
    return [p for p in found if p.is_file() or p.is_symlink()]


def check_output_dir(args, parser: argparse.ArgumentParser) -> None:
    """A parser error when ``--output-dir`` is a file, or already holds a run and neither
    ``--overwrite`` nor ``--resume`` was given."""
    out = args.output_dir
    if out is None:
        return
    if out.exists() and not out.is_dir():
        parser.error(f"--output-dir {out} is a file, not a directory")
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    if held and not args.overwrite:
        parser.error(f"--output-dir {out} already holds a run ({', '.join(held)}); continue it "
                     f"with --resume {out}, or train afresh there with --overwrite")


def open_run_dir(run_dir: Path, parser: argparse.ArgumentParser, option: str,
                 overwrite: bool = False) -> None:
    """Create ``run_dir``; with ``overwrite`` delete the files an earlier run wrote there
    (:func:`run_files`); remove the temporary files of writes that were killed
    (:func:`~pyro_mmvae.io.remove_stale_temp_files`)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a component is a file, no permission, ...
        parser.error(f"{option} {run_dir}: cannot create the run directory "
                     f"({err.strerror or err})")
    if overwrite:
        for path in run_files(run_dir):
            path.unlink()
    removed = remove_stale_temp_files(run_dir)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) of an interrupted earlier write "
              f"from {run_dir}: {', '.join(p.name for p in removed)}", file=sys.stderr)


def default_run_dir(args) -> Path:
    """``runs/<dataset>-<aggregator>-<bound>-<timestamp>`` (a suffix avoids collisions)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{args.dataset}-{args.aggregator}-{args.bound}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


# keys of the namespace that are not part of a run's configuration: how this command was
# invoked, and paths (the run directory is where config.json lies; the cache directory belongs
# to the machine)
NOT_RECORDED = ("func", "resume", "overwrite", "output_dir", "data_root")


def _config(args, data) -> dict:
    """``config.json``: the options that apply to the dataset (not :data:`NOT_RECORDED`), and
    what the data gave (modality sizes, test points, dataset info)."""
    options = DATASETS[args.dataset].options
    skip = set(NOT_RECORDED) | {k for k in DATASET_OPTIONS if k not in options}
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k not in skip}
    cfg["modality_dims"] = data.modality_dims
    cfg["num_test"] = data.num_test
    cfg["dataset_info"] = data.info
    cfg["pyro_mmvae_version"] = __version__
    return cfg


class _Threads:
    """Set torch's thread count for a command and restore it afterwards."""

    def __init__(self, n: int):
        self.n, self.saved = n, torch.get_num_threads()

    def __enter__(self):
        if self.n > 0:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def _device(args, parser):
    try:
        return resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))


# what a resume may set anew (everything else comes from the run's config.json)
RESUME_OPTIONS = ("epochs", "device", "num_threads", "no_progress", "no_evaluate", "data_root",
                  "is_samples", "eval_points", "classifier_epochs")


def resumed_args(args, parser) -> argparse.Namespace:
    """The saved configuration of ``args.resume`` with the options that apply to a resume
    (:data:`RESUME_OPTIONS`; any other option given is an error), after checking that the
    checkpoint passes its checksums and was written by that configuration."""
    for key, value in vars(args).items():
        if key not in RESUME_OPTIONS + ("resume", "func", "command") \
                and value != parser.get_default(key):
            parser.error(f"{_flag(key)} does not apply with --resume, which continues the run "
                         f"with its saved configuration (only "
                         f"{', '.join(_flag(k) for k in RESUME_OPTIONS)} apply)")
    run_dir = Path(args.resume)
    try:
        config = read_config(run_dir)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not (run_dir / CHECKPOINT).is_file():
        parser.error(f"--resume {run_dir}: no checkpoint.pt there to continue from")
    try:
        load_checkpoint(run_dir / CHECKPOINT, config=config, ignore=RUNTIME_KEYS)
    except CheckpointError as err:
        parser.error(str(err))
    saved = config_namespace(config)
    for key in ("device", "num_threads", "no_progress", "no_evaluate"):
        setattr(saved, key, getattr(args, key))
    for key in ("epochs", "data_root", "is_samples", "eval_points", "classifier_epochs"):
        if getattr(args, key) != parser.get_default(key):
            setattr(saved, key, getattr(args, key))
    if not hasattr(saved, "data_root"):
        saved.data_root = None
    saved.output_dir = run_dir
    saved.resume = run_dir
    saved.overwrite = False
    return saved


def apply_bound_defaults(args) -> argparse.Namespace:
    """Check the bound-specific options against ``--bound`` and ``--aggregator``, and the
    component counts against ``--prior`` and ``--aggregator``, and fill those left at None with
    their defaults (:func:`~pyro_mmvae.runs.bound_options`,
    :func:`~pyro_mmvae.runs.component_options`), so that ``config.json`` records the values
    used. ``ValueError`` naming the option otherwise."""
    for key, value in {**bound_options(args), **component_options(args)}.items():
        setattr(args, key, value)
    return args


def run_train(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae train``: load data, build model/guide/bound, fit, evaluate, summarise."""
    if args.resume:
        args = resumed_args(args, parser)
    else:
        check_dataset_options(args, parser)
        check_output_dir(args, parser)
        args = apply_dataset_defaults(args)
    try:
        apply_bound_defaults(args)
    except ValueError as err:
        parser.error(str(err))
    device = _device(args, parser)
    if args.iwae and args.num_particles == 1:
        print("note: --iwae with --num-particles 1 is the ordinary bound", file=sys.stderr)
    with _Threads(args.num_threads):
        return _train(args, parser, device)


def _train(args, parser, device) -> int:
    """The body of ``train`` (threads already set): returns 0, or 1 if training diverged."""
    spec = DATASETS[args.dataset]
    try:
        data = spec.load(args)
    except ValueError as err:  # e.g. an unreadable dataset cache
        parser.error(str(err))
    if args.batch_size > data.num_train:
        parser.error(f"--batch-size {args.batch_size} exceeds the {data.num_train} training "
                     "points; lower --batch-size or raise --num-points")
    run_dir = args.output_dir or default_run_dir(args)
    args.output_dir = run_dir
    pyro.set_rng_seed(args.seed)  # parameter initialisation (fit re-seeds for training)
    try:
        model = build_model(args, data).to(data.dtype)
        guide = build_guide(args, data).to(data.dtype)
        loss = build_loss(args, data)
    except ValueError as err:
        parser.error(str(err))

    resume = getattr(args, "resume", None)
    open_run_dir(run_dir, parser, "--resume" if resume else "--output-dir",
                 overwrite=getattr(args, "overwrite", False))
    print(f"{'resuming' if resume else 'training'} {args.aggregator} guide, {args.bound} bound "
          f"on {args.dataset} ({data.num_train} train points, {len(data.modality_dims)} "
          f"modalities) to epoch {args.epochs} on {device}; run directory: {run_dir}")
    t0 = time.perf_counter()
    try:
        history = fit(model, guide, loss, data.train, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm,
                      run_dir=run_dir, seed=args.seed, device=device,
                      progress=not args.no_progress, config=_config(args, data),
                      resume_from=Path(resume) / CHECKPOINT if resume else None)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        message = str(err)
        if err.checkpoint is not None:  # no paths in run files
            message = message.replace(str(err.checkpoint), Path(err.checkpoint).name)
        write_json(run_dir / METRICS, {"status": "diverged", "error": message,
                                       "train_loss": err.history["loss"],
                                       "history": err.history})
        return 1
    except CheckpointError as err:
        parser.error(str(err))
    train_time = time.perf_counter() - t0
    metrics = {"status": "completed", "epochs": len(history["loss"]),
               "train_loss": history["loss"], "final_train_loss": history["loss"][-1],
               "train_time_s": train_time}
    if not args.no_evaluate:
        evaluation = evaluate_run(args, data, model, guide, run_dir, device,
                                  progress=not args.no_progress)
        metrics.update(headline(evaluation))
        if args.dataset == "linear-gaussian":
            metrics.update(evaluation)
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["history"] = history
    write_json(run_dir / METRICS, metrics)
    print(summary(metrics, run_dir, evaluated=not args.no_evaluate))
    return 0


def run_evaluate(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae evaluate RUN_DIR``."""
    device = _device(args, parser)
    with _Threads(args.num_threads):
        try:
            saved, data, model, guide, _ = load_run(args.run_dir, device,
                                                    data_root=args.data_root)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        for key in ("is_samples", "eval_points", "classifier_epochs"):
            if getattr(args, key) is not None:
                setattr(saved, key, getattr(args, key))
        metrics = evaluate_run(saved, data, model, guide, args.run_dir, device,
                               progress=not args.no_progress)
    print(json.dumps(headline(metrics) | ({"modalities": metrics["modalities"]}
                                          if "modalities" in metrics else {}), indent=1))
    print(f"wrote {Path(args.run_dir) / EVALUATION}")
    return 0


def run_generate(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae generate RUN_DIR --given m0,m2``."""
    device = _device(args, parser)
    with _Threads(args.num_threads):
        try:
            saved, data, model, guide, _ = load_run(args.run_dir, device,
                                                    data_root=args.data_root)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        unknown = [m for m in args.given if m not in data.test]
        if unknown:
            parser.error(f"--given names unknown modality '{unknown[0]}': the run's modalities "
                         f"are {','.join(data.test)}")
        out = args.output or Path(args.run_dir) / f"generate_{'+'.join(args.given)}.png"
        if out.is_dir():
            parser.error(f"--output {out} is a directory; name the PNG file to write")
        blocking = next((d for d in out.parents if d.exists() and not d.is_dir()), None)
        if blocking is not None:
            parser.error(f"--output {out}: {blocking} is a file, not a directory")
        test = {m: x[:args.num_columns].to(device) for m, x in data.test.items()}
        pyro.set_rng_seed(args.seed)
        save_generation_grid(out, model, guide, test, args.given, args.num_columns,
                             use_mean=not args.sample)
    print(f"wrote {out}")
    return 0


def summary(metrics: Mapping, run_dir: Path, evaluated: bool = True) -> str:
    """A few lines for the terminal (log-likelihoods are means per data point, in nats);
    ``evaluated``: whether the evaluation ran (and wrote ``evaluation.json``)."""
    lines = [f"done in {metrics['wall_time_s']:.1f} s ({metrics['epochs']} epochs); "
             f"final train loss {metrics['final_train_loss']:.4f} per data point"]
    if "train_exact_log_likelihood" in metrics:
        lines.append("log-likelihood per data point (nats):")
        rows = [("exact, train", "train_exact_log_likelihood"),
                ("exact, test", "test_exact_log_likelihood"),
                ("PCA maximum likelihood, train", "pca_mle_train_log_likelihood"),
                ("PCA maximum likelihood, test", "pca_mle_test_log_likelihood"),
                (f"importance sampled (K={metrics.get('is_num_samples')}), test",
                 "test_is_log_likelihood")]
        lines += [f"  {label:<38} {metrics[key]:.4f}" for label, key in rows if key in metrics]
        lines.append(f"relative LLH gap to the PCA MLE (train): {metrics['relative_llh_gap']:.3e}")
    else:
        labels = {"test_log_likelihood": "test log-likelihood per point (IS)",
                  "leave_one_out_coherence": "leave-one-out coherence",
                  "cross_coherence_from_one_input": "cross coherence from one input",
                  "joint_coherence": "joint (unconditional) coherence",
                  "latent_accuracy_one_input": "latent linear accuracy, one input",
                  "latent_accuracy_all_inputs": "latent linear accuracy, all inputs"}
        lines += [f"  {label:<38} {metrics[key]:.4f}" for key, label in labels.items()
                  if metrics.get(key) is not None]
    if evaluated:
        lines.append(f"wrote {', '.join((CONFIG, METRICS, CHECKPOINT, LOSS_CURVE, EVALUATION))} "
                     f"(and pictures) to {run_dir}")
    else:
        lines.append(f"wrote {', '.join((CONFIG, METRICS, CHECKPOINT, LOSS_CURVE))} to {run_dir} "
                     f"(not evaluated: run `pyro-mmvae evaluate {run_dir}`)")
    return "\n".join(lines)


# errors that reach main and are the user's: a path that cannot be used (a file where a
# directory is expected, a missing file, no permission) or a checkpoint that fails its checks.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (CheckpointError, FileExistsError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return one_line(err)


@contextlib.contextmanager
def sigterm_as_exit():
    """While the command runs, ``SIGTERM`` raises ``SystemExit(143)`` in the main thread, as
    ``Ctrl-C`` raises ``KeyboardInterrupt``: a write in progress removes its temporary file and
    the previous file stays intact. The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``pyro-mmvae``; returns the exit status (0 on success, 1 when training
    diverged). A user error exits with status 2 and a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with sigterm_as_exit():
        try:
            return args.func(args)
        except USER_ERRORS as err:
            parser.exit(2, f"{parser.prog} {args.command}: error: {_describe(err)}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
