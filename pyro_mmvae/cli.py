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
is an error naming it, before any data is loaded.

The options are the fields of :class:`~pyro_mmvae.config.RunConfig` (the parser is built from
them: choices, checks, defaults and help; :func:`add_config_options`), parsed into one typed,
validated configuration; datasets, models, guides and bounds are built from it by
:mod:`pyro_mmvae.runs`, which is how a saved run is restored.

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
import functools
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.config import (FIELDS, PER_COMMAND, RESUME_OPTIONS, TUPLE_FIELDS, RunConfig,
                               choices, default_help, field_type)
from pyro_mmvae.diagnostics.plots import save_generation_grid
from pyro_mmvae.io import sigterm_as_exit
from pyro_mmvae.options import GROUPS, POSITIVE_INT
from pyro_mmvae.report import EVALUATION, evaluate_run, headline, summary
from pyro_mmvae.runs import (RUNTIME_KEYS, build_guide, build_loss, build_model,
                             check_output_dir, check_same_data, default_run_dir, load_data,
                             load_run, open_run_dir, read_config, read_run_config, saved_config)
from pyro_mmvae.train.distributed import initialize
from pyro_mmvae.train import (CHECKPOINT, METRICS, CheckpointError, TrainingDiverged, fit,
                              load_checkpoint, resolve_device, write_json)

# --- parsers ---------------------------------------------------------------------------------


def modality_list(text: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one modality, e.g. m0,m2")
    return names


def one_line(message: str) -> str:
    """``message`` on one line (multi-line messages, e.g. of ``load_state_dict``, joined)."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``, exit status 2
    (no usage dump: ``--help`` has it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def add_option(group, name: str, suppress: bool = False) -> None:
    """The command-line option of the :class:`~pyro_mmvae.config.RunConfig` field ``name``:
    its flag, choices (the ``Literal``), check (``type=``), default and help; with
    ``suppress`` an option not given is absent from the namespace (so that what was given is
    known)."""
    f = RunConfig.__dataclass_fields__[name]
    meta = f.metadata
    text = " ".join(t for t in (meta["help"], default_help(name)) if t).replace("%", "%%")
    kwargs = dict(help=text, default=argparse.SUPPRESS if suppress else f.default)
    if field_type(name) is bool:
        kwargs["action"] = "store_true"
    elif choices(name):
        kwargs["choices"] = list(choices(name))
    else:
        kwargs["type"] = meta["check"].parse
        if name in TUPLE_FIELDS:
            kwargs["nargs"] = "+"
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    group.add_argument(RunConfig.flag(name), **kwargs)


def add_config_options(parser: argparse.ArgumentParser, names: Iterable[str] = FIELDS,
                       suppress: bool = True, groups: Optional[dict] = None) -> dict:
    """The options of the fields ``names`` in their argument groups (``groups``: those made
    already, by title; the others are made here in :data:`~pyro_mmvae.options.GROUPS` order);
    returns the groups by title."""
    groups = dict(groups or {})
    names = list(names)
    for title in GROUPS:
        if title not in groups and any(RunConfig.__dataclass_fields__[n].metadata["group"]
                                       == title for n in names):
            groups[title] = parser.add_argument_group(title)
    for name in names:
        add_option(groups[RunConfig.__dataclass_fields__[name].metadata["group"]], name,
                   suppress)
    return groups


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a multimodal VAE and write a run directory",
        description="Train a multimodal VAE with SVI, then evaluate it, and write a run "
                    "directory with config.json, checkpoint.pt (after every epoch), "
                    "metrics.json, loss_curve.png and the evaluation (evaluation.json, "
                    "classifiers.pt, coherence.png, rate_distortion.png, generation_*.png, "
                    "samples.png). Without options: a SumPooling guide under the masked bound "
                    "on PolyDigits (a few minutes on 2 CPU cores).")
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    out = groups["output and evaluation"]
    out.add_argument("--output-dir", type=Path, default=argparse.SUPPRESS,
                     help="run directory (default: "
                          "runs/<dataset>-<aggregator>-<bound>-<timestamp>); one that already "
                          "holds a run is an error unless --overwrite")
    out.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                     help="train afresh in an --output-dir that holds a run: the files a run "
                          "writes there (checkpoint, configuration, metrics, evaluation, "
                          "pictures) are deleted first, other files are left alone")
    out.add_argument("--resume", type=Path, default=argparse.SUPPRESS, metavar="RUN_DIR",
                     help="continue RUN_DIR from its checkpoint with its saved configuration "
                          f"(only {', '.join(map(RunConfig.flag, RESUME_OPTIONS))} apply; the "
                          "checkpoint must pass its checksums and match config.json)")
    add_config_options(p, FIELDS, suppress=True, groups=groups)
    p.set_defaults(func=functools.partial(run_train, parser=p))
    return p


RUNTIME = ("seed", "device", "num_threads", "no_progress")
EVAL_OPTIONS = ("is_samples", "eval_points", "classifier_epochs")


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="compute every metric of a trained run",
        description="Evaluate a trained run: test log-likelihoods (joint and leave-one-out), "
                    "rates and distortions, conditional coherence from every subset of inputs, "
                    "joint coherence, latent linear classification (labelled datasets; "
                    "per-modality classifiers are trained once and kept in the run as "
                    "classifiers.pt), and pictures. Writes evaluation.json into RUN_DIR; the "
                    "evaluation options default to the run's.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    for name in EVAL_OPTIONS + ("data_root",):
        add_option(p, name, suppress=True)
    for name in RUNTIME:
        add_option(p, name)
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
    p.add_argument("--num-columns", type=POSITIVE_INT.parse, default=8,
                   help="test points shown (default: %(default)s)")
    p.add_argument("--sample", action="store_true",
                   help="draw from the likelihood instead of showing its mean")
    p.add_argument("--output", type=Path, default=None,
                   help="PNG path (default: RUN_DIR/generate_<given>.png)")
    add_option(p, "data_root", suppress=True)
    for name in RUNTIME:
        add_option(p, name)
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


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The (unresolved) configuration of the options given in a parsed ``train`` namespace
    (``--data PATH`` without ``--dataset`` means ``--dataset file``)."""
    values = {k: v for k, v in vars(args).items() if k in FIELDS}
    if values.get("data") is not None and "dataset" not in values:
        values["dataset"] = "file"
    return RunConfig.from_dict(values)


def config_from_argv(argv: Sequence[str]) -> RunConfig:
    """The (unresolved) configuration of ``pyro-mmvae train`` options ``argv`` (without
    ``train``); a parser error (``SystemExit``) for a bad option."""
    return config_from_args(build_parser().parse_args(["train", *argv]))


# --- commands ----------------------------------------------------------------------------------

class _Threads:
    """Set torch's thread count for a command and restore it afterwards."""

    def __init__(self, n: int):
        self.n, self.saved = n, torch.get_num_threads()

    def __enter__(self):
        if self.n > 0:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def _device(device: str, parser):
    try:
        return resolve_device(device)
    except ValueError as err:
        parser.error(str(err))


def _resolved(config: RunConfig, parser) -> RunConfig:
    try:
        return config.resolve()
    except ValueError as err:
        parser.error(str(err))


def resumed_config(run_dir: Path, given: Mapping, parser) -> RunConfig:
    """The saved configuration of ``run_dir`` with the options given that a resume may set
    anew (:data:`~pyro_mmvae.config.RESUME_OPTIONS`; how this command runs, such as
    ``--device``, from this command line), after checking that the checkpoint passes its
    checksums and was written by that configuration."""
    try:
        saved = read_config(run_dir)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not (run_dir / CHECKPOINT).is_file():
        parser.error(f"--resume {run_dir}: no checkpoint.pt there to continue from")
    try:
        load_checkpoint(run_dir / CHECKPOINT, config=saved, ignore=RUNTIME_KEYS)
        config = read_run_config(run_dir, saved).config
    except (CheckpointError, ValueError) as err:
        parser.error(str(err))
    command = {k: RunConfig.__dataclass_fields__[k].default for k in PER_COMMAND}
    return _resolved(replace(config, **{**command, **given}), parser)


def run_train(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae train``: load data, build model/guide/bound, fit, evaluate, summarise."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    resume, overwrite = given.pop("resume", None), given.pop("overwrite", False)
    output_dir = given.pop("output_dir", None)
    if resume is not None:
        for key in vars(args):
            if key in ("output_dir", "overwrite") or key in given and key not in RESUME_OPTIONS:
                parser.error(f"{RunConfig.flag(key)} does not apply with --resume, which "
                             "continues the run with its saved configuration (only "
                             f"{', '.join(map(RunConfig.flag, RESUME_OPTIONS))} apply)")
        config, output_dir = resumed_config(Path(resume), given, parser), Path(resume)
    else:
        if given.get("data") is not None and "dataset" not in given:
            given["dataset"] = "file"  # --data PATH means --dataset file
        config = _resolved(RunConfig.from_dict(given), parser)
        try:
            check_output_dir(output_dir, overwrite)
        except ValueError as err:
            parser.error(str(err))
    device = _device(config.device, parser)
    try:  # under torchrun: join its process group, one process per GPU with --device cuda
        place = initialize(str(device))
    except ValueError as err:
        parser.error(str(err))
    if place is not None and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    main_process = place is None or place.is_main
    if config.iwae and config.num_particles == 1 and main_process:
        print("note: --iwae with --num-particles 1 is the ordinary bound", file=sys.stderr)
    try:
        with _Threads(config.num_threads):
            status = _train(config, parser, device, output_dir, resume is not None, overwrite,
                            place)
        if place is not None:
            torch.distributed.barrier()  # rank 0 has evaluated: every process leaves together
        return status
    finally:
        if place is not None:
            torch.distributed.destroy_process_group()


def _train(config: RunConfig, parser, device, run_dir, resume: bool, overwrite: bool,
           place=None) -> int:
    """The body of ``train`` (threads already set): returns 0, or 1 if training diverged.
    Data-parallel (``place``, :mod:`pyro_mmvae.train.distributed`): every process trains its
    shards and estimates its shares of the evaluation; rank 0 alone prepares and writes the
    run directory, computes the rest of the evaluation and reports."""
    main_process = place is None or place.is_main
    if place is not None and config.batch_size < place.world_size:
        parser.error(f"--batch-size {config.batch_size} is smaller than the "
                     f"{place.world_size} processes: each needs a data point of every batch")
    try:
        data = load_data(config)
        if resume:
            check_same_data(read_config(run_dir), data, config)
    except (ValueError, FileNotFoundError) as err:  # an unreadable cache or --data file
        parser.error(str(err))
    num_train = data.num_train - (int(round(data.num_train * config.val_fraction))
                                  if config.val_fraction else 0)
    if config.batch_size > num_train:
        parser.error(f"--batch-size {config.batch_size} exceeds the {num_train} training "
                     "points (after --val-fraction); lower --batch-size or use more data")
    run_dir = run_dir or default_run_dir(config)
    if place is not None:  # rank 0's choice (a default name holds the time of day)
        chosen = [str(run_dir)]
        torch.distributed.broadcast_object_list(chosen, src=0)
        run_dir = Path(chosen[0])
    pyro.set_rng_seed(config.seed)  # parameter initialisation (fit re-seeds for training)
    try:
        model = build_model(config, data).to(data.dtype)
        guide = build_guide(config, data).to(data.dtype)
        loss = build_loss(config, data)
    except ValueError as err:
        parser.error(str(err))

    if main_process:
        try:
            open_run_dir(run_dir, "--resume" if resume else "--output-dir", overwrite)
        except ValueError as err:
            parser.error(str(err))
        processes = "" if place is None else f" x {place.world_size} processes"
        print(f"{'resuming' if resume else 'training'} {config.aggregator} guide, "
              f"{config.bound} bound on {config.dataset} ({data.num_train} train points, "
              f"{len(data.modality_dims)} modalities) to epoch {config.epochs} on "
              f"{device}{processes}; run directory: {run_dir}")
    if place is not None:
        torch.distributed.barrier()  # the run directory is ready (and emptied on --overwrite)
    t0 = time.perf_counter()
    try:
        history = fit(model, guide, loss, data.train, mask=data.train_mask,
                      val_fraction=config.val_fraction, early_stopping=config.early_stopping,
                      epochs=config.epochs,
                      batch_size=config.batch_size, lr=config.lr, clip_norm=config.clip_norm,
                      run_dir=run_dir, seed=config.seed, device=device,
                      progress=not config.no_progress, config=saved_config(config, data),
                      resume_from=run_dir / CHECKPOINT if resume else None,
                      distributed=place if place is not None else False)
    except TrainingDiverged as err:
        if not main_process:
            return 1
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
    if not main_process:  # its shares of the evaluation, then done
        if not config.no_evaluate:
            evaluate_run(config, data, model, guide, run_dir, device, place=place)
        return 0
    metrics = {"status": "completed", "epochs": len(history["loss"]),
               "train_loss": history["loss"], "final_train_loss": history["loss"][-1],
               "train_time_s": train_time}
    if not config.no_evaluate:
        evaluation = evaluate_run(config, data, model, guide, run_dir, device,
                                  progress=not config.no_progress,
                                  place=place)
        metrics.update(headline(evaluation))
        if config.dataset == "linear-gaussian":
            metrics.update(evaluation)
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["history"] = history
    write_json(run_dir / METRICS, metrics)
    print(summary(metrics, run_dir, evaluated=not config.no_evaluate))
    return 0


def _restored(args, parser):
    """``(config, data, model, guide)`` of ``args.run_dir`` for ``evaluate`` / ``generate``,
    with the evaluation options given."""
    device = _device(args.device, parser)
    try:
        config, data, model, guide, _ = load_run(args.run_dir, device,
                                                 data_root=vars(args).get("data_root"))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    given = {k: v for k, v in vars(args).items() if k in EVAL_OPTIONS}
    return _resolved(replace(config, **given), parser), data, model, guide, device


def run_evaluate(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae evaluate RUN_DIR``."""
    with _Threads(args.num_threads):
        config, data, model, guide, device = _restored(args, parser)
        metrics = evaluate_run(config, data, model, guide, args.run_dir, device,
                               progress=not args.no_progress)
    print(json.dumps(headline(metrics) | ({"modalities": metrics["modalities"]}
                                          if "modalities" in metrics else {}), indent=1))
    print(f"wrote {Path(args.run_dir) / EVALUATION}")
    return 0


def run_generate(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae generate RUN_DIR --given m0,m2``."""
    with _Threads(args.num_threads):
        config, data, model, guide, device = _restored(args, parser)
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


# errors that reach main and are the user's: a path that cannot be used (a file where a
# directory is expected, a missing file, no permission) or a checkpoint that fails its checks.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (CheckpointError, FileExistsError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return one_line(err)


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
