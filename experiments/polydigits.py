r"""MoPoE's PolyMNIST experiment (Sutter et al. 2021, Fig. 3) on PolyDigits, for every aggregator
and bound.

Thomas M. Sutter, Imant Daunhawer, Julia E. Vogt, *Generalized Multimodal ELBO* (ICLR 2021,
arXiv:2105.02470); the masked bound of Marcel Hirt, Domenico Campolo, Victoria Leong,
Juan-Pablo Ortega, *Learning multi-modal generative models with permutation-invariant encoders
and tighter variational bounds* (TMLR 2024, arXiv:2309.00380).

PolyDigits (:func:`pyro_mmvae.data.load_poly_digits`) is the PolyMNIST recipe rebuilt from
scikit-learn's bundled 8×8 digits: five image modalities ``m0``..``m4`` (3×16×16), each tuple
five different digits of the same class on five modality-specific backgrounds; 10,000 training
and 2,000 test tuples built from disjoint digits (PolyMNIST: 60,000 / 10,000 tuples of 3×28×28).

Rows: the guide aggregators PoE, MoE, MoPoE, SumPooling and SelfAttention (``--aggregators``)
× the masked bound of Hirt et al. and the mixture bound of MMVAE/MoPoE (``--bounds``; MVAE's
``subsampled`` bound is available too), several seeds (``--seeds``). Each run is exactly
``pyro-mmvae train --dataset polydigits --aggregator A --bound B --seed S --epochs E`` plus this
script's recipe (``--beta 2.5``, MoPoE's PolyMNIST value) and the ``pyro-mmvae train`` options
given to the script (for every run), trained with :func:`pyro_mmvae.train.fit`. The bounds
keep the CLI's defaults: the masked bound with ρ = iid_half; the mixture bound with S = all
modalities and the stratified estimator, which with the MoE guide is MMVAE's objective and with
the MoPoE guide MoPoE's (the paper's rows), and with PoE, SumPooling or SelfAttention the plain
joint ELBO (``--masking iid_half --mixture-form sampled`` trains the mixture bound in Hirt et
al.'s form instead). MoPoE under the stratified mixture bound decodes all 31 subset components
per data point: ~30× the cost of any other run. Each run is then evaluated on the first
``--eval-points`` test tuples:

- cross coherence against the number of input modalities (1..4; a generated modality outside
  the inputs is coherent when the modality's classifier recovers the tuple's label; averaged
  over targets and over all subsets of that size), self coherence (1..5), leave-one-out
  coherence and joint (unconditional) coherence — with five classifiers trained once per
  output directory on the training split and shared by all runs;
- linear latent classification against the number of inputs (1..5): logistic regression on the
  posterior means of ``--latent-train-points`` (500) random training tuples, MoPoE's protocol;
- the importance-sampled test log-likelihood ``log p(x)`` (``--is-samples``) and the
  leave-one-out conditionals ``log p(x_m | x_rest)``.

The paper reports PolyMNIST only as curves (no numbers) except the joint coherence of MVAE,
MMVAE and MoPoE; ``table.md`` prints those beside ours, labelled as PolyMNIST (28×28, latent
512, 300 epochs) numbers for reference — the data and budgets are not the same. The paper's
numbers are read from ``polydigits_paper.json`` beside this script.

Run ``python experiments/polydigits.py --help``; ``--quick`` is a seconds-long smoke run.
Outputs (``--output-dir``): ``table.md`` (our numbers, mean (std) over seeds, beside the
paper's), ``results.json`` (every run: all subsets and targets, loss curves, timings),
``coherence.png`` (cross coherence and latent accuracy vs number of inputs), and the shared
``classifiers.pt`` / ``classifiers.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import _multimodal_common as common  # siblings: the script's own folder is importable
import _multimodal_tables as tables

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "polydigits"
DATASET = "polydigits"
MODALITIES = ("m0", "m1", "m2", "m3", "m4")
AGGREGATORS = ("poe", "moe", "mopoe", "sumpooling", "selfattention")
BOUNDS = ("masked", "mixture")
ALL_BOUNDS = ("masked", "mixture", "subsampled")
DEFAULT_EPOCHS = 30
RECIPE = {"beta": 2.5}  # MoPoE App. D.2: beta = 2.5 for all PolyMNIST models
NAMES = tables.NAMES

PAPER_FILE = Path(__file__).with_name("polydigits_paper.json")


def load_paper(path: Path = PAPER_FILE) -> dict:
    """The MoPoE paper's PolyMNIST numbers (``polydigits_paper.json``: Sutter et al., ICLR 2021,
    arXiv:2105.02470; Fig. 3 has curves only, its caption the joint coherence, mean (std) over
    5 runs): ``joint_coherence`` ``{(aggregator, bound): (paper model, "mean (std)")}`` (MVAE =
    PoE + subsampled, MMVAE = MoE + mixture, MoPoE = MoPoE + mixture) and ``pattern``, the
    reported pattern of its curves."""
    paper = json.loads(path.read_text(encoding="utf-8"))
    return {"joint_coherence": {(e["aggregator"], e["bound"]): (model, tables.paper_cell(
                e["value"], paper["digits"])) for model, e in paper["joint_coherence"].items()},
            "pattern": paper["pattern"]}


PAPER = load_paper()


def parse_args(argv=None):
    parser = common.experiment_parser(__doc__, AGGREGATORS, BOUNDS, ALL_BOUNDS, DEFAULT_OUTPUT,
                                      RECIPE, DEFAULT_EPOCHS)
    return common.parse_args(parser, argv, DATASET)


def loo_subsets():
    """The five leave-one-out input subsets, ``m1+m2+m3+m4`` .. ``m0+m1+m2+m3``."""
    return ["+".join(x for x in MODALITIES if x != m) for m in MODALITIES]


def main(argv=None):
    """Run the experiment; returns the JSON payload that it also writes."""
    args = parse_args(argv)
    return common.run_experiment(
        args, argv, "polydigits.py",
        "MoPoE PolyMNIST (Fig. 3) on PolyDigits; see table.md", loo_subsets(), render)


# --------------------------------------------------------------------------------------------
# Tables and figure


def render(out: Path, payload: dict) -> None:
    write_table(out / "table.md", payload)
    runs = payload["runs"]
    if tables.completed(runs):
        tables.plot_curves(out / "coherence.png", runs,
                           "PolyDigits: mean over seeds (bars: min–max)", len(MODALITIES), NAMES)


def _row(aggregator, bound):
    return f"| {NAMES.get(aggregator, aggregator)} | {bound} |"


def write_table(path: Path, payload: dict) -> None:
    runs = payload["runs"]
    configs = tables.configurations(runs)
    cfg = payload.get("config", {})
    m = len(MODALITIES)
    lines = [
        "# PolyDigits: coherence and latent classification vs number of inputs "
        "(MoPoE PolyMNIST, Fig. 3)", "",
        *tables.budget_lines(payload), "",
        "Data: PolyDigits (5 image modalities, 3×16×16, built from scikit-learn's 8×8 digits; "
        "10,000 training / 2,000 test tuples from disjoint digits). Evaluation on the first "
        f"{cfg.get('eval_points', '?')} test tuples. Our numbers are mean (std) over the seeds.",
        "", tables.classifier_line(payload), "",
        "## Cross coherence vs number of input modalities", "",
        "Fraction of generated modalities *outside* the inputs that their classifier labels "
        "correctly (the decoder mean from one z ~ q(z | x_S)), averaged over targets and all "
        "subsets S of that size; leave-one-out: each modality from the other four; joint: "
        f"{cfg.get('joint_samples', '?')} unconditional samples on which all five "
        "classifiers agree.", "",
        "| Aggregator | Bound | " + " | ".join(str(k) for k in range(1, m))
        + " | leave-one-out | joint |",
        "|---|---|" + "---|" * (m + 1),
    ]
    for aggregator, bound in configs:
        rs = [r for r in runs if (r["aggregator"], r["bound"]) == (aggregator, bound)]
        vals = [tables.cell(rs, lambda r, k=k: tables._get(
            r["coherence"]["cross_by_num_inputs"], k)) for k in range(1, m)]
        vals += [tables.cell(rs, lambda r: r["coherence"]["leave_one_out_mean"]),
                 tables.cell(rs, lambda r: r["joint_coherence"])]
        lines.append(_row(aggregator, bound) + " " + " | ".join(vals) + " |")
    lines += [
        "", "Reference — MoPoE paper, **PolyMNIST** (3×28×28, 60k tuples, latent 512, 300 "
        "epochs, β = 2.5, 5 runs; *not the same data or budget*): the curves against the "
        "number of inputs are published as a figure only (no numbers); the joint coherence "
        "is in its caption:", "",
        "| Paper model (our aggregator, bound) | joint coherence |", "|---|---|",
    ]
    for (aggregator, bound), (model, value) in PAPER["joint_coherence"].items():
        lines.append(f"| {model} ({NAMES[aggregator]}, {bound}) | {value} |")
    lines += ["", f"Reported pattern: {PAPER['pattern']}", "",
              "## Latent linear classification vs number of input modalities", "",
              "Accuracy of a logistic regression on the posterior means of q(z | x_S), fitted on "
              f"{cfg.get('latent_train_points', '?')} random training tuples, on the test "
              "tuples; averaged over all subsets S of that size. (PolyMNIST: figure only.)", "",
              "| Aggregator | Bound | " + " | ".join(str(k) for k in range(1, m + 1)) + " |",
              "|---|---|" + "---|" * m]
    for aggregator, bound in configs:
        rs = [r for r in runs if (r["aggregator"], r["bound"]) == (aggregator, bound)]
        vals = [tables.cell(rs, lambda r, k=k: tables._get(
            r["latent_classification"]["by_num_inputs"], k)) for k in range(1, m + 1)]
        lines.append(_row(aggregator, bound) + " " + " | ".join(vals) + " |")
    lines += ["", "## Self coherence vs number of input modalities", "",
              "Reconstruction coherence: generated modalities *inside* the inputs.", "",
              "| Aggregator | Bound | " + " | ".join(str(k) for k in range(1, m + 1)) + " |",
              "|---|---|" + "---|" * m]
    for aggregator, bound in configs:
        rs = [r for r in runs if (r["aggregator"], r["bound"]) == (aggregator, bound)]
        vals = [tables.cell(rs, lambda r, k=k: tables._get(
            r["coherence"]["self_by_num_inputs"], k)) for k in range(1, m + 1)]
        lines.append(_row(aggregator, bound) + " " + " | ".join(vals) + " |")
    lines += ["", "## Test log-likelihood and training", "",
              f"Importance-sampled (K = {cfg.get('is_samples', '?')}) log-likelihood per test "
              "tuple in nats (Laplace likelihood with MoPoE's fixed scale 0.75): the joint "
              "log p(x) and the mean over m of the leave-one-out conditional "
              "log p(x_m | x_rest) = log p(x) − log p(x_rest). Loss: the training bound per "
              "data point in the last epoch (bounds differ, so compare losses within a "
              "bound only).", "",
              "| Aggregator | Bound | log p(x) | log p(x_m given rest) | final loss | "
              "s per epoch | parameters |", "|---|---|---|---|---|---|---|"]
    for aggregator, bound in configs:
        rs = [r for r in runs if (r["aggregator"], r["bound"]) == (aggregator, bound)]

        def loo(r):
            values = list(r["test_conditional_log_likelihood"].values())
            return sum(values) / len(values)

        vals = [tables.cell(rs, lambda r: r["test_log_likelihood"], 1),
                tables.cell(rs, loo, 1),
                tables.cell(rs, lambda r: r["final_loss_per_point"], 1),
                tables.cell(rs, lambda r: sum(r["epoch_seconds"]) / len(r["epoch_seconds"]),
                            1),
                str(rs[0].get("num_parameters", "?"))]
        lines.append(_row(aggregator, bound) + " " + " | ".join(vals) + " |")
    lines += ["", "Figure: `coherence.png` (cross coherence and latent accuracy against the "
              "number of inputs; colour = aggregator, line style = bound)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
