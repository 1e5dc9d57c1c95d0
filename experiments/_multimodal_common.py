r"""Shared machinery of the image/text experiments (``polydigits.py``, ``digits_svhn_text.py``).

Each configuration (aggregator, bound, seed) is one ``pyro-mmvae train`` run: a
:class:`~pyro_mmvae.config.RunConfig` built directly (``dataset``, ``aggregator``, ``bound``,
``seed``, the script's recipe, and every ``pyro-mmvae train`` option given to the script, e.g.
``--beta 2.5``, ``--latent-dim 32``, ``--device cuda``; ``--mixture-form`` applies to the
mixture bound's runs), and the data, model, guide and bound come from the CLI's own builders
(:mod:`pyro_mmvae.runs`), so an experiment and the command line cannot drift apart.

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

Runs go through a process pool (``--jobs``, spawn context, ``--threads`` torch threads each);
one run is :mod:`_multimodal_run`, the tables and figures :mod:`_multimodal_tables`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

import pyro
import torch

from pyro_mmvae import __version__
from pyro_mmvae.cli import add_config_options, config_from_argv
from pyro_mmvae.config import FIELDS, PER_COMMAND, RunConfig
from pyro_mmvae.registry import AGGREGATORS
from pyro_mmvae.report import CLASSIFIERS
from pyro_mmvae.train import write_json

from _multimodal_run import ensure_classifiers, run_name, run_one
from _multimodal_tables import _get

# The options the experiment sets for every run (not options of the script), with the script's
# option to use instead where there is one.
PER_RUN = {"dataset": None, "aggregator": "--aggregators", "bound": "--bounds",
           "seed": "--seeds", "num_threads": "--threads", "no_progress": None,
           "no_evaluate": None}
# The evaluation's settings (the first three are RunConfig options, the others the script's).
EVAL_OPTIONS = ("eval_points", "is_samples", "classifier_epochs", "latent_train_points",
                "joint_samples")

# --quick: seconds-long smoke runs (options given explicitly win).
QUICK = dict(epochs=1, train_points=128, eval_points=32, is_samples=2, classifier_epochs=1,
             batch_size=64, latent_dim=4, aggregator_width=16, channels=(8,))
QUICK_EXPERIMENT = dict(joint_samples=64, latent_train_points=64)


# --------------------------------------------------------------------------------------------
# Command line


def experiment_parser(doc: str, aggregators: Sequence[str], bounds: Sequence[str],
                      all_bounds: Sequence[str], default_output: Path, recipe: Mapping,
                      default_epochs: int) -> argparse.ArgumentParser:
    """The options shared by the image/text experiment scripts, and those of
    ``pyro-mmvae train`` (for every run) but the ones the experiment sets per run."""
    recipe_argv = " ".join(RunConfig(**recipe).to_argv()) or "nothing"
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="The pyro-mmvae train options apply to every run (--mixture-form to the "
               f"mixture bound's); this script's recipe sets {recipe_argv} and --epochs "
               f"{default_epochs} unless given.")
    g = p.add_argument_group("experiment")
    names = ", ".join(AGGREGATORS)
    g.add_argument("--aggregators", nargs="+", default=list(aggregators),
                   choices=list(AGGREGATORS), metavar="AGG",
                   help=f"guide aggregators (pyro-mmvae train --aggregator; {names})")
    g.add_argument("--bounds", nargs="+", default=list(bounds), choices=list(all_bounds),
                   help="training bounds (pyro-mmvae train --bound)")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                   help="seeds of initialisation, shuffling and sampling (the data set is "
                        "fixed: --data-seed)")
    g.add_argument("--latent-train-points", type=int, default=500, metavar="N",
                   help="random training points of the latent linear classifiers (MoPoE: 500)")
    g.add_argument("--joint-samples", type=int, default=1000,
                   help="unconditional samples of the joint coherence")
    g.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per run")
    g.add_argument("--output-dir", type=Path, default=default_output)
    g.add_argument("--keep-runs", action="store_true",
                   help="also write each run as a pyro-mmvae run directory under "
                        "OUTPUT_DIR/runs/ (config.json, checkpoint.pt, the shared "
                        "classifiers.pt, ...), which `pyro-mmvae evaluate` and `generate` "
                        "accept")
    g.add_argument("--resume", action="store_true",
                   help="keep the runs already in OUTPUT_DIR/results.partial.json (or "
                        "results.json) that match this command, and train only the others")
    g.add_argument("--render", type=Path, metavar="RESULTS",
                   help="only rewrite the tables and figure of --output-dir from an earlier "
                        "results.json or results.partial.json")
    g.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: 128 training points, 1 epoch, tiny widths, "
                        "32 evaluation points, the first seed only")
    add_config_options(p, [k for k in FIELDS if k not in PER_RUN], suppress=True)
    p.set_defaults(default_epochs=default_epochs, recipe=dict(recipe))
    return p


def parse_args(parser: argparse.ArgumentParser, argv, dataset: str):
    """The experiment's options; ``args.run_options`` holds the :class:`RunConfig` options of
    every run (``--epochs``, the recipe, ``--quick``'s, then those given, which win).

    ``--quick`` shrinks the budget (options given explicitly still win, except ``--seeds``,
    cut to the first). Checks every configuration now, before any run starts, and sets the
    evaluation's settings (``args.eval_points`` ...) to the first configuration's."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for token in argv:
        name = token.split("=", 1)[0]
        key = name[2:].replace("-", "_")
        if name.startswith("--") and key in PER_RUN:
            parser.error(f"{name} is set by the experiment for every run"
                         + (f"; use {PER_RUN[key]}" if PER_RUN[key] else ""))
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    given_flags = {a.split("=", 1)[0] for a in argv}
    args.dataset = dataset
    args.run_options = {"epochs": args.default_epochs, **args.recipe,
                        **(QUICK if args.quick else {}), **given}
    if args.quick:
        args.seeds = args.seeds[:1]
        for key, value in QUICK_EXPERIMENT.items():
            if RunConfig.flag(key) not in given_flags:
                setattr(args, key, value)
    for aggregator in args.aggregators:
        for bound in args.bounds:
            try:
                resolved = run_config(args, aggregator, bound, args.seeds[0]).resolve()
            except ValueError as err:
                parser.error(f"--aggregators {aggregator} --bounds {bound}: {err}")
            if (aggregator, bound) == (args.aggregators[0], args.bounds[0]):
                first = resolved
    for key in ("epochs",) + EVAL_OPTIONS[:3]:
        setattr(args, key, getattr(first, key))
    return args


def run_config(args, aggregator: str, bound: str, seed: int) -> RunConfig:
    """The (unresolved) configuration of one run."""
    options = dict(args.run_options)
    if bound != "mixture":
        options.pop("mixture_form", None)  # --mixture-form: the mixture bound's runs
    if AGGREGATORS[aggregator].experts:
        options.pop("aggregator_width", None)  # the learnable aggregators' runs
    return RunConfig(dataset=args.dataset, aggregator=aggregator, bound=bound, seed=seed,
                     num_threads=args.threads, no_evaluate=True, no_progress=True, **options)


def equivalent_command(config: RunConfig) -> str:
    """The ``pyro-mmvae`` command line that trains the runs of ``config``'s study (without the
    evaluation; AGGREGATOR, BOUND and SEED per run)."""
    skip = ("dataset", "aggregator", "bound", "seed", "mixture_form", "no_progress")
    return "pyro-mmvae " + shlex.join(
        ["train", "--dataset", config.dataset, "--aggregator", "AGGREGATOR", "--bound", "BOUND",
         "--seed", "SEED", *config.to_argv(skip)])


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
                        "config": run_config(args, aggregator, bound, seed).to_dict(),
                        "threads": args.threads, "classifiers": str(out / CLASSIFIERS),
                        "llh_subsets": list(llh_subsets),
                        "eval": {key: getattr(args, key) for key in EVAL_OPTIONS},
                        "progress": args.jobs == 1 and sys.stderr.isatty()}
                if args.keep_runs:
                    spec["run_dir"] = str(out / "runs" / run_name(spec))
                specs.append(spec)
    return specs


def record_config(record: dict) -> Optional[dict]:
    """What a results record trained, to match it with a spec: its saved configuration less
    how it ran (:data:`~pyro_mmvae.config.PER_COMMAND`). Legacy: records of earlier versions
    hold the ``pyro-mmvae train`` argv instead, their mixture-bound form and evaluation
    settings apart."""
    if "config" in record:
        config = RunConfig.from_dict(record["config"])
    elif "argv" in record:
        config = config_from_argv(record["argv"][1:])
        config = replace(config, **{k: v for k, v in record.get("eval", {}).items()
                                    if k in EVAL_OPTIONS[:3]})
        if record.get("bound") == "mixture":
            config = replace(config, mixture_form=record.get("mixture_form"))
    else:
        return None
    return {k: v for k, v in config.saved().items() if k not in PER_COMMAND}


def _comparable(record: dict, spec: dict) -> bool:
    return (record.get("name") == run_name(spec) and record.get("eval") == spec["eval"]
            and record_config(record) == record_config({"config": spec["config"]}))


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
    config = _jsonable(vars(args))
    if args.render:
        payload = json.loads(args.render.read_text())
        if not isinstance(payload, dict):  # a results.partial.json
            payload = {"runs": payload, "command": command + "  # partial results",
                       "wall_seconds": None, "config": config}
        render(out, payload)
        return payload

    start = time.perf_counter()
    torch.set_num_threads(args.threads)  # classifiers, and the runs when --jobs 1
    first = run_config(args, args.aggregators[0], args.bounds[0], args.seeds[0])
    classifiers = ensure_classifiers(out, first, log)
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
            for rec in pool.map(run_one, todo):
                done(rec)
    else:
        for spec in todo:
            done(run_one(spec))
    wall = time.perf_counter() - start
    order = {run_name(s): i for i, s in enumerate(make_specs(args, out, llh_subsets))}
    records.sort(key=lambda r: order.get(r["name"], len(order)))
    payload = {
        "description": description, "command": command, "config": config,
        "equivalent_train_command": equivalent_command(first),
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


def _jsonable(value):
    """Experiment options as JSON (paths as strings, tuples as lists)."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
