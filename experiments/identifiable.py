r"""Seed 004 §5.2: identifiable non-linear models (Tables 3 and 4).

Hirt et al., *Learning multi-modal generative models with permutation-invariant encoders and
tighter variational bounds* (arXiv 2309.00380), Sec. 5.2 and App. K/M. The data follow the
identifiable-VAE construction of Khemakhem et al. (2020): a label :math:`u` selects a Gaussian
for the latent, :math:`z\mid u\sim\mathcal N(m_u,\operatorname{diag}L_u^2)` (so :math:`z` has a
5-component Gaussian-mixture marginal), and the modalities are leaky-ReLU mixings of :math:`z`
plus noise (:mod:`pyro_mmvae.data.identifiable`).

- **Table 3** (``--tables 3``, :func:`~pyro_mmvae.data.bimodal_label_study`): two modalities,
  ``x = lrelu(zA)A + 0.1 eps`` in 2-D and the label ``u`` itself (one-hot, categorical
  likelihood); 4000 points; evaluated on the training data, as the authors' code does: the
  joint importance-sampled log-likelihood (64 samples) summed over the data, and the weak MCC
  between the true ``z`` and one sample of ``q(z | x, u)`` (and of ``q(z | x)``).
- **Table 4** (``--tables 4``, :func:`~pyro_mmvae.data.multimodal_missing_study`): ``M = 5``
  modalities of 25 features, ``x_s = lrelu(lrelu(zA_s)B_s)B_s + 0.5 eps``, ``d = 10``, labels
  unobserved; modalities missing completely at random with rate 0.5 ("partial", CPM-Nets
  generator, separate train/test masks) or none ("full"); 5000 train / 5000 test points
  (shuffled before splitting; ``--authors-split`` reproduces the code's label-ordered split).
  Evaluated on the test set: the importance-sampled log-likelihood of the observed modalities
  (512 samples) summed over the points, and the weak MCC from one sample of
  ``q(z | x_observed)``.

Rows (both tables): PoE, MoE, SumPooling and SelfAttention with the standard-normal prior;
SumPooling, SelfAttention, SumPoolingMixture and SelfAttentionMixture (5 components) with a learned
5-component Gaussian-mixture prior (:class:`~pyro_mmvae.models.GaussianMixturePrior`, optimal
cluster factor). Each is trained with the masked bound (``"ours"``,
:class:`~pyro_mmvae.MaskedMultimodalELBO`, masks drawn within each point's observed set) and the
mixture bound (:class:`~pyro_mmvae.MixtureMultimodalELBO` with the same masking distribution, one
draw from the mixture guide, as in seed 004's code).

Recipe (spec §9.3-9.4): encoders MLP ``D_s -> H -> H -> E`` (ReLU), ``H = E = 128`` (Table 3)
or ``256`` (Table 4), ``E = 2d`` for PoE and MoE; aggregator widths ``H``, 4 heads, one
attention block; decoders Dense(D_s) -> leaky ReLU(0.1) -> Dense(D_s) for the mean (Table 3:
fixed scale 0.1 for ``x``, logits for ``u``; Table 4: learned per-feature scale initialised to
1); Adam, learning rate 5e-4, batch 250, loss summed over the batch, NaN gradients set to 0
and clipped element-wise at 1000; one particle; STL. The paper trains 4000 epochs; the
defaults here are a reduced budget (``--epochs3``, ``--epochs4``), stated in every table.

The paper's log-likelihood columns have lost their units; the magnitudes match the sum over
the data divided by 1000 (spec §11 #10), which is the unit of our LLH columns. MCC: weak
(CCA with ``d`` components fitted on a random half, Pearson, Hungarian matching), evaluated
out of sample; the two MCC columns of Table 3 lost their labels, we report ``q(z | x, u)`` and
``q(z | x)`` (the label's information removed). Every run also records the in-sample and strong
variants, the MCC of the posterior mean and, with the mixture prior, the clustering accuracy
of ``argmax_c p(c | z)``.

Run ``python experiments/identifiable.py --help``; ``--quick`` is a seconds-long smoke run.
Outputs (``--output-dir``): ``table3.md``, ``table4.md`` (our numbers beside the paper's),
``results.json`` (every run), ``table3_latents.png``, ``table4_latents_<partial|full>.png``
(true vs inferred latents coloured by label, first seed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyro
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from tqdm.auto import tqdm

from pyro_mmvae.guides import (MLPEncoder, MoE, MultimodalGuide, PoE, SelfAttention,  # noqa: E402
                               SelfAttentionMixture, SumPooling, SumPoolingMixture)
from pyro_mmvae.models import (GaussianDecoder, GaussianMixturePrior, MultimodalModel,  # noqa: E402
                               StandardNormalPrior)
from pyro_mmvae.models.decoders import CategoricalDecoder  # noqa: E402
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO  # noqa: E402
from pyro_mmvae.data.identifiable import (bimodal_label_study,  # noqa: E402
                                          multimodal_missing_study)
from pyro_mmvae.eval import CCA, clustering_accuracy, log_likelihood, mcc  # noqa: E402
from pyro_mmvae.nn import MLP  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "identifiable"

# Row key -> (aggregator, prior, display name, display prior), in the paper's order.
ROWS = {
    "poe": ("poe", "normal", "PoE", "N(0,I)"),
    "moe": ("moe", "normal", "MoE", "N(0,I)"),
    "sumpooling": ("sumpooling", "normal", "SumPooling", "N(0,I)"),
    "selfattention": ("selfattention", "normal", "SelfAttention", "N(0,I)"),
    "sumpooling+gmm": ("sumpooling", "gmm", "SumPooling", "GMM, K=5"),
    "selfattention+gmm": ("selfattention", "gmm", "SelfAttention", "GMM, K=5"),
    "sumpooling_mix+gmm": ("sumpooling_mix", "gmm", "SumPoolingMixture", "GMM, K=5"),
    "selfattention_mix+gmm": ("selfattention_mix", "gmm", "SelfAttentionMixture", "GMM, K=5"),
}
BOUNDS = ("masked", "mixture")
OBSERVED = ("partial", "full")

# Seed 004 spec §10, verbatim: mean (std) over 5 data sets.
# Table 3: (ours LLH, ours MCC a, ours MCC b, mixture LLH, mixture MCC a, mixture MCC b).
PAPER_TABLE3 = {
    "poe": ("-43.4 (10.74)", "0.98 (0.006)", "0.99 (0.003)", "-318 (361.2)", "0.97 (0.012)",
            "0.98 (0.007)"),
    "moe": ("-20.5 (6.18)", "0.94 (0.013)", "0.93 (0.022)", "-57.9 (6.23)", "0.93 (0.017)",
            "0.93 (0.025)"),
    "sumpooling": ("-17.9 (3.92)", "0.99 (0.004)", "0.99 (0.002)", "-18.9 (4.09)",
                   "0.99 (0.005)", "0.99 (0.008)"),
    "selfattention": ("-18.2 (4.17)", "0.99 (0.004)", "0.99 (0.003)", "-18.6 (3.73)",
                      "0.99 (0.004)", "0.99 (0.007)"),
    "sumpooling+gmm": ("-15.4 (2.12)", "1.00 (0.001)", "0.99 (0.004)", "-18.6 (2.36)",
                       "0.98 (0.008)", "0.99 (0.006)"),
    "selfattention+gmm": ("-15.2 (2.05)", "1.00 (0.001)", "1.00 (0.004)", "-18.6 (2.27)",
                          "0.98 (0.014)", "0.98 (0.006)"),
    "sumpooling_mix+gmm": ("-15.1 (2.15)", "1.00 (0.001)", "0.99 (0.012)", "-18.2 (2.80)",
                           "0.98 (0.010)", "0.99 (0.005)"),
    "selfattention_mix+gmm": ("-15.3 (2.35)", "0.99 (0.005)", "0.99 (0.004)", "-18.4 (2.63)",
                              "0.99 (0.007)", "0.99 (0.007)"),
}
# Table 4: {observed: (ours LLH, ours MCC, mixture LLH, mixture MCC)}.
PAPER_TABLE4 = {
    "poe": {"partial": ("-250.9 (5.19)", "0.94 (0.015)", "-288.4 (8.53)", "0.93 (0.018)"),
            "full": ("-473.6 (9.04)", "0.98 (0.005)", "-497.7 (11.26)", "0.97 (0.008)")},
    "moe": {"partial": ("-250.1 (4.77)", "0.92 (0.022)", "-286.2 (7.63)", "0.90 (0.019)"),
            "full": ("-477.9 (8.50)", "0.91 (0.014)", "-494.6 (9.20)", "0.92 (0.004)")},
    "sumpooling": {"partial": ("-249.6 (4.85)", "0.95 (0.016)", "-275.6 (7.35)", "0.92 (0.031)"),
                   "full": ("-471.4 (8.29)", "0.99 (0.004)", "-480.5 (8.84)", "0.98 (0.005)")},
    "selfattention": {"partial": ("-249.7 (4.83)", "0.95 (0.014)", "-275.5 (7.45)",
                                  "0.93 (0.022)"),
                      "full": ("-471.4 (8.97)", "0.99 (0.002)", "-482.8 (10.51)",
                               "0.98 (0.004)")},
    "sumpooling+gmm": {"partial": ("-247.3 (4.23)", "0.95 (0.009)", "-269.6 (7.42)",
                                   "0.94 (0.018)"),
                       "full": ("-465.4 (8.16)", "0.98 (0.002)", "-475.1 (7.54)",
                                "0.98 (0.003)")},
    "selfattention+gmm": {"partial": ("-247.5 (4.22)", "0.95 (0.013)", "-269.9 (6.06)",
                                      "0.93 (0.022)"),
                          "full": ("-469.3 (4.76)", "0.98 (0.003)", "-474.7 (8.20)",
                                   "0.98 (0.002)")},
    "sumpooling_mix+gmm": {"partial": ("-244.8 (4.44)", "0.95 (0.011)", "-271.9 (6.54)",
                                       "0.93 (0.021)"),
                           "full": ("-464.5 (8.16)", "0.99 (0.003)", "-474.2 (7.61)",
                                    "0.98 (0.004)")},
    "selfattention_mix+gmm": {"partial": ("-245.4 (4.55)", "0.96 (0.010)", "-270.3 (5.96)",
                                          "0.94 (0.016)"),
                              "full": ("-464.4 (8.50)", "0.99 (0.003)", "-473.6 (8.24)",
                                       "0.98 (0.002)")},
}


class LeakyReLU01(nn.LeakyReLU):
    """Leaky ReLU with slope 0.1 (the data's and the decoders' non-linearity)."""

    def __init__(self):
        super().__init__(0.1)


# --------------------------------------------------------------------------------------------
# One run


def make_data(spec):
    """``(train, evaluation)`` :class:`~pyro_mmvae.data.IdentifiableData` of one run."""
    if spec["table"] == 3:
        ds = bimodal_label_study(num_labels=spec["num_labels"], per_label=spec["per_label3"],
                                 latent_dim=2, seed=spec["seed"])
        return ds, ds  # evaluated on the training data, as the authors' code
    rate = spec["missing_rate"] if spec["observed"] == "partial" else 0.0
    return multimodal_missing_study(num_modalities=spec["modalities"],
                                    num_labels=spec["num_labels"],
                                    per_label=spec["per_label4"], latent_dim=spec["latent_dim4"],
                                    modality_dim=spec["modality_dim"], missing_rate=rate,
                                    seed=spec["seed"], authors_split=spec["authors_split"])


def make_model(spec, dims, latent_dim):
    """Decoders Dense(D_s) -> leaky ReLU(0.1) -> Dense(D_s) and the row's prior."""
    decoders = {}
    for m, d in dims.items():
        net = MLP(latent_dim, (d,), d, LeakyReLU01)
        if spec["table"] == 3 and m == "label":
            decoders[m] = CategoricalDecoder(net)
        elif spec["table"] == 3:
            decoders[m] = GaussianDecoder(net, scale=0.1, min_scale=spec["min_scale"])
        else:
            decoders[m] = GaussianDecoder(net, scale=torch.ones(d), learn_scale=True,
                                          min_scale=spec["min_scale"])
    prior_kind = ROWS[spec["row"]][1]
    prior = (GaussianMixturePrior(spec["num_components"], latent_dim) if prior_kind == "gmm"
             else StandardNormalPrior(latent_dim))
    return MultimodalModel(prior, decoders)


def make_guide(spec, dims, latent_dim):
    """MLP encoders ``D_s -> H -> H -> E`` and the row's aggregator (spec §4.9)."""
    agg, h = ROWS[spec["row"]][0], spec["width"]
    fixed = agg in ("poe", "moe")
    e = 2 * latent_dim if fixed else h
    encoders = {m: MLPEncoder(d, e, (h, h)) for m, d in dims.items()}
    common = dict(hidden_dim=h, pooling_dim=h, min_scale=spec["min_scale"])
    attention = dict(common, num_heads=4, attention_dim=h, mlp_dim=h)
    k = spec["num_components"]
    aggregator = {
        "poe": lambda: PoE(min_scale=spec["min_scale"]),
        "moe": lambda: MoE(min_scale=spec["min_scale"]),
        "sumpooling": lambda: SumPooling(e, latent_dim, **common),
        "selfattention": lambda: SelfAttention(e, latent_dim, **attention),
        "sumpooling_mix": lambda: SumPoolingMixture(e, latent_dim, num_components=k, **common),
        "selfattention_mix": lambda: SelfAttentionMixture(e, latent_dim, num_components=k,
                                                          **attention),
    }[agg]()
    return MultimodalGuide(encoders, aggregator)


def make_bound(spec):
    if spec["bound"] == "masked":
        return MaskedMultimodalELBO(masking=spec["masking"])
    return MixtureMultimodalELBO(masking=spec["masking"], form="sampled")


def train(spec, model, guide, data, mask, progress=False):
    """The authors' loop: Adam on the summed loss, NaN gradients -> 0, element-wise clip.
    Returns the per-point loss of every epoch."""
    elbo = make_bound(spec)
    params = [p for p in list(model.parameters()) + list(guide.parameters()) if p.requires_grad]
    optim = torch.optim.Adam(params, lr=spec["lr"])
    n, bsz = len(next(iter(data.values()))), spec["batch_size"]
    steps = n // bsz  # the incomplete last batch is dropped
    gen = torch.Generator().manual_seed(spec["seed"])
    losses = []
    bar = tqdm(range(spec["epochs"]), disable=None if progress else True, desc=run_name(spec),
               leave=False)
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(steps):
            idx = perm[i * bsz:(i + 1) * bsz]
            optim.zero_grad(set_to_none=True)
            loss = elbo.differentiable_loss(model, guide, {m: x[idx] for m, x in data.items()},
                                            {m: o[idx] for m, o in mask.items()})
            loss.backward()
            for p in params:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0).clamp_(-spec["clip"], spec["clip"])
            optim.step()
            total += loss.item()
        losses.append(total / (steps * bsz))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def run_name(spec):
    obs = f" {spec['observed']}" if spec["table"] == 4 else ""
    return f"table {spec['table']}{obs} {spec['row']} {spec['bound']} seed {spec['seed']}"


def run_config(spec: dict) -> dict:
    """Train one configuration and evaluate it; returns a JSON-ready record."""
    with threadpool_limits(limits=spec["threads"]):
        torch.set_num_threads(spec["threads"])
        return _run_config(spec)


def _run_config(spec: dict) -> dict:
    pyro.set_rng_seed(spec["seed"])
    train_ds, eval_ds = make_data(spec)
    dims = {m: x.shape[-1] for m, x in train_ds.data.items()}
    latent_dim = train_ds.latents.shape[-1]
    torch.manual_seed(spec["seed"])
    model = make_model(spec, dims, latent_dim)
    guide = make_guide(spec, dims, latent_dim)
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        losses = train(spec, model, guide, train_ds.data, train_ds.mask, spec["progress"])
    train_s = time.perf_counter() - start
    record = evaluate(spec, model, guide, eval_ds)
    record.update({"table": spec["table"], "row": spec["row"], "bound": spec["bound"],
                   "observed": spec.get("observed"), "seed": spec["seed"],
                   "epochs": spec["epochs"], "steps": spec["epochs"] * (
                       len(train_ds.latents) // spec["batch_size"]),
                   "train_seconds": train_s, "final_loss_per_point": losses[-1],
                   "loss_curve": losses[::max(1, len(losses) // 200)]})
    return record


@torch.no_grad()
def evaluate(spec, model, guide, ds) -> dict:
    """LLH (summed and per point), MCC variants, clustering accuracy; plot arrays for seed 0."""
    with pyro.validation_enabled(False):
        llh = log_likelihood(model, guide, ds.data, ds.mask, num_samples=spec["llh_samples"])
    z_true = ds.latents.double().numpy()
    q = guide.distribution(ds.data, ds.mask)
    sample, mean = q.sample().double().numpy(), q.mean.double().numpy()
    seed = spec["seed"]
    # log_likelihood is NaN for points with nothing observed (none here: the masks keep one)
    record = {"llh_sum": float(llh.nansum()), "llh_per_point": float(llh.nanmean()),
              "num_points": len(z_true)}
    for key, value in mcc(z_true, sample, seed=seed).items():
        record[f"mcc_{key}"] = value
    record["mcc_posterior_mean"] = mcc(z_true, mean, seed=seed)["weak_out"]
    record["mcc_code_cca1"] = mcc(z_true, sample, num_components=1, seed=seed)["weak_out"]
    if spec["table"] == 3:  # the label's information removed: q(z | x)
        x_only = {m: o if m != "label" else torch.zeros_like(o) for m, o in ds.mask.items()}
        q_x = guide.distribution(ds.data, x_only)
        record["mcc_x_only"] = mcc(z_true, q_x.sample().double().numpy(), seed=seed)["weak_out"]
    if isinstance(model.prior, GaussianMixturePrior):
        clusters = model.prior.assign_clusters(guide, ds.data, ds.mask)
        record["clustering_accuracy"] = clustering_accuracy(ds.labels.numpy(), clusters.numpy())
    if seed == spec["plot_seed"]:
        keep = slice(0, spec["plot_points"])
        record["plot"] = {"z_true": z_true[keep].tolist(), "z_mean": mean[keep].tolist(),
                          "labels": ds.labels[keep].tolist()}
        if spec["table"] == 3:
            x = ds.data["x"][keep]
            recon = model.decoders["x"](q.mean[keep]).mean
            record["plot"].update(x=x.tolist(), x_recon=recon.tolist())
    return record


# --------------------------------------------------------------------------------------------
# Tables


def mean_std(values):
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def fmt(cell, digits=2):
    mean, std = cell
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ({std:.{digits}f})")


def cells(records, **where):
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def stat(records, key, scale=1.0):
    return mean_std([r[key] * scale for r in records if key in r])


def budget_line(args, table, records):
    runs = cells(records, table=table)
    seeds = sorted({r["seed"] for r in runs})
    epochs = args.epochs3 if table == 3 else args.epochs4
    steps = runs[0]["steps"] if runs else 0
    minutes = sum(r["train_seconds"] for r in runs) / 60
    return (f"Budget: {epochs} epochs ({steps} steps of batch {args.batch_size}; the paper "
            f"trains 4000 epochs), seeds {seeds}, {len(runs)} runs, {minutes:.1f} CPU-min of "
            f"training in total, {args.threads} thread(s) per run.")


def write_table3(path, args, records, command):
    lines = [
        "# Table 3: bi-modal identifiable model, label as a modality (seed 004 §5.2)", "",
        f"Command: `{command}`", "", budget_line(args, 3, records), "",
        "Data: 5 labels × 800 points, d = 2, `x = lrelu(zA)A + 0.1ε`; evaluated on the "
        "training data. LLH: importance-sampled joint log-likelihood "
        f"({args.llh_samples3} samples) summed over the 4000 points, /1000 (the paper's unit "
        "is lost; its magnitudes match sum/1000). MCC a: weak out-of-sample MCC of one sample "
        "of q(z | x, u); MCC b: of q(z | x). Ours = masked bound; mixture = mixture bound. "
        "Paper values are mean (std) over 5 data sets; ours are mean (std) over the seeds "
        "(one data set and initialisation per seed).", "",
        "| Aggregation | Prior | Ours: LLH | Ours: MCC a | Ours: MCC b | Mixture: LLH | "
        "Mixture: MCC a | Mixture: MCC b | Paper ours: LLH / MCC a / MCC b | "
        "Paper mixture: LLH / MCC a / MCC b |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, (_, _, name, prior) in ROWS.items():
        if not cells(records, table=3, row=row):
            continue
        ours = [cells(records, table=3, row=row, bound=b) for b in BOUNDS]
        vals = []
        for rs in ours:
            vals += [fmt(stat(rs, "llh_sum", 1e-3), 1), fmt(stat(rs, "mcc_weak_out")),
                     fmt(stat(rs, "mcc_x_only"))]
        p = PAPER_TABLE3[row]
        lines.append(f"| {name} | {prior} | " + " | ".join(vals)
                     + f" | {' / '.join(p[:3])} | {' / '.join(p[3:])} |")
    lines += ["", extra_table(records, 3)]
    path.write_text("\n".join(lines) + "\n")


def write_table4(path, args, records, command):
    lines = [
        "# Table 4: multi-modal identifiable model with missing modalities (seed 004 §5.2)",
        "", f"Command: `{command}`", "", budget_line(args, 4, records), "",
        f"Data: {args.modalities} modalities × {args.modality_dim} features, "
        f"d = {args.latent_dim4}, {args.num_labels} unobserved labels; "
        f"{args.per_label4 * args.num_labels // 2} training / test points each "
        f"({'authors’ label-ordered split' if args.authors_split else 'shuffled split'}); "
        f"partial: missing completely at random with rate {args.missing_rate} (train and test "
        "masks drawn separately); full: nothing missing. LLH: importance-sampled log-likelihood "
        f"of the observed test modalities ({args.llh_samples4} samples) summed over the test "
        "points, /1000. MCC: weak out-of-sample MCC of one sample of q(z | x_observed) on the "
        "test set.", "",
    ]
    for observed in OBSERVED:
        if not cells(records, table=4, observed=observed):
            continue
        lines += [f"## {'Partially' if observed == 'partial' else 'Fully'} observed", "",
                  "| Aggregation | Prior | Ours: LLH | Ours: MCC | Mixture: LLH | Mixture: MCC | "
                  "Paper ours: LLH / MCC | Paper mixture: LLH / MCC |",
                  "|---|---|---|---|---|---|---|---|"]
        for row, (_, _, name, prior) in ROWS.items():
            if not cells(records, table=4, row=row, observed=observed):
                continue
            vals = []
            for b in BOUNDS:
                rs = cells(records, table=4, row=row, bound=b, observed=observed)
                vals += [fmt(stat(rs, "llh_sum", 1e-3), 1), fmt(stat(rs, "mcc_weak_out"))]
            p = PAPER_TABLE4[row][observed]
            lines.append(f"| {name} | {prior} | " + " | ".join(vals)
                         + f" | {' / '.join(p[:2])} | {' / '.join(p[2:])} |")
        lines.append("")
    lines.append(extra_table(records, 4))
    path.write_text("\n".join(lines) + "\n")


def extra_table(records, table):
    """Per-point LLH, the other MCC variants and clustering accuracy of every cell."""
    lines = ["## All metrics", "",
             "LLH/pt: mean per point; weak in / strong out / strong in: the other MCC variants; "
             "mean: weak out-of-sample MCC of the posterior mean; CCA-1: the authors' code "
             "variant (one canonical pair, Pearson); cluster acc.: accuracy of "
             "argmax_c p(c | E[z | x]) after the best label permutation (mixture prior only).",
             "", "| Row | Observed | Bound | LLH/pt | MCC weak out | weak in | strong out | "
             "strong in | mean | CCA-1 | cluster acc. | loss/pt | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, (_, _, name, prior) in ROWS.items():
        for observed in (OBSERVED if table == 4 else (None,)):
            for b in BOUNDS:
                rs = cells(records, table=table, row=row, bound=b, observed=observed)
                if not rs:
                    continue
                keys = ("llh_per_point", "mcc_weak_out", "mcc_weak_in", "mcc_strong_out",
                        "mcc_strong_in", "mcc_posterior_mean", "mcc_code_cca1",
                        "clustering_accuracy", "final_loss_per_point", "train_seconds")
                vals = [fmt(stat(rs, k), 0 if k == "train_seconds" else 3) for k in keys]
                lines.append(f"| {name} ({prior}) | {observed or 'full'} | {b} | "
                             + " | ".join(vals) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Figures


def _scatter(ax, xy, labels, title):
    xy = np.asarray(xy)
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=2, vmin=0, vmax=9)
    ax.set_title(title, fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_table3(path, records):
    """True latents, data, and per configuration the inferred latents and reconstructions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in records if r["table"] == 3 and "plot" in r]
    if not runs:
        return
    runs.sort(key=lambda r: (list(ROWS).index(r["row"]), r["bound"]))
    cols = 2 + 2 * len(runs)
    ncols = 6
    nrows = math.ceil(cols / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), squeeze=False)
    axes = axes.ravel()
    first = runs[0]["plot"]
    _scatter(axes[0], first["z_true"], first["labels"], "true z")
    _scatter(axes[1], first["x"], first["labels"], "data x")
    for i, r in enumerate(runs):
        name = f"{ROWS[r['row']][2]} {ROWS[r['row']][3]}, {r['bound']}"
        _scatter(axes[2 + 2 * i], r["plot"]["z_mean"], r["plot"]["labels"], f"E[z|x,u]\n{name}")
        _scatter(axes[3 + 2 * i], r["plot"]["x_recon"], r["plot"]["labels"],
                 f"reconstructed x\n{name}")
    for ax in axes[cols:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_table4(path, records, observed):
    """First two canonical variates (CCA with the true z) of the true and inferred latents."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in records if r["table"] == 4 and r["observed"] == observed and "plot" in r]
    if not runs:
        return
    runs.sort(key=lambda r: (list(ROWS).index(r["row"]), r["bound"]))
    ncols = 4
    nrows = math.ceil(2 * len(runs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    axes = axes.ravel()
    for i, r in enumerate(runs):
        z, zh = np.asarray(r["plot"]["z_true"]), np.asarray(r["plot"]["z_mean"])
        a, b = CCA(2).fit(z, zh).transform(z, zh)
        name = f"{ROWS[r['row']][2]} {ROWS[r['row']][3]}, {r['bound']}"
        _scatter(axes[2 * i], a, r["plot"]["labels"], f"true z (CCA 1-2)\n{name}")
        _scatter(axes[2 * i + 1], b, r["plot"]["labels"], f"E[z|x_obs] (CCA 1-2)\n{name}")
    for ax in axes[2 * len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["3", "4"], choices=["3", "4"])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                   help="Table rows (aggregator[+gmm prior]) for both tables")
    p.add_argument("--rows4", nargs="+", choices=list(ROWS),
                   help="Table 4 rows if different from --rows")
    p.add_argument("--bounds", nargs="+", default=list(BOUNDS), choices=BOUNDS)
    p.add_argument("--observed", nargs="+", default=list(OBSERVED), choices=OBSERVED,
                   help="Table 4 columns: partially (missing rate) or fully observed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--seeds4", nargs="+", type=int, help="Table 4 seeds if different")
    p.add_argument("--epochs3", type=int, default=500, help="paper: 4000")
    p.add_argument("--epochs4", type=int, default=150, help="paper: 4000")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--clip", type=float, default=1000.0)
    p.add_argument("--masking", default="iid_half")
    p.add_argument("--num-components", type=int, default=5,
                   help="K of the mixture prior and of the mixture guides")
    p.add_argument("--num-labels", type=int, default=5)
    p.add_argument("--per-label3", type=int, default=800)
    p.add_argument("--per-label4", type=int, default=2000)
    p.add_argument("--latent-dim4", type=int, default=10)
    p.add_argument("--modalities", type=int, default=5, help="Table 4 M (code default 4)")
    p.add_argument("--modality-dim", type=int, default=25)
    p.add_argument("--missing-rate", type=float, default=0.5)
    p.add_argument("--authors-split", action="store_true",
                   help="Table 4: the authors' unshuffled, label-ordered train/test split")
    p.add_argument("--width3", type=int, default=128)
    p.add_argument("--width4", type=int, default=256)
    p.add_argument("--llh-samples3", type=int, default=64)
    p.add_argument("--llh-samples4", type=int, default=512)
    p.add_argument("--plot-points", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--render", type=Path, metavar="RESULTS",
                   help="only rewrite the tables and figures of --output-dir from an earlier "
                        "run's results.json or results.partial.json (an interrupted run), with "
                        "this command line's table settings")
    p.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: tiny data, 2 epochs, 2 rows")
    args = p.parse_args(argv)
    if args.quick:
        args.rows = ["poe", "sumpooling_mix+gmm"] if args.rows == list(ROWS) else args.rows
        args.seeds, args.epochs3, args.epochs4 = args.seeds[:1], 2, 2
        args.per_label3, args.per_label4, args.latent_dim4 = 100, 100, 3
        args.modalities, args.modality_dim, args.width3, args.width4 = 3, 6, 16, 16
        args.llh_samples3 = args.llh_samples4 = 8
        args.plot_points = 200
    args.rows4 = args.rows4 or args.rows
    args.seeds4 = args.seeds4 or args.seeds
    return args


def specs(args):
    base = {k: getattr(args, k) for k in (
        "batch_size", "lr", "clip", "masking", "num_components", "num_labels", "per_label3",
        "per_label4", "latent_dim4", "modalities", "modality_dim", "missing_rate",
        "authors_split", "threads")}
    base["progress"] = args.jobs == 1
    out = []
    if "3" in args.tables:
        for seed in args.seeds:
            for row in args.rows:
                for bound in args.bounds:
                    out.append(base | dict(table=3, row=row, bound=bound, seed=seed,
                                           epochs=args.epochs3, width=args.width3,
                                           min_scale=1e-3, llh_samples=args.llh_samples3,
                                           plot_seed=args.seeds[0],
                                           plot_points=args.plot_points))
    if "4" in args.tables:
        for seed in args.seeds4:
            for observed in args.observed:
                for row in args.rows4:
                    for bound in args.bounds:
                        out.append(base | dict(table=4, row=row, bound=bound, seed=seed,
                                               observed=observed, epochs=args.epochs4,
                                               width=args.width4, min_scale=5e-4,
                                               llh_samples=args.llh_samples4,
                                               plot_seed=args.seeds4[0],
                                               plot_points=args.plot_points))
    return out


def main(argv=None):
    """Run the experiments; returns the JSON payload that it also writes."""
    args = parse_args(argv)
    command = "python experiments/identifiable.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        payload = json.loads(args.render.read_text())
        runs = payload["runs"] if isinstance(payload, dict) else payload
        render(out, args, runs, payload.get("command", command) if isinstance(payload, dict)
               else command + f"  # rendered from the {len(runs)} runs of {args.render.name}")
        return {"runs": runs}
    start = time.perf_counter()
    todo = specs(args)
    records = []
    partial = out / "results.partial.json"

    def done(rec):
        records.append(rec)
        partial.write_text(json.dumps(records))  # raw runs so far, in case of a crash
        print(f"[{time.perf_counter() - start:7.1f}s] {run_name(rec)}: LLH/1000 "
              f"{rec['llh_sum'] / 1000:.2f}, MCC {rec['mcc_weak_out']:.3f} "
              f"({rec['train_seconds']:.0f}s)", flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for rec in pool.map(run_config, todo):
                done(rec)
    else:
        for spec in todo:
            done(run_config(spec))
    wall = time.perf_counter() - start
    render(out, args, records, command)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "description": "seed 004 §5.2 identifiable non-linear models; see table3.md, table4.md",
        "command": command, "config": config,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "pyro": pyro.__version__},
        "wall_seconds": wall,
        "paper": {"table3": PAPER_TABLE3, "table4": PAPER_TABLE4},
        "runs": [{k: v for k, v in r.items() if k != "plot"} for r in records],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    partial.unlink()
    print(f"wrote {out} in {wall / 60:.1f} min", flush=True)
    return payload


def render(out, args, records, command):
    """Markdown tables and figures of ``records``."""
    if any(r["table"] == 3 for r in records):
        write_table3(out / "table3.md", args, records, command)
        plot_table3(out / "table3_latents.png", records)
    if any(r["table"] == 4 for r in records):
        write_table4(out / "table4.md", args, records, command)
        for observed in OBSERVED:
            plot_table4(out / f"table4_latents_{observed}.png", records, observed)


if __name__ == "__main__":
    main()
