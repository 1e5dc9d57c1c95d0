"""Rows, the paper's numbers, tables and figures of ``experiments/identifiable.py``.

The tables are written with :mod:`pyro_mmvae.tables`: a header naming the command, budget,
seeds and wall time; every cell ``mean ± std`` over the seeds with the paper's ``mean ± std``
in parentheses (``ours (paper)``). The paper's numbers are read from ``identifiable_paper.json``
beside this file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from pyro_mmvae import registry
from pyro_mmvae.eval import CCA
from pyro_mmvae.io import atomic_write
from pyro_mmvae.tables import beside, fmt, header, markdown_table, mean_std

# Row key -> (aggregator, prior, display name), in the paper's order. The aggregators are
# spelled as the CLI's registry spells them.
ROWS = {
    "poe": ("poe", "normal", "PoE"),
    "moe": ("moe", "normal", "MoE"),
    "sumpooling": ("sumpooling", "normal", "SumPooling"),
    "selfattention": ("selfattention", "normal", "SelfAttention"),
    "sumpooling+gmm": ("sumpooling", "gmm", "SumPooling"),
    "selfattention+gmm": ("selfattention", "gmm", "SelfAttention"),
    "sumpooling-mixture+gmm": ("sumpooling-mixture", "gmm", "SumPoolingMixture"),
    "selfattention-mixture+gmm": ("selfattention-mixture", "gmm", "SelfAttentionMixture"),
}
BOUNDS = ("masked", "mixture")
OBSERVED = ("partial", "full")
PAPER = json.loads((Path(__file__).resolve().parent / "identifiable_paper.json").read_text())
PAPER_EPOCHS = 4000


def row_key(name: str) -> str:
    """A row key in the registry's spelling (the committed results' commands use the earlier
    ``sumpooling_mix``); ``argparse.ArgumentTypeError`` if unknown."""
    agg, plus, prior = name.partition("+")
    key = registry.ALIASES["aggregator"].get(agg, agg) + plus + prior
    if key not in ROWS:
        raise argparse.ArgumentTypeError(f"unknown row {name!r}; one of {', '.join(ROWS)}")
    return key


def prior_label(row: str, components: int) -> str:
    return "N(0,I)" if ROWS[row][1] == "normal" else f"GMM, K={components}"


def run_key(r: dict) -> tuple:
    """What identifies a run: table, row, bound, observation, seed."""
    return r["table"], row_key(r["row"]), r["bound"], r.get("observed"), r["seed"]


def cells(records, **where):
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def stat(records, key, scale=1.0):
    return mean_std([r[key] * scale for r in records if r.get(key) is not None])


def paper(table: int, row: str, bound: str, metric: str, observed=None):
    entry = PAPER[f"table{table}"][row]
    return tuple((entry[observed] if table == 4 else entry)[bound][metric])


# --------------------------------------------------------------------------------------------
# Tables


def write_tables(out: Path, args, payload: dict, missing) -> None:
    """``table3.md`` / ``table4.md`` of the tables present in ``payload["runs"]``; ``missing``:
    the :func:`run_key` of the command's runs that did not finish."""
    runs = [dict(r, row=row_key(r["row"])) for r in payload["runs"]]
    for table, body in ((3, _table3), (4, _table4)):
        if cells(runs, table=table):
            lines = _header(table, args, payload, runs, [k for k in missing if k[0] == table])
            lines += body(args, runs) + [""] + _all_metrics(args, runs, table)
            text = "\n".join(lines) + "\n"
            atomic_write(out / f"table{table}.md", lambda f: f.write(text), mode="w")


TITLES = {3: "Table 3: bi-modal identifiable model, label as a modality "
             "(Hirt et al. 2024, §5.2)",
          4: "Table 4: multi-modal identifiable model with missing modalities "
             "(Hirt et al. 2024, §5.2)"}


def _header(table, args, payload, runs, missing):
    runs = cells(runs, table=table)
    epochs = args.epochs3 if table == 3 else args.epochs4
    minutes = sum(r["train_seconds"] for r in runs) / 60
    budget = (f"{epochs} epochs = {runs[0]['steps']} steps of batch {args.batch_size} (the "
              f"paper: {PAPER_EPOCHS} epochs), Adam lr {args.lr:g}, NaN gradients set to 0 and "
              f"clipped element-wise at {args.clip:g}; {len(runs)} runs, {minutes:.1f} CPU-min "
              "of training in total")
    machine = payload.get("machine") or (
        f"{args.threads} torch thread{'s' if args.threads > 1 else ''} per run, {args.jobs} "
        f"run{'s' if args.jobs > 1 else ''} at a time")
    wall = payload.get("wall_seconds")
    lines = header(TITLES[table], command=payload["command"].partition("  #")[0],
                   budget=budget, seeds=sorted({r["seed"] for r in runs}),
                   wall_s=0.0 if wall is None else wall, machine=machine)
    if wall is None:  # the shared header needs a number
        lines = [f"- Wall time: not recorded (interrupted run; {machine})"
                 if line.startswith("- Wall time:") else line for line in lines]
    if missing:
        names = [f"seed {seed} {ROWS[row][2]} ({prior_label(row, args.num_components)})"
                 + (f" {observed}" if observed else "") + f" {bound} bound"
                 for _, row, bound, observed, seed in sorted(missing, key=_order)]
        lines += [f"Interrupted: {len(runs)} of the command's {len(runs) + len(missing)} runs "
                  f"of this table finished; missing: {'; '.join(names)}. Rendered with "
                  "`--rerender` from the finished runs.", ""]
    return lines


def _order(key):
    table, row, bound, observed, seed = key
    return (seed, table, OBSERVED.index(observed) if observed else 0, list(ROWS).index(row),
            BOUNDS.index(bound))


CELLS = "Each cell: ours as mean ± std over the seeds (one data set and initialisation per " \
        "seed), the paper's mean ± std over 5 data sets in parentheses. Masked: the masked " \
        "bound (the paper's \"ours\"); mixture: the mixture bound."


def _table3(args, runs):
    lines = [
        f"Data: {args.num_labels} labels × {args.per_label3} points, d = 2, "
        "`x = lrelu(zA)A + 0.1ε`; evaluated on the training data. LLH: importance-sampled "
        f"joint log-likelihood ({args.llh_samples3} samples) summed over the "
        f"{args.num_labels * args.per_label3} points, /1000 (the paper's unit is lost; its "
        "magnitudes match sum/1000). MCC a: weak out-of-sample MCC of one sample of "
        "q(z | x, u); MCC b: of q(z | x). " + CELLS, ""]
    rows = []
    for row, (_, _, name) in ROWS.items():
        if not cells(runs, table=3, row=row):
            continue
        vals = []
        for b in BOUNDS:
            rs = cells(runs, table=3, row=row, bound=b)
            vals += [beside(stat(rs, "llh_sum", 1e-3), paper(3, row, b, "llh"), 2),
                     beside(stat(rs, "mcc_weak_out"), paper(3, row, b, "mcc_a"), 3),
                     beside(stat(rs, "mcc_x_only"), paper(3, row, b, "mcc_b"), 3)]
        rows.append([name, prior_label(row, args.num_components), *vals])
    columns = [f"{b.capitalize()}: {c}" for b in BOUNDS for c in ("LLH", "MCC a", "MCC b")]
    return lines + markdown_table(["Aggregation", "Prior", *columns], rows)


def _table4(args, runs):
    lines = [
        f"Data: {args.modalities} modalities × {args.modality_dim} features, "
        f"d = {args.latent_dim4}, {args.num_labels} unobserved labels; "
        f"{args.per_label4 * args.num_labels // 2} training / test points each "
        f"({'authors’ label-ordered split' if args.authors_split else 'shuffled split'}); "
        f"partial: missing completely at random with rate {args.missing_rate} (train and test "
        "masks drawn separately); full: nothing missing. LLH: importance-sampled log-likelihood "
        f"of the observed test modalities ({args.llh_samples4} samples) summed over the test "
        "points, /1000. MCC: weak out-of-sample MCC of one sample of q(z | x_observed) on the "
        "test set. " + CELLS, ""]
    columns = [f"{b.capitalize()}: {c}" for b in BOUNDS for c in ("LLH", "MCC")]
    for observed in OBSERVED:
        rows = []
        for row, (_, _, name) in ROWS.items():
            if not cells(runs, table=4, row=row, observed=observed):
                continue
            vals = []
            for b in BOUNDS:
                rs = cells(runs, table=4, row=row, bound=b, observed=observed)
                vals += [beside(stat(rs, "llh_sum", 1e-3), paper(4, row, b, "llh", observed), 2),
                         beside(stat(rs, "mcc_weak_out"), paper(4, row, b, "mcc", observed), 3)]
            rows.append([name, prior_label(row, args.num_components), *vals])
        if rows:
            title = "Partially" if observed == "partial" else "Fully"
            lines += [f"## {title} observed", ""]
            lines += markdown_table(["Aggregation", "Prior", *columns], rows) + [""]
    return lines[:-1]


METRICS = ("llh_per_point", "mcc_weak_out", "mcc_weak_in", "mcc_strong_out", "mcc_strong_in",
           "mcc_posterior_mean", "mcc_code_cca1", "clustering_accuracy", "final_loss_per_point",
           "train_seconds")


def _all_metrics(args, runs, table):
    """Per-point LLH, the other MCC variants and clustering accuracy of every cell."""
    rows = []
    for row, (_, _, name) in ROWS.items():
        for observed in (OBSERVED if table == 4 else (None,)):
            for b in BOUNDS:
                rs = cells(runs, table=table, row=row, bound=b, observed=observed)
                if rs:
                    rows.append([f"{name} ({prior_label(row, args.num_components)})",
                                 observed or "full", b,
                                 *(fmt(stat(rs, k), 0 if k == "train_seconds" else 3)
                                   for k in METRICS)])
    return ["## All metrics", "",
            "Mean ± std over the seeds. LLH/pt: mean per point; weak in / strong out / strong "
            "in: the other MCC variants; mean: weak out-of-sample MCC of the posterior mean; "
            "CCA-1: the authors' code variant (one canonical pair, Pearson); cluster acc.: "
            "accuracy of argmax_c p(c | E[z | x]) after the best label permutation (mixture "
            "prior only); loss/pt: the last epoch's training loss per point.", "",
            *markdown_table(["Row", "Observed", "Bound", "LLH/pt", "MCC weak out", "weak in",
                             "strong out", "strong in", "mean", "CCA-1", "cluster acc.",
                             "loss/pt", "train s"], rows)]


# --------------------------------------------------------------------------------------------
# Figures (need the ``plot`` arrays of a fresh run or of results.partial.json)


def plot_figures(out: Path, runs, components: int) -> None:
    runs = [dict(r, row=row_key(r["row"])) for r in runs if "plot" in r]
    runs.sort(key=lambda r: (list(ROWS).index(r["row"]), r["bound"]))
    table3 = [r for r in runs if r["table"] == 3]
    if table3:
        _plot_table3(out / "table3_latents.png", table3, components)
    for observed in OBSERVED:
        table4 = [r for r in runs if r["table"] == 4 and r["observed"] == observed]
        if table4:
            _plot_table4(out / f"table4_latents_{observed}.png", table4, components)


def _figure(nrows, ncols, height):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(2.2 * ncols, height * nrows))
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _scatter(ax, xy, labels, title):
    xy = np.asarray(xy)
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=2, vmin=0, vmax=9)
    ax.set_title(title, fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def _name(r, components):
    return f"{ROWS[r['row']][2]} {prior_label(r['row'], components)}, {r['bound']}"


def _plot_table3(path, runs, components):
    """True latents, data, and per configuration the inferred latents and reconstructions."""
    used = 2 + 2 * len(runs)
    fig, axes = _figure(math.ceil(used / 6), 6, 2.3)
    first = runs[0]["plot"]
    _scatter(axes[0], first["z_true"], first["labels"], "true z")
    _scatter(axes[1], first["x"], first["labels"], "data x")
    for i, r in enumerate(runs):
        name = _name(r, components)
        _scatter(axes[2 + 2 * i], r["plot"]["z_mean"], r["plot"]["labels"], f"E[z|x,u]\n{name}")
        _scatter(axes[3 + 2 * i], r["plot"]["x_recon"], r["plot"]["labels"],
                 f"reconstructed x\n{name}")
    for ax in axes[used:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_table4(path, runs, components):
    """First two canonical variates (CCA with the true z) of the true and inferred latents."""
    fig, axes = _figure(math.ceil(2 * len(runs) / 4), 4, 2.2)
    for i, r in enumerate(runs):
        z, zh = np.asarray(r["plot"]["z_true"]), np.asarray(r["plot"]["z_mean"])
        a, b = CCA(2).fit(z, zh).transform(z, zh)
        name = _name(r, components)
        _scatter(axes[2 * i], a, r["plot"]["labels"], f"true z (CCA 1-2)\n{name}")
        _scatter(axes[2 * i + 1], b, r["plot"]["labels"], f"E[z|x_obs] (CCA 1-2)\n{name}")
    for ax in axes[2 * len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
