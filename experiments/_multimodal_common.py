r"""Shared machinery of the image/text experiments (``polydigits.py``, ``digits_svhn_text.py``).

Each configuration (aggregator, bound, seed) is one ``pyro-mmvae train`` run: its options are
an argv for :func:`pyro_mmvae.cli.build_parser` (``train --dataset D --aggregator A --bound B
--seed S --epochs E ...``), completed by :func:`pyro_mmvae.cli.apply_dataset_defaults`, and the
data, model, guide and bound come from the CLI's own builders (:mod:`pyro_mmvae.runs`), so an
experiment and the command line cannot drift apart. Options an experiment script does not know
are passed on to that argv (e.g. ``--beta 2.5``, ``--latent-dim 32``, ``--device cuda``).

Training is :func:`pyro_mmvae.train.fit` without per-epoch evaluation; afterwards every run is
evaluated with :mod:`pyro_mmvae.eval` directly, with one set of per-modality classifiers
trained once per output directory (``classifiers.pt``, settings in ``classifiers.json``) and
shared by all runs:

- importance-sampled log-likelihoods ``log p(x_S)`` of the test points for the joint and for
  the subsets a script asks for, and the conditionals ``log p(x_rest | x_S)`` as differences
  (:mod:`pyro_mmvae.eval.log_likelihood`);
- conditional coherence for every subset of inputs and every target, joint coherence;
- linear latent classification from every subset (logistic regression on the posterior means
  of ``latent_train_points`` random training points, MoPoE's protocol).

Runs go through a process pool (``--jobs``, spawn context, ``--threads`` torch threads each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyro
import torch

from pyro_mmvae import __version__  # noqa: E402
from pyro_mmvae.cli import apply_dataset_defaults, build_parser  # noqa: E402
from pyro_mmvae.eval import (classifier_accuracy, conditional_coherence,  # noqa: E402
                             joint_coherence, latent_classification, load_classifiers,
                             log_likelihood, save_classifiers, train_modality_classifiers)
from pyro_mmvae.eval.coherence import subset_name  # noqa: E402
from pyro_mmvae.report import CLASSIFIERS  # noqa: E402  (the file `pyro-mmvae evaluate` reads)
from pyro_mmvae.runs import (AGGREGATORS, DATASETS, build_guide, build_loss,  # noqa: E402
                             build_model)
from pyro_mmvae.train import TrainingDiverged, fit, resolve_device, write_json  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
    def threadpool_limits(limits=None):
        return contextlib.nullcontext()

CLASSIFIERS_INFO = "classifiers.json"

# Options the experiment sets itself for every run; they cannot be passed through.
RESERVED = ("--dataset", "--aggregator", "--bound", "--seed", "--output-dir", "--resume",
            "--no-evaluate", "--num-threads", "--no-progress")

# Experiment options passed on to pyro-mmvae train.
TRAIN_OPTIONS = {"data_root": "--data-root", "train_points": "--train-points",
                 "epochs": "--epochs"}
# Experiment options of the evaluation (not part of the training command).
EVAL_OPTIONS = ("eval_points", "is_samples", "classifier_epochs", "latent_train_points",
                "joint_samples")

# --quick: seconds-long smoke runs; set before the passed-through options, which override them.
QUICK_TRAIN_ARGS = ["--batch-size", "64", "--latent-dim", "4", "--aggregator-width", "16",
                    "--channels", "8"]


# --------------------------------------------------------------------------------------------
# Command line


def experiment_parser(doc: str, aggregators: Sequence[str], bounds: Sequence[str],
                      all_bounds: Sequence[str], default_output: Path, recipe: Sequence[str],
                      default_epochs: int, default_mixture_form: Optional[str] = None
                      ) -> argparse.ArgumentParser:
    """The options shared by the image/text experiment scripts."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Any other option is passed on to `pyro-mmvae train` for every run (see "
               "`pyro-mmvae train --help`), e.g. --beta 2.5 --latent-dim 32 --device cuda; "
               f"this script's recipe adds {' '.join(recipe) or 'nothing'} before them.")
    p.add_argument("--aggregators", nargs="+", default=list(aggregators), choices=AGGREGATORS,
                   metavar="AGG", help="guide aggregators (pyro-mmvae train --aggregator; "
                                       f"{', '.join(AGGREGATORS)})")
    p.add_argument("--bounds", nargs="+", default=list(bounds), choices=list(all_bounds),
                   help="training bounds (pyro-mmvae train --bound)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                   help="seeds of initialisation, shuffling and sampling (the data set is "
                        "fixed: --data-seed)")
    p.add_argument("--epochs", type=int, default=default_epochs,
                   help="training epochs per run")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="dataset cache directory (unset: $PYRO_MMVAE_DATA or "
                        "~/.cache/pyro_mmvae)")
    p.add_argument("--train-points", type=int, default=None, metavar="N",
                   help="train (VAEs and classifiers) on the first N training points only "
                        "(unset: all)")
    p.add_argument("--eval-points", type=int, default=None, metavar="N",
                   help="test points of the evaluation (None: pyro-mmvae's default for the "
                        "dataset, 500)")
    p.add_argument("--is-samples", type=int, default=None,
                   help="importance samples of the test log-likelihoods (None: pyro-mmvae's "
                        "default for the dataset)")
    p.add_argument("--classifier-epochs", type=int, default=None,
                   help="epochs of the per-modality coherence classifiers, trained once "
                        "(None: pyro-mmvae's default, 5)")
    p.add_argument("--latent-train-points", type=int, default=500, metavar="N",
                   help="random training points of the latent linear classifiers (MoPoE: 500)")
    p.add_argument("--joint-samples", type=int, default=1000,
                   help="unconditional samples of the joint coherence")
    p.add_argument("--mixture-form", choices=("stratified", "average", "sampled"),
                   default=default_mixture_form,
                   help="estimator of the mixture bound for mixture guides (MoE, MoPoE): "
                        "stratified = one draw per component (MoPoE eq. 6 / MMVAE eq. 33; the "
                        "library default, cost x number of components: x31 for MoPoE with 5 "
                        "modalities), average = MoPoE's code objective (eq. 12), sampled = one "
                        "draw from the mixture (seed 004's code); not a pyro-mmvae train option "
                        "(None: the library's default, stratified)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--output-dir", type=Path, default=default_output)
    p.add_argument("--keep-runs", action="store_true",
                   help="also write each run as a pyro-mmvae run directory under "
                        "OUTPUT_DIR/runs/ (config.json, checkpoint.pt, the shared "
                        "classifiers.pt, ...), which `pyro-mmvae evaluate` and `generate` "
                        "accept")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in OUTPUT_DIR/results.partial.json (or "
                        "results.json) that match this command, and train only the others")
    p.add_argument("--render", type=Path, metavar="RESULTS",
                   help="only rewrite the tables and figure of --output-dir from an earlier "
                        "results.json or results.partial.json")
    p.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: 128 training points, 1 epoch, tiny widths, "
                        "32 evaluation points, the first seed only")
    return p


def parse_args(parser: argparse.ArgumentParser, argv, dataset: str,
               recipe: Sequence[str] = ()):
    """The experiment's options; ``args.passthrough`` holds the options it does not know, for
    the ``pyro-mmvae train`` argv of every run (after ``recipe``).

    ``--quick`` shrinks the budget (options given explicitly still win, except ``--seeds``,
    cut to the first). Checks every aggregator and the passed-through options against the
    ``pyro-mmvae train`` parser now, before any run starts."""
    args, rest = parser.parse_known_args(argv)
    hints = {"--aggregator": "--aggregators", "--bound": "--bounds", "--seed": "--seeds",
             "--num-threads": "--threads"}
    for token in rest:
        name = token.split("=", 1)[0]
        if name in RESERVED:
            parser.error(f"{name} is set by the experiment for every run"
                         + (f"; use {hints[name]}" if name in hints else ""))
    given = set(a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        args.seeds = args.seeds[:1]
        for key, value in (("epochs", 1), ("train_points", 128), ("eval_points", 32),
                           ("is_samples", 2), ("classifier_epochs", 1), ("joint_samples", 64),
                           ("latent_train_points", 64)):
            if "--" + key.replace("_", "-") not in given:
                setattr(args, key, value)
    args.passthrough = list(rest)
    args.dataset = dataset
    args.recipe = list(recipe)
    for aggregator in args.aggregators:  # validate with the CLI's own parser
        ns = cli_namespace(train_argv(args, aggregator, args.bounds[0], args.seeds[0]))
    for key in ("eval_points", "is_samples", "classifier_epochs"):  # the CLI's defaults
        if getattr(args, key) is None:
            setattr(args, key, getattr(ns, key))
    return args


def train_argv(args, aggregator: str, bound: str, seed) -> List[str]:
    """The ``pyro-mmvae train`` argv of one run (without the leading program name)."""
    argv = ["train", "--dataset", args.dataset, "--aggregator", aggregator, "--bound", bound,
            "--seed", str(seed)]
    for key, option in TRAIN_OPTIONS.items():
        value = getattr(args, key, None)
        if value is not None:
            argv += [option, str(value)]
    argv += ["--num-threads", str(args.threads), "--no-evaluate", "--no-progress"]
    argv += list(args.recipe)
    if args.quick:
        argv += QUICK_TRAIN_ARGS
    return argv + list(args.passthrough)


def cli_namespace(argv: Sequence[str]) -> argparse.Namespace:
    """The namespace ``pyro-mmvae train`` builds from ``argv``, with the dataset defaults."""
    args = build_parser().parse_args(list(argv))
    return apply_dataset_defaults(args)


def equivalent_command(argv: Sequence[str]) -> str:
    """The ``pyro-mmvae`` command line that trains the same model (without the evaluation)."""
    shown = [a for a in argv if a not in ("--no-progress",)]
    return "pyro-mmvae " + shlex.join(shown)


# --------------------------------------------------------------------------------------------
# Classifiers: trained once per output directory


def classifier_settings(ns: argparse.Namespace, epochs: int) -> dict:
    """What the shared classifiers depend on (a cached file is reused only if these match)."""
    return {"dataset": ns.dataset, "data_seed": ns.data_seed, "image_size": ns.image_size,
            "train_points": ns.train_points, "classifier_epochs": epochs, "seed": 0,
            "pyro_mmvae_version": __version__}


def ensure_classifiers(out: Path, ns: argparse.Namespace, epochs: int, eval_points: int,
                       log=print) -> dict:
    """Train the per-modality classifiers on the training split once and cache them in
    ``out`` (``classifiers.pt``, ``classifiers.json`` with the settings and their test
    accuracies on the evaluation points); returns that info dict."""
    settings = classifier_settings(ns, epochs)
    path, info_path = out / CLASSIFIERS, out / CLASSIFIERS_INFO
    data = DATASETS[ns.dataset].load(ns)
    device = resolve_device(ns.device)
    n = eval_points
    test = {m: x[:n].to(device) for m, x in data.test.items()}
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if path.is_file() and info.get("settings") == settings:
        log(f"reusing the classifiers in {path}")
        if info.get("num_eval_points") == len(data.test_labels[:n]):
            return info
        classifiers = load_classifiers(path, device=device)
    else:
        log(f"training one classifier per modality ({data.num_train} points, "
            f"{epochs} epochs)")
        start = time.perf_counter()
        with torch.enable_grad():
            classifiers = train_modality_classifiers(
                {m: x.to(device) for m, x in data.train.items()},
                data.train_labels.to(device), data.num_classes, epochs=epochs, seed=0,
                device=device)
        save_classifiers(path, classifiers)
        info = {"settings": settings, "train_seconds": time.perf_counter() - start}
    info["test_accuracy"] = classifier_accuracy(classifiers, test,
                                                data.test_labels[:n].to(device))
    info["num_eval_points"] = len(data.test_labels[:n])
    accuracy = info["test_accuracy"]
    write_json(info_path, info)
    log("classifier test accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
    return info


# --------------------------------------------------------------------------------------------
# One run (in a worker process)


def run_name(spec: dict) -> str:
    return f"{spec['aggregator']}-{spec['bound']}-seed{spec['seed']}"


def run_config(spec: dict) -> dict:
    """Train and evaluate one configuration; a JSON-ready record."""
    with threadpool_limits(limits=spec["threads"]):
        torch.set_num_threads(spec["threads"])
        return _run_config(spec)


def _run_config(spec: dict) -> dict:
    ns = cli_namespace(spec["argv"])
    data = DATASETS[ns.dataset].load(ns)
    device = resolve_device(ns.device)
    pyro.set_rng_seed(ns.seed)  # parameter initialisation, as pyro-mmvae train
    model = build_model(ns, data).to(data.dtype)
    guide = build_guide(ns, data).to(data.dtype)
    loss = build_loss(ns, data)
    if spec.get("mixture_form") and hasattr(loss, "form"):
        loss.form = spec["mixture_form"]  # an estimator choice the CLI does not expose
    record = {"name": run_name(spec), "aggregator": spec["aggregator"], "bound": spec["bound"],
              "seed": spec["seed"], "argv": spec["argv"], "eval": spec["eval"],
              "mixture_form": getattr(loss, "form", None), "masking": loss.masking_name,
              "epochs": ns.epochs,
              "batch_size": ns.batch_size, "num_train": data.num_train,
              "steps_per_epoch": data.num_train // ns.batch_size,
              "num_parameters": sum(p.numel() for p in
                                    list(model.parameters()) + list(guide.parameters()))}
    run_dir = None
    if spec.get("run_dir"):
        run_dir = Path(spec["run_dir"])
    start = time.perf_counter()
    try:
        history = fit(model, guide, loss, data.train, epochs=ns.epochs,
                      batch_size=ns.batch_size, lr=ns.lr, clip_norm=ns.clip_norm,
                      run_dir=run_dir, seed=ns.seed, device=device,
                      progress=spec.get("progress", False),
                      config=run_config_json(ns, data) if run_dir else None)
    except TrainingDiverged as err:
        record.update(status="diverged", error=str(err), train_seconds=time.perf_counter() - start,
                      loss_curve=err.history["loss"])
        return record
    if run_dir is not None:  # `pyro-mmvae evaluate RUN_DIR` then uses the shared classifiers
        shutil.copyfile(spec["classifiers"], run_dir / CLASSIFIERS)
    record.update(status="completed", train_seconds=time.perf_counter() - start,
                  epoch_seconds=history["epoch_time"], loss_curve=history["loss"],
                  final_loss_per_point=history["loss"][-1])
    start = time.perf_counter()
    model.eval()
    guide.eval()
    record.update(evaluate(spec, ns, data, model, guide, device))
    record["eval_seconds"] = time.perf_counter() - start
    return record


def run_config_json(ns, data) -> dict:
    """``config.json`` of a kept run, as ``pyro-mmvae train`` writes it (so that
    ``pyro-mmvae evaluate RUN_DIR`` can restore the run)."""
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()
           if k not in ("func", "resume")}
    cfg.update(modality_dims=data.modality_dims, num_test=data.num_test,
               dataset_info=data.info, pyro_mmvae_version=__version__)
    return cfg


@torch.no_grad()
def evaluate(spec: dict, ns, data, model, guide, device) -> dict:
    """Log-likelihoods, coherence and latent classification of a trained run."""
    settings = spec["eval"]
    n, k = settings["eval_points"], settings["is_samples"]
    test = {m: x[:n].to(device) for m, x in data.test.items()}
    labels = data.test_labels[:n].to(device)
    modalities = list(test)
    out = {"num_eval_points": len(labels), "is_num_samples": k}

    joint = log_likelihood(model, guide, test, num_samples=k)
    out["test_log_likelihood"] = joint.nanmean().item()  # NaN: nothing to score
    marginals, conditionals = {}, {}
    for subset in spec["llh_subsets"]:
        members = subset.split("+")
        logp = log_likelihood(model, guide, test, targets=members, num_samples=k)
        marginals[subset] = logp.nanmean().item()
        rest = subset_name(m for m in modalities if m not in members)
        if rest:  # log p(x_rest | x_S) = log p(x) - log p(x_S)
            conditionals[f"{rest}|{subset}"] = (joint - logp).nanmean().item()
    out["test_marginal_log_likelihood"] = marginals
    out["test_conditional_log_likelihood"] = conditionals

    classifiers = load_classifiers(spec["classifiers"], device=device)
    coherence = conditional_coherence(model, guide, test, labels, classifiers)
    out["coherence"] = {k: coherence[k] for k in (
        "coherence", "cross", "self", "cross_by_num_inputs", "self_by_num_inputs",
        "leave_one_out", "leave_one_out_mean")}
    out["joint_coherence"] = joint_coherence(model, classifiers,
                                             num_samples=settings["joint_samples"])
    train = {m: x.to(device) for m, x in data.train.items()}
    latent = latent_classification(guide, train, data.train_labels.to(device), test, labels,
                                   num_train=settings["latent_train_points"], seed=ns.seed)
    out["latent_classification"] = {key: latent[key] for key in ("accuracy", "by_num_inputs")}
    out["latent_train_points"] = min(settings["latent_train_points"], data.num_train)
    return out


# --------------------------------------------------------------------------------------------
# Driver


def make_specs(args, out: Path, llh_subsets: Sequence[str]) -> List[dict]:
    """One spec per (aggregator, bound, seed). This is the scheduling order: the seeds of a
    configuration run side by side under ``--jobs``, so list the slowest aggregators first."""
    specs = []
    for aggregator in args.aggregators:
        for bound in args.bounds:
            for seed in args.seeds:
                spec = {"aggregator": aggregator, "bound": bound, "seed": seed,
                        "argv": train_argv(args, aggregator, bound, seed),
                        "threads": args.threads, "classifiers": str(out / CLASSIFIERS),
                        "llh_subsets": list(llh_subsets),
                        "mixture_form": args.mixture_form,
                        "eval": {key: getattr(args, key) for key in EVAL_OPTIONS},
                        "progress": args.jobs == 1 and sys.stderr.isatty()}
                if args.keep_runs:
                    spec["run_dir"] = str(out / "runs" / run_name(spec))
                specs.append(spec)
    return specs


def _comparable(record: dict, spec: dict) -> bool:
    return (record.get("name") == run_name(spec) and record.get("argv") == spec["argv"]
            and record.get("eval") == spec["eval"]
            and (record.get("mixture_form") is None  # a bound without mixture estimators
                 or spec["mixture_form"] in (None, record["mixture_form"])))


def previous_records(out: Path) -> List[dict]:
    for name in ("results.partial.json", "results.json"):
        path = out / name
        if path.is_file():
            payload = json.loads(path.read_text())
            return payload["runs"] if isinstance(payload, dict) else payload
    return []


def run_experiment(args, argv, script: str, description: str, llh_subsets: Sequence[str],
                   render: Callable[[Path, dict], None], log=print) -> dict:
    """Train and evaluate every configuration, write ``results.json``, tables and figure."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = f"python experiments/{script} " + shlex.join(
        sys.argv[1:] if argv is None else list(argv))
    if args.render:
        payload = json.loads(args.render.read_text())
        if not isinstance(payload, dict):  # a results.partial.json
            payload = {"runs": payload, "command": command + "  # partial results",
                       "wall_seconds": None, "config": _jsonable(vars(args))}
        render(out, payload)
        return payload

    start = time.perf_counter()
    torch.set_num_threads(args.threads)  # classifiers, and the runs when --jobs 1
    first = cli_namespace(train_argv(args, args.aggregators[0], args.bounds[0], args.seeds[0]))
    classifiers = ensure_classifiers(out, first, args.classifier_epochs, args.eval_points, log)
    todo = make_specs(args, out, llh_subsets)
    records: List[dict] = []
    if args.resume:
        kept = [r for r in previous_records(out) if any(_comparable(r, s) for s in todo)]
        records += kept
        todo = [s for s in todo if not any(_comparable(r, s) for r in kept)]
        log(f"--resume: keeping {len(kept)} earlier runs, {len(todo)} to go")
    partial = out / "results.partial.json"

    def done(rec):
        records.append(rec)
        write_json(partial, records)  # the runs so far, in case of a crash
        if rec["status"] != "completed":
            log(f"[{time.perf_counter() - start:7.1f}s] {rec['name']}: {rec['status']}")
            return
        coh = rec["coherence"]["cross_by_num_inputs"]
        log(f"[{time.perf_counter() - start:7.1f}s] {rec['name']}: LLH "
            f"{rec['test_log_likelihood']:.1f}, cross coherence (1 input) "
            f"{_get(coh, 1):.3f}, joint coherence {rec['joint_coherence']:.3f} "
            f"(train {rec['train_seconds']:.0f}s, eval {rec['eval_seconds']:.0f}s)")

    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(todo)),
                                 mp_context=get_context("spawn")) as pool:
            for rec in pool.map(run_config, todo):
                done(rec)
    else:
        for spec in todo:
            done(run_config(spec))
    wall = time.perf_counter() - start
    order = {run_name(s): i for i, s in enumerate(make_specs(args, out, llh_subsets))}
    records.sort(key=lambda r: order.get(r["name"], len(order)))
    payload = {
        "description": description, "command": command, "config": _jsonable(vars(args)),
        "equivalent_train_command": equivalent_command(train_argv(
            args, "AGGREGATOR", "BOUND", "SEED")),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "pyro": pyro.__version__, "pyro_mmvae": __version__,
                        "cpu_count": os.cpu_count()},
        "wall_seconds": wall, "classifiers": classifiers, "runs": records,
    }
    write_json(out / "results.json", payload)
    render(out, payload)
    partial.unlink(missing_ok=True)
    log(f"wrote {out} in {wall / 60:.1f} min")
    return payload


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# Tables and figures


def _get(curve: Optional[dict], key):
    """``curve[key]`` for int or str keys (JSON turns int keys into strings)."""
    if not curve:
        return None
    return curve.get(key, curve.get(str(key)))


def mean_std(values):
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def fmt(cell, digits=2) -> str:
    mean, std = cell
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ({std:.{digits}f})")


def completed(records, aggregator=None, bound=None) -> List[dict]:
    return [r for r in records if r.get("status") == "completed"
            and (aggregator is None or r["aggregator"] == aggregator)
            and (bound is None or r["bound"] == bound)]


def configurations(records) -> List[tuple]:
    """(aggregator, bound) pairs in the order they first appear."""
    seen = []
    for r in records:
        key = (r["aggregator"], r["bound"])
        if key not in seen:
            seen.append(key)
    return seen


def cell(records, getter, digits=2) -> str:
    """``mean (std)`` over the records of ``getter(record)``; ``diverged`` if none finished."""
    done = [r for r in records if r.get("status") == "completed"]
    if records and not done:
        return "diverged"
    values = []
    for r in done:
        try:
            values.append(getter(r))
        except (KeyError, TypeError):
            values.append(None)
    return fmt(mean_std(values), digits)


def budget_lines(payload: dict) -> List[str]:
    """Command, equivalent training command and budget of a results payload."""
    runs = payload["runs"]
    done = completed(runs)
    cfg = payload.get("config", {})
    seeds = sorted({r["seed"] for r in runs})
    epochs = sorted({r["epochs"] for r in runs})
    steps = sorted({r["steps_per_epoch"] for r in runs})
    batch = sorted({r["batch_size"] for r in runs})
    ntrain = sorted({r["num_train"] for r in runs})
    train_min = sum(r.get("train_seconds", 0) for r in runs) / 60
    eval_min = sum(r.get("eval_seconds", 0) for r in runs) / 60
    per_epoch = [s for r in done for s in r.get("epoch_seconds", [])]
    wall = payload.get("wall_seconds")
    diverged = [r["name"] for r in runs if r.get("status") != "completed"]
    forms = sorted({r.get("mixture_form") or "?" for r in runs if r["bound"] == "mixture"})
    lines = [f"Command: `{payload['command']}`", "",
             f"Each run trains as `{payload.get('equivalent_train_command', '?')}` (same "
             "builders and defaults; AGGREGATOR/BOUND/SEED per row"
             + ("" if forms in ([], ["stratified"]) else "; except the mixture-bound "
                "estimator below, which the CLI does not expose")
             + ") and is then evaluated by the script.", "",
             f"Budget: {'/'.join(map(str, epochs))} epochs × "
             f"{'/'.join(map(str, steps))} steps of batch {'/'.join(map(str, batch))} "
             f"({'/'.join(map(str, ntrain))} training points), seeds {seeds}, {len(runs)} runs; "
             f"{train_min:.1f} CPU-min of training and {eval_min:.1f} of evaluation in total"
             + (f", {np.median(per_epoch):.1f} s per epoch (median)" if per_epoch else "")
             + f"; {cfg.get('threads', '?')} thread(s) per run, {cfg.get('jobs', '?')} "
               "parallel job(s)"
             + (f"; wall time {wall / 60:.1f} min." if wall else ".")]
    masking = {}
    for r in runs:
        masking.setdefault(r["bound"], set()).add(r.get("masking", "?"))
    lines += ["", "Masking distribution ρ over input subsets: " + "; ".join(
        f"{bound} bound: {'/'.join(sorted(names))}" for bound, names in masking.items())
        + " (iid_half: each modality in S with probability 1/2; all: S = every modality, "
          "i.e. MMVAE's / MoPoE's objective with a MoE / MoPoE guide and the plain joint ELBO "
          "with a unimodal guide)."]
    if forms:
        lines += ["", f"Mixture-bound estimator: form={'/'.join(forms)} (stratified: one draw "
                  "per mixture component, MoPoE eq. 6 / MMVAE eq. 33, the library default; "
                  "average: MoPoE's code objective; sampled: one draw from the mixture)."]
    if diverged:
        lines += ["", f"Diverged (non-finite loss, no metrics): {', '.join(diverged)}."]
    return lines


def classifier_line(payload: dict) -> str:
    info = payload.get("classifiers") or {}
    acc = info.get("test_accuracy") or {}
    return ("Coherence classifiers (one per modality, trained once on the training split for "
            f"{(info.get('settings') or {}).get('classifier_epochs', '?')} epochs and shared by "
            "all runs) reach test accuracies " + ", ".join(f"{m} {a:.3f}" for m, a in acc.items())
            + " — the ceiling of every coherence number.")


def plot_curves(path: Path, records, title: str, max_inputs: int, names: Dict[str, str]):
    """Two panels against the number of input modalities: cross coherence (1..M-1) and latent
    linear accuracy (1..M); one line per aggregator/bound (colour: aggregator, style: bound),
    mean over seeds with min-max error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = [("cross coherence (targets outside the inputs)",
               lambda r: r["coherence"]["cross_by_num_inputs"], range(1, max_inputs)),
              ("latent linear classification accuracy",
               lambda r: r["latent_classification"]["by_num_inputs"], range(1, max_inputs + 1))]
    aggregators = list(dict.fromkeys(r["aggregator"] for r in records))
    styles = {"masked": ("-", "o"), "mixture": ("--", "s"), "subsampled": (":", "^")}
    for ax, (label, curve, sizes) in zip(axes, panels):
        for aggregator, bound in configurations(records):
            runs = completed(records, aggregator, bound)
            if not runs:
                continue
            xs, ys, lo, hi = [], [], [], []
            for k in sizes:
                vals = [_get(curve(r), k) for r in runs]
                vals = [v for v in vals if v is not None]
                if vals:
                    xs.append(k)
                    ys.append(float(np.mean(vals)))
                    lo.append(ys[-1] - min(vals))
                    hi.append(max(vals) - ys[-1])
            if xs:
                ls, marker = styles.get(bound, ("-.", "x"))
                ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, ms=4, capsize=2, ls=ls,
                            color=f"C{aggregators.index(aggregator) % 10}",
                            label=f"{names.get(aggregator, aggregator)}, {bound}")
        ax.set_xlabel("number of input modalities")
        ax.set_ylabel("accuracy")
        ax.set_xticks(list(sizes))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(label, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", handlelength=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
