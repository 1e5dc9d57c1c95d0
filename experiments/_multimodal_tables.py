r"""Tables and figures of the image/text experiments (``polydigits.py``,
``digits_svhn_text.py``): cells of mean (std) over seeds, the budget and command lines of a
results payload, the classifiers' line, and the coherence / latent-accuracy figure.

Everything here reads a results payload (``results.json``) only, so ``--render`` rewrites the
tables and figure of an earlier run without training. :func:`paper_cell` writes a paper's
number as printed (the ``*_paper.json`` files beside the scripts), and :func:`rerender_readme`
rewrites the README of any script whose results have a :func:`pyro_mmvae.tables.header`
(the MSNVI and M2VAE scripts) from its ``results.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from pyro_mmvae.registry import AGGREGATORS
from pyro_mmvae.io import atomic_write
from pyro_mmvae.tables import command_line, mean_std

#: the aggregators' names in tables (the registry's display names)
NAMES: Dict[str, str] = {name: entry.display for name, entry in AGGREGATORS.items()}


def _get(curve: Optional[dict], key):
    """``curve[key]`` for int or str keys (JSON turns int keys into strings)."""
    if not curve:
        return None
    return curve.get(key, curve.get(str(key)))


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
             + ("" if forms in ([], ["stratified"]) else "; the mixture bound's rows with "
                f"`--mixture-form {'/'.join(forms)}`")
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


# --------------------------------------------------------------------------------------------
# Papers' numbers and re-rendered READMEs, for every experiment script


def paper_cell(value, digits: Optional[int] = None) -> str:
    """A number of a ``*_paper.json`` file as the paper prints it: ``digits`` decimals (None:
    as Python writes it, for cells whose precision varies), ``[mean, std]`` as ``mean (std)``,
    None (no number) as ``NA``."""
    if value is None:
        return "NA"
    if isinstance(value, (list, tuple)):
        mean, std = value
        return f"{paper_cell(mean, digits)} ({paper_cell(std, digits)})"
    return str(value) if digits is None else f"{value:.{digits}f}"


def recorded_run(payload: Mapping, readme: Path, script: str) -> Dict[str, str]:
    """``{"command": ..., "machine": ...}`` of the run that wrote ``payload``: its own entries;
    for results written before they were recorded, ``argv``, or the header of the README that
    run wrote (``- Command: `...` ``, ``- Wall time: N s (machine)``)."""
    out = {k: payload[k] for k in ("command", "machine") if payload.get(k)}
    if "command" not in out and payload.get("argv") is not None:
        out["command"] = command_line(f"experiments/{script}", payload["argv"])
    if len(out) < 2 and readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("- Command: `") and line.endswith("`"):
                out.setdefault("command", line[len("- Command: `"):-1])
            elif line.startswith("- Wall time: ") and line.endswith(")") and "(" in line:
                out.setdefault("machine", line[line.index("(") + 1:-1])
    out.setdefault("command", command_line(f"experiments/{script}", None))
    return out


def rerender_readme(folder, script: str, readme: Callable[[dict], Sequence[str]]) -> dict:
    """Rewrite ``folder/README.md`` from ``folder/results.json`` (left as it is) with
    ``readme(payload)``, keeping the command and machine of the run that wrote them
    (:func:`recorded_run`); returns the payload with those two entries."""
    folder = Path(folder)
    payload = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    payload.update(recorded_run(payload, folder / "README.md", script))
    text = "\n".join(readme(payload)) + "\n"
    atomic_write(folder / "README.md", lambda f: f.write(text.encode("utf-8")))
    return payload
