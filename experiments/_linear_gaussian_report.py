"""Tables, figures and provenance of ``experiments/linear_gaussian.py``, written with
:mod:`pyro_mmvae.tables`: a header with the command, budget, seeds and wall time; cells
``mean ± std`` over the seeds with the paper's number (``linear_gaussian_paper.json``) in
parentheses. ``--include`` adds rows of earlier runs, ``--merge`` pools their other seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pyro_mmvae import registry
from pyro_mmvae.io import atomic_write
from pyro_mmvae.tables import MISSING, beside, command_line, fmt, header, markdown_table, mean_std
from pyro_mmvae.train import write_json

SCRIPT = "experiments/linear_gaussian.py"
PAPER = json.loads((Path(__file__).resolve().parent / "linear_gaussian_paper.json").read_text())
AGGREGATOR_NAMES = {"poe": "PoE", "moe": "MoE", "mopoe": "MoPoE", "sumpooling": "SumPooling",
                    "selfattention": "SelfAttention", "sumpooling-mixture": "SumPoolingMixture",
                    "selfattention-mixture": "SelfAttentionMixture"}
PE_GUIDES = {"pe-poe": "PE-PoE", "pe-sumpooling": "PE-SumPooling",
             "pe-selfattention": "PE-SelfAttention"}
NAMES = {**AGGREGATOR_NAMES, **PE_GUIDES}
BOUNDS = ("masked", "mixture")
RD_KEYS = ("full_reconstruction", "full_rate", "cross_reconstruction", "cross_rate",
           "reconstruction", "rate", "conditional_reconstruction")
# table -> (file stem, plot title, table title)
STEMS = {1: ("table1", "Table 1: illustrative bi-modal example",
             "Hirt et al. 2024, Table 1: illustrative bi-modal linear-Gaussian example"),
         2: ("table2", "Table 2 (invariant): 5-modality shared-latent study",
             "Hirt et al. 2024, Table 2 (invariant columns): linear-Gaussian simulation, "
             "shared latents"),
         "2e": ("table2_equivariant", "Table 2 (equivariant): sparse loadings, private latents",
                "Hirt et al. 2024, Table 2 (equivariant columns): sparse linear-Gaussian "
                "simulation, shared and private latents")}
GAP = "gap"  # a column in scientific notation
# (column, record key, decimals) of the main tables and of the diagnostics tables
MAIN = {1: [("rel. LLH gap", "rel_llh_gap", GAP), ("full rec.", "full_reconstruction", 2),
            ("full rate", "full_rate", 2), ("cross rec.", "cross_reconstruction", 2),
            ("cross rate", "cross_rate", 2)],
        2: [("LLH gap", "rel_llh_gap", GAP), ("MCC", "mcc", 2)],
        "2e": [("LLH gap", "rel_llh_gap", GAP), ("MCC u", "mcc", 2), ("MCC z", "mcc_shared", 2)]}
GAPS = [("gap, bias profiled", "rel_llh_gap_bias_profiled", GAP),
        ("gap floor", "rel_llh_gap_floor", GAP)]
PER_POINT = [("bound / point", "bound_per_point", 2),
             ("exact LLH / point", "llh_model_per_point", 2),
             ("σ_min(W)", "min_singular_value", 2)]
DIAG = {1: GAPS + [("partial rec.", "reconstruction", 2), ("partial rate", "rate", 2),
                   ("conditional rec.", "conditional_reconstruction", 2)] + PER_POINT,
        2: [("MCC (posterior mean)", "mcc_posterior_mean", 2),
            ("strong MCC (sample)", "strong_mcc", 2)] + GAPS + PER_POINT,
        "2e": [("MCC u (mean)", "mcc_posterior_mean", 2),
               ("MCC z (mean)", "mcc_shared_posterior_mean", 2),
               ("strong MCC u", "strong_mcc", 2)] + GAPS + PER_POINT}
SUMMARY_KEYS = tuple(dict.fromkeys(k for cols in (*MAIN.values(), *DIAG.values())
                                   for _, k, _ in cols if k != "min_singular_value"))
REF_KEY = {"rel_llh_gap_bias_profiled": "rel_llh_gap"}  # the true model's own biases
LEARNABLE = [k for k in NAMES if "pooling" in k or "attention" in k]
NO_PAPER = object()


# --- runs and their cells ---------------------------------------------------------------------
def table_key(name: str):
    """CLI table name -> the key stored in the records (1, 2 or "2e")."""
    return int(name) if name in ("1", "2") else name


def rows_of(args, table):  # the aggregator / guide keys a run trains for ``table``
    return list(args.pe_guides if table == "2e" else args.aggregators)


def epochs_of(args, table):
    return {1: args.epochs1, 2: args.epochs2, "2e": args.epochs2e}[table]


def seeds_of(args, table):
    return {1: args.seeds, 2: args.seeds2, "2e": args.seeds2e}[table]


def order(table):
    return list(PE_GUIDES) if table == "2e" else list(AGGREGATOR_NAMES)


def summarise(records):
    """``{"table<t>/<row>/<bound>": {key: (mean, std), ..., "num_seeds": n}}``."""
    cells = {}
    for r in records:
        cells.setdefault((r["table"], r["aggregator"], r["bound"]), []).append(r)
    out = {}
    for (t, a, b), rs in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        s = {k: mean_std([r[k] for r in rs]) for k in SUMMARY_KEYS if k in rs[0]}
        if "loading_singular_values" in rs[0]:
            s["min_singular_value"] = mean_std([min(r["loading_singular_values"]) for r in rs])
        out[f"table{t}/{a}/{b}"] = s | {"num_seeds": len(rs)}
    return out


def sci(cell) -> str:
    """``(mean, std)`` as ``"1.23e-04 ± 4.5e-05"``."""
    mean, std = cell
    if mean is None or not math.isfinite(mean):
        return MISSING
    return f"{mean:.2e}" + ("" if std is None else f" ± {std:.1e}")


def cell(ours, digits, paper=NO_PAPER, paper_digits=2) -> str:
    """Our ``(mean, std)`` beside the paper's number (``lost`` where it is None)."""
    text = sci(ours) if digits == GAP else fmt(ours, digits)
    if paper is NO_PAPER:
        return text
    if paper is None:
        return f"{text} (lost)"
    paper = tuple(paper) if isinstance(paper, list) else paper
    return f"{text} ({fmt(paper, paper_digits)})" if digits == GAP else beside(ours, paper, digits)


def main_table(t, summary, refs):
    paper = PAPER[f"table{t}"]
    digits = {k: d if d == GAP else max(d, paper["digits"].get(k, 2)) for _, k, d in MAIN[t]}
    cols = [(c, b) for c in MAIN[t] for b in BOUNDS] if t == 1 else [
        (c, b) for b in BOUNDS for c in MAIN[t]]
    rows = []
    for agg in order(t):
        ran = [b for b in BOUNDS if f"table{t}/{agg}/{b}" in summary]
        if ran or agg in paper:
            rows.append([NAMES[agg] + ("" if ran else " (paper only)")] + [cell(
                summary.get(f"table{t}/{agg}/{b}", {}).get(k, (math.nan, None)), digits[k],
                paper.get(agg, {}).get(b, {}).get(k, NO_PAPER), paper["digits"].get(k, 2))
                for (_, k, _), b in cols])
    if refs:
        rows.append(["exact posterior, true model"] + [
            cell(mean_std([x[k] for x in refs]), digits[k]) for (_, k, _), _ in cols])
    head = ["Guide" if t == "2e" else "Aggregation"] + [f"{b}: {c}" for (c, _, _), b in cols]
    return markdown_table(head, rows)


def diag_table(t, summary, refs, true_sv):
    rows = [[NAMES[agg], b] + [cell(s.get(k, (math.nan, None)), d) for _, k, d in DIAG[t]]
            for agg in order(t) for b in BOUNDS if (s := summary.get(f"table{t}/{agg}/{b}"))]
    if refs:
        rows.append(["exact posterior, true model", "reference"] + [
            fmt(true_sv) if k == "min_singular_value" else
            cell(mean_std([x[REF_KEY.get(k, k)] for x in refs]), d)
            if REF_KEY.get(k, k) in refs[0] else MISSING for _, k, d in DIAG[t]])
    return markdown_table(["Guide" if t == "2e" else "Aggregation", "Bound"]
                          + [c for c, _, _ in DIAG[t]], rows)


# --- provenance of other results files -----------------------------------------------------
def aggregator_name(name: str) -> str:
    """The registry's spelling (earlier runs and commands spelled ``sumpooling_mix``)."""
    return registry.ALIASES["aggregator"].get(name, name)


def read_results(path) -> dict:
    """A ``results.json``, its runs' aggregators in the registry's spelling."""
    payload = json.loads(Path(path).read_text())
    for r in payload["runs"]:
        r["aggregator"] = aggregator_name(r["aggregator"])
    return payload


def load_included(args):
    """Runs of earlier ``results.json`` files for rows this run does not train."""
    out = []
    for path in args.include:
        payload = read_results(path)
        own = {t: set(rows_of(args, t)) for t in args.table_keys}
        runs = [r for r in payload["runs"]
                if r["table"] in own and r["aggregator"] not in own[r["table"]]]
        cfg = payload.get("config", {})
        out.append({"path": str(path), "argv": cfg.get("argv", []),
                    "wall": payload.get("wall_seconds", float("nan")),
                    "hidden": " x ".join(map(str, cfg.get("hidden", []))), "runs": runs})
    return out


SETTINGS = ("num_points", "batch_size", "lr", "clip", "hidden", "agg_hidden", "pooling_dim",
            "num_heads", "attention_dim", "mlp_dim", "num_components", "beta", "num_particles",
            "masking", "mixture_form", "learn_noise", "noise1", "modalities2", "latent_dim2",
            "private_dim", "dtype")  # of a run (--merge checks them)


def load_merged(args, records):
    """Runs of earlier ``results.json`` files for the rows trained here, with other seeds."""
    have = {(r["table"], r["aggregator"], r["bound"], r["seed"]) for r in records}
    have_refs = {(t, s) for t in args.table_keys for s in seeds_of(args, t)}
    out = []
    for path in args.merge or []:
        payload = read_results(path)
        cfg = payload.get("config", {})
        diff = [k for k in SETTINGS if k in cfg and cfg[k] != getattr(args, k)]
        if diff:
            raise ValueError(f"--merge {path}: settings differ from this run's: {diff}")
        runs = []
        for r in payload["runs"]:
            key = (r["table"], r["aggregator"], r["bound"], r["seed"])
            if (r["table"] in args.table_keys and r["aggregator"] in rows_of(args, r["table"])
                    and r["bound"] in args.bounds and r["epochs"] == epochs_of(args, r["table"])
                    and key not in have):
                have.add(key)
                runs.append(r)
        refs = {}
        for t in args.table_keys:
            for ref in payload.get("reference_exact_posterior", {}).get(f"table{t}", []):
                if (t, ref["seed"]) not in have_refs and any(
                        r["table"] == t and r["seed"] == ref["seed"] for r in runs):
                    have_refs.add((t, ref["seed"]))
                    refs.setdefault(t, []).append(ref)
        out.append({"path": str(path), "argv": cfg.get("argv", []),
                    "wall": payload.get("wall_seconds", float("nan")), "runs": runs,
                    "refs": refs, "note": payload.get("note")})
    return out


def merged_provenance(merged):
    """What ``results.json`` stores of the merged files: provenance and the (run) keys taken."""
    return [{k: v for k, v in m.items() if k not in ("runs", "refs")}
            | {"runs": [[r["table"], r["aggregator"], r["bound"], r["seed"]] for r in m["runs"]]}
            for m in merged]


def _names(runs):
    return ", ".join(NAMES[n] for n in sorted({r["aggregator"] for r in runs},
                                              key=list(NAMES).index))


def _seeds(runs):
    return ", ".join(map(str, sorted({r["seed"] for r in runs})))


def provenance(table, included, merged):
    lines = []
    for m in merged:
        if runs := [r for r in m["runs"] if r["table"] == table]:
            plural = "s" if len({r["seed"] for r in runs}) > 1 else ""
            lines.append(f"- Merged into the cells: seed{plural} {_seeds(runs)} of rows "
                         f"{_names(runs)} (same settings) from `{m['path']}`, generated by "
                         f"`{command_line(SCRIPT, m['argv'])}` "
                         f"(wall time {m['wall'] / 60:.1f} min)."
                         + (f" {m['note']}" if m.get("note") else ""))
    for inc in included:
        if runs := [r for r in inc["runs"] if r["table"] == table]:
            epochs = ", ".join(map(str, sorted({r["epochs"] for r in runs})))
            lines.append(f"- Included rows {_names(runs)}: from `{inc['path']}`, generated by "
                         f"`{command_line(SCRIPT, inc['argv'])}` ({inc['wall'] / 60:.1f} min; "
                         f"{epochs} epochs, seeds {_seeds(runs)}, experts {inc['hidden']}).")
    return lines


# --- the tables' text ------------------------------------------------------------------------
def setup_lines(args, t, rows):
    h, p, experts = args.agg_hidden, args.pooling_dim, " -> ".join(map(str, args.hidden))
    learnable = (f" SumPooling / SelfAttention (the authors' architecture): χ "
                 f"and ρ hidden width {h}, pooling width {p}, {args.num_heads} attention heads, "
                 f"attention width {args.attention_dim}, FFN {args.mlp_dim} (the spec's §4.9: "
                 "256 everywhere)." if set(rows) & set(LEARNABLE) else "")
    lines = [
        f"- **Training:** `pyro_mmvae.train.fit`, Adam lr {args.lr:g}, loss summed over the "
        f"batch, `clamp_gradients({args.clip:g})` (NaN grads -> 0, element-wise clip), "
        f"{args.num_particles} particle(s), STL, beta = {args.beta:g}, {args.dtype}; decoder "
        f"noise {'learned' if args.learn_noise else 'fixed at the true value'}.",
        f"- **Bounds:** masked = `MaskedMultimodalELBO(masking='{args.masking}')`; mixture = "
        f"`MixtureMultimodalELBO(masking='{args.masking}', form='{args.mixture_form}')` "
        "(the authors' form: the masked bound's rho, S = empty set allowed"
        + (", one draw from the mixture guide" if args.mixture_form == "sampled" else "") + ")."]
    if t == "2e":
        return lines + [
            f"- **Guides:** experts MLP D_m -> {experts} -> E = 2(D + P) = "
            f"{2 * (args.latent_dim2 + args.private_dim)} (ReLU). PE-PoE: PoE on the first 2D "
            "features, `IndependentPrivate` on the last 2P; PE-SumPooling: SumPooling and "
            "`PooledPrivate`; PE-SelfAttention: SelfAttention and `AttentionPrivate`. A "
            "masked-out modality's w_m comes from its prior N(0, I) (eq. 10)." + learnable]
    mixtures = (f" Mixture versions: ρ outputs K = {args.num_components} components; "
                "`DiagNormalMixture` samples with implicit reparameterisation."
                if any(r.endswith("-mixture") for r in rows) else "")
    return lines + [
        f"- **Aggregators:** MLP experts D_m -> {experts} -> E = 2D (ReLU) feed every aggregator "
        "(the authors' code). PoE with the prior expert, MoE (uniform over the unimodal "
        "experts), MoPoE (uniform over the PoEs of the non-empty subsets, prior expert in the "
        "full product); "
        "the empty subset gives the prior." + learnable + mixtures + " The paper has no MoPoE "
        "or mixture-aggregator row in its linear tables."]


def data_lines(args, t):
    d, p, m, u = args.latent_dim2, args.private_dim, args.modalities2, args.latent_dim2 + (
        args.modalities2 * args.private_dim if t == "2e" else 0)
    gap = ("- **Metrics:** relative LLH gap = (l_MLE - l_learned) / |l_MLE|, l the exact LLH "
           "summed over the data, l_MLE that of the PCA maximum-likelihood fit")
    mcc = (" MCC = weak MCC (CCA fitted on a random half of the points, applied to the other, "
           "absolute correlations of the canonical variates, Hungarian matching, mean)")
    if t == 1:
        return [
            f"- **Data:** D = 1, x_1 = z + {args.noise1[0]:g} eps_1 (`less_noisy`), x_2 = z + "
            f"{args.noise1[1]:g} eps_2 (`more_noisy`); the paper's setting is not stated in the "
            "text we have, so compare qualitatively.",
            gap + " (here the saturated Gaussian, so the gap is >= 0). Reconstructions and "
            "rates: `rate_distortion` per data point (one S ~ rho per point; S = M counts with "
            f"zero cross terms), averaged, {args.rd_samples} samples per point."]
    study = ("`shared_latent_study`: W_m with orthonormal columns" if t == 2 else
             f"`private_latent_study`: shared z in R^{d}, private w_m in R^{p}, [V_m | W_m] = Q "
             "of a QR of a uniform(-1, 1) matrix, x_m = W_m z + V_m w_m + b_m + eps_m")
    lines = [f"- **Data:** {study}; M = {m} modalities, D_m ~ randint(30, 60), D = {d}, b_m ~ "
             "N(0, I), unit noise; the data seed is the run seed."]
    if t == 2:
        return lines + [
            gap + f" (noise variance estimated).{mcc} between the true z and one sample of "
            "q(z | x). The exact posterior scores about M/(M + 1) = 0.83 (posterior variance "
            "1/(1 + M) per coordinate); an over-confident encoder can score higher."]
    return lines + [
        f"- **Model:** `LinearGaussianModel(dims, {d}, private_dim={p})`: x_m | [z, w_m], noise "
        "fixed at 1, N(0, I) priors.",
        gap + f" with {u} components (not sparse: even the true model has a gap > 0).{mcc} "
        f"between the true u = (z, w_1, ..., w_M) ({u} dimensions) and one guide sample of it "
        f"given all modalities; 'MCC z': the shared {d} coordinates only. The paper does not "
        "say which latents its MCC uses; its number is beside MCC u."]


DIAG_TEXT = {
    1: "the partial terms of `rate_distortion` (x_S from q(z | x_S), its rate) and the "
       "conditional reconstruction of x_{M \\ S} from q(z | x); σ_min(W) = |W| for D = 1 "
       "(true: sqrt(2) stacked).",
    2: "MCC with the posterior mean; strong MCC (no CCA: not meaningful for this rotation-"
       "invariant model); σ_min(W), the smallest singular value of the stacked loadings (true: "
       "sqrt(M); near 0: a latent direction the model does not use).",
    "2e": "MCC with posterior means (z̄ = E[z | x], then E[w_m | z̄, x]); strong MCC of the "
          "sample (no CCA); σ_min(W), the smallest singular value of the stacked loadings (true: "
          "1; near 0: an unused direction). Under the mixture bound x_m, m not in S, is "
          "reconstructed with w_m from its prior (eq. 10), which penalises every private "
          "loading; σ_min(W) shows whether they survived."}
NOTE = ("Cells: mean ± std over the seeds (without ±: one seed), gaps in scientific notation; in "
        "parentheses the paper's number (Table 2: mean ± std over an unknown number of "
        "repetitions), \"lost\" where the copy of the paper we worked from lost it (Table 1: the "
        "paper's PoE values were numerically unstable; an external review quotes ~3.5e-5 for "
        "the masked SumPooling / SelfAttention gaps), none where the paper has no such cell.")
DIAG_NOTE = ("Diagnostics: the gap with the decoder biases at their optimum, the data mean "
             "(reference row: the true model's biases); the gap floor (the closed-form MLE with "
             "the noise fixed at its true value; unconstrained loadings); the final bound and "
             "the exact LLH per data point; ")


def table_lines(t, args, summary, refs, wall, seeds, included, merged, machine):
    epochs = epochs_of(args, t)
    budget = (f"{epochs} epochs = {epochs * (args.num_points // args.batch_size)} steps of batch "
              f"{args.batch_size} (the paper: 4000 epochs = 40,000 steps); N = {args.num_points} "
              "training points, evaluated on the training data")
    rows = [a for a in order(t) if any(f"table{t}/{a}/{b}" in summary for b in BOUNDS)]
    true_sv = {1: math.sqrt(2), 2: math.sqrt(args.modalities2), "2e": 1.0}[t]
    return (header(STEMS[t][2], command=command_line(SCRIPT, args.argv), budget=budget,
                   seeds=seeds, wall_s=wall, machine=machine)
            + provenance(t, included, merged) + data_lines(args, t) + setup_lines(args, t, rows)
            + ["", NOTE, ""] + main_table(t, summary, refs) + ["", DIAG_NOTE + DIAG_TEXT[t], ""]
            + diag_table(t, summary, refs, true_sv) + [""])


def write_outputs(out, args, payload, included=(), merged=()):
    """Write the tables and plots of ``payload`` (a ``results.json``) to ``out``; returns the
    summary of every cell shown."""
    own = payload["runs"] + [r for m in merged for r in m["runs"]]
    shown = own + [r for inc in included for r in inc["runs"]]
    summary = summarise(shown)
    cfg, env = payload["config"], payload.get("environment", {})
    jobs, threads = cfg.get("jobs", 1), env.get("threads", cfg.get("threads", 1))
    machine = (f"the whole run; {jobs} run{'s' if jobs > 1 else ''} in parallel, {threads} "
               f"torch thread{'s' if threads > 1 else ''} each"
               + (f", {env['cpu_count']} CPU cores" if "cpu_count" in env else ""))
    for t in args.table_keys:
        refs = payload["reference_exact_posterior"][f"table{t}"] + [
            x for m in merged for x in m["refs"].get(t, [])]
        seeds = sorted({r["seed"] for r in own if r["table"] == t})
        text = "\n".join(table_lines(t, args, summary, refs, payload["wall_seconds"], seeds,
                                     included, merged, machine))
        stem, title, _ = STEMS[t]
        atomic_write(Path(out) / f"{stem}.md", lambda f: f.write(text), mode="w")
        plot_table(Path(out) / f"{stem}.png", shown, t, title)
    return summary


def rerender(out, parse_args, merge=None):
    """Rewrite the tables and plots of an earlier run from its ``results.json`` (with the
    stored command, runs and wall time); the file is rewritten only when ``merge`` replaces its
    list of merged files."""
    payload = read_results(Path(out) / "results.json")
    args = parse_args(payload["config"]["argv"])
    args.table_keys = [t for t in args.table_keys  # runs from before Table 2e have none
                       if f"table{t}" in payload["reference_exact_posterior"]]
    args.merge = merge if merge is not None else payload["config"].get("merge", [])
    merged = load_merged(args, payload["runs"])
    summary = write_outputs(out, args, payload, load_included(args), merged)
    if merge is not None:
        payload["config"]["merge"] = [str(p) for p in merge]
        payload.update(merged=merged_provenance(merged), summary=summary)
        write_json(Path(out) / "results.json", payload)
    print(f"re-rendered {out}", flush=True)
    return payload


def plot_table(path, records, table, title):
    """Left: final relative LLH gap per aggregator and bound (seeds as dots). Right: the
    training curve of the gap (mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tiny = 1e-9
    rows = [a for a in order(table) if any((r["table"], r["aggregator"]) == (table, a)
                                           for r in records)]
    fig = Figure(figsize=(max(11, 2 * len(rows) + 5), 4.5))
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.subplots(1, 2)
    colors = {"masked": "tab:blue", "mixture": "tab:orange"}
    styles = ("-", "--", ":", "-.")
    width = 0.38
    for j, agg in enumerate(rows):
        for k, b in enumerate(BOUNDS):
            rs = [r for r in records if (r["table"], r["aggregator"], r["bound"]) ==
                  (table, agg, b)]
            if not rs:
                continue
            gaps = np.maximum([r["rel_llh_gap"] for r in rs], tiny)
            xpos = j + (k - 0.5) * width
            ax_bar.bar(xpos, gaps.mean(), width, color=colors[b],
                       label=b if j == 0 else None, alpha=0.7)
            ax_bar.scatter(np.full(len(gaps), xpos), gaps, color="k", s=10, zorder=3)
            curves = np.array([[g for _, g in r["gap_curve"]] for r in rs])
            epochs = [e for e, _ in rs[0]["gap_curve"]]
            ax_curve.plot(epochs, np.maximum(curves.mean(0), tiny), color=colors[b],
                          linestyle=styles[j % len(styles)],
                          marker=None if j < len(styles) else ".",
                          label=f"{NAMES[agg]} / {b}")
    ax_bar.set_xticks(range(len(rows)), [NAMES[a] for a in rows], rotation=20, fontsize=8)
    ax_bar.set(yscale="log", ylabel="relative LLH gap", title="final gap (bars: mean, dots: seeds)")
    ax_bar.legend()
    ax_curve.set(yscale="log", xlabel="epoch", ylabel="relative LLH gap",
                 title="training curve (mean over seeds)")
    ax_curve.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
