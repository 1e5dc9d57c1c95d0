r"""Identifiable non-linear models of Hirt et al. 2024 (TMLR, arXiv:2309.00380), §5.2: Tables 3
and 4.

Hirt et al., *Learning multi-modal generative models with permutation-invariant encoders and
tighter variational bounds* (TMLR 2024, arXiv:2309.00380), Sec. 5.2 and App. K/M. The data
follow the identifiable-VAE construction of Khemakhem et al. (2020): a label :math:`u` selects
a Gaussian for the latent (a 5-component Gaussian-mixture marginal) and the modalities are
leaky-ReLU mixings of :math:`z` plus noise (:mod:`pyro_mmvae.data.identifiable`).

- **Table 3** (``--tables 3``, :func:`~pyro_mmvae.data.bimodal_label_study`): ``x`` in 2-D and
  the label ``u`` (one-hot, categorical likelihood); 4000 points; evaluated on the training
  data, as the authors' code: the joint importance-sampled log-likelihood (64 samples) summed
  over the data, and the weak MCC of one sample of ``q(z | x, u)`` (and of ``q(z | x)``).
- **Table 4** (``--tables 4``, :func:`~pyro_mmvae.data.multimodal_missing_study`): 5 modalities
  of 25 features, ``d = 10``, labels unobserved; modalities missing completely at random with
  rate 0.5 ("partial") or none ("full"); 5000 train / 5000 test points (``--authors-split``:
  the code's label-ordered split). Evaluated on the test set: the log-likelihood of the
  observed modalities (512 samples) summed over the points, the weak MCC of one sample of
  ``q(z | x_observed)``.

Rows: PoE, MoE, SumPooling and SelfAttention with N(0, I); SumPooling, SelfAttention,
SumPoolingMixture and SelfAttentionMixture with a learned 5-component Gaussian-mixture prior
(``--rows``, aggregators spelled as the CLI's: ``sumpooling-mixture+gmm``; the earlier
``sumpooling_mix+gmm`` is accepted). Each is trained with the masked bound (``masked``, the
paper's "ours") and the mixture bound (``mixture``, one draw from the mixture guide), both
with masks drawn within each point's observed set.

Recipe (the paper's appendix and the authors' code): encoders MLP ``D_s -> H -> H -> E``
(ReLU), ``H = E = 128`` (Table 3) or ``256`` (Table 4), ``E = 2d`` for PoE and MoE;
aggregators of width ``H``, 4 heads; decoders Dense(D_s) -> leaky ReLU(0.1) -> Dense(D_s);
training with :func:`pyro_mmvae.train.fit`: Adam 5e-4, batch 250, loss summed over the batch,
NaN gradients set to 0 and clipped element-wise at 1000
(:func:`~pyro_mmvae.train.clamp_gradients`, the
authors' chain), one particle, STL. The paper trains 4000 epochs; the defaults are a reduced
budget (``--epochs3``, ``--epochs4``), stated in every table. LLH columns are the sum over the
data / 1000 (the unit the paper's magnitudes imply); MCC is weak (CCA with ``d`` components on a
random half, Pearson, Hungarian matching), out of sample.

Outputs (``--output-dir``): ``table3.md``, ``table4.md`` (ours beside the paper's numbers from
``identifiable_paper.json``), ``results.json``, ``table3_latents.png``,
``table4_latents_<partial|full>.png``. ``--rerender DIR`` rewrites the tables (and, from a
``results.partial.json``, the figures) of an earlier run in ``DIR`` with its recorded settings.

    python experiments/identifiable.py --quick          # seconds (the tests' smoke run)
    python experiments/identifiable.py --rerender experiments/results/identifiable/table3
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyro
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from _identifiable_report import (BOUNDS, OBSERVED, PAPER, ROWS, plot_figures,
                                  row_key, run_key, write_tables)
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO
from pyro_mmvae.data.identifiable import bimodal_label_study, multimodal_missing_study
from pyro_mmvae.eval import clustering_accuracy, log_likelihood, mcc
from pyro_mmvae.guides import MLPEncoder, MultimodalGuide
from pyro_mmvae.models import (GaussianDecoder, GaussianMixturePrior, MultimodalModel,
                               StandardNormalPrior)
from pyro_mmvae.models.decoders import CategoricalDecoder
from pyro_mmvae.nn import MLP
from pyro_mmvae.registry import AGGREGATORS, AggregatorSizes, build_aggregator
from pyro_mmvae.tables import command_line, machine_summary, repository_relative
from pyro_mmvae.train import clamp_gradients, fit, write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "experiments" / "results" / "identifiable"


class LeakyReLU01(nn.LeakyReLU):
    """Leaky ReLU with slope 0.1 (the data's and the decoders' non-linearity)."""

    def __init__(self):
        super().__init__(0.1)


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
    prior = (GaussianMixturePrior(spec["num_components"], latent_dim)
             if ROWS[row_key(spec["row"])][1] == "gmm" else StandardNormalPrior(latent_dim))
    return MultimodalModel(prior, decoders)


def make_guide(spec, dims, latent_dim):
    """MLP encoders ``D_s -> H -> H -> E`` and the row's aggregator (the registry's, of width
    H throughout: hidden, pooling, attention and MLP)."""
    agg, h = ROWS[row_key(spec["row"])][0], spec["width"]
    e = 2 * latent_dim if AGGREGATORS[agg].experts else h
    encoders = {m: MLPEncoder(d, e, (h, h)) for m, d in dims.items()}
    sizes = AggregatorSizes(width=h, attention_width=h, num_components=spec["num_components"],
                            min_scale=spec["min_scale"])
    return MultimodalGuide(encoders, build_aggregator(agg, e, latent_dim, len(dims), sizes))


def make_bound(spec):
    if spec["bound"] == "masked":
        return MaskedMultimodalELBO(masking=spec["masking"])
    return MixtureMultimodalELBO(masking=spec["masking"], form="sampled")


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
    # seed=None: the global RNG stays as seeded above; the generator shuffles the batches
    history = fit(model, guide, make_bound(spec), train_ds.data, mask=train_ds.mask,
                  epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
                  seed=None, generator=torch.Generator().manual_seed(spec["seed"]),
                  gradient_transform=clamp_gradients(spec["clip"]), progress=spec["progress"])
    train_s = time.perf_counter() - start
    losses = history["loss"]
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
# Driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["3", "4"], choices=["3", "4"])
    p.add_argument("--rows", nargs="+", type=row_key, default=list(ROWS), choices=list(ROWS),
                   help="Table rows (aggregator[+gmm prior]) for both tables")
    p.add_argument("--rows4", nargs="+", type=row_key, choices=list(ROWS),
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
    p.add_argument("--clip", type=float, default=1000.0, help="element-wise gradient clip")
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
    p.add_argument("--rerender", type=Path, metavar="DIR",
                   help="only rewrite the tables of DIR from its results.json (or "
                        "results.partial.json, of an interrupted run: also the figures) "
                        "with the settings recorded there; no training")
    p.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: tiny data, 2 epochs, 2 rows")
    args = p.parse_args(argv)
    if args.quick:
        args.rows = ["poe", "sumpooling-mixture+gmm"] if args.rows == list(ROWS) else args.rows
        args.seeds, args.epochs3, args.epochs4 = args.seeds[:1], 2, 2
        args.per_label3, args.per_label4, args.latent_dim4 = 100, 100, 3
        args.modalities, args.modality_dim, args.width3, args.width4 = 3, 6, 16, 16
        args.llh_samples3 = args.llh_samples4 = 8
        args.plot_points = 200
    args.rows4 = args.rows4 or args.rows
    args.seeds4 = args.seeds4 or args.seeds
    return args


def specs(args, progress=False):
    base = {k: getattr(args, k) for k in (
        "batch_size", "lr", "clip", "masking", "num_components", "num_labels", "per_label3",
        "per_label4", "latent_dim4", "modalities", "modality_dim", "missing_rate",
        "authors_split", "threads")}
    base["progress"] = progress
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
    """Run the experiments; returns the JSON payload that it also writes (or, with
    ``--rerender``, the payload it rendered)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.rerender:
        return rerender(args.rerender)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(vars(args), output_dir=repository_relative(out, ROOT), rerender=None)
    payload = {
        "description": ("Hirt et al. 2024, §5.2: identifiable non-linear models; see "
                        "table3.md, table4.md"),
        "command": command_line("experiments/identifiable.py", argv), "config": config,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "pyro": pyro.__version__},
        "machine": f"{machine_summary(args.threads)} per run, {args.jobs} "
                   f"run{'s' if args.jobs > 1 else ''} at a time",
        "paper": PAPER, "runs": []}
    start = time.perf_counter()
    partial = out / "results.partial.json"

    def done(rec):
        payload["runs"].append(rec)
        write_json(partial, payload)  # the runs so far, for --rerender after a crash
        print(f"[{time.perf_counter() - start:7.1f}s] {run_name(rec)}: LLH/1000 "
              f"{rec['llh_sum'] / 1000:.2f}, MCC {rec['mcc_weak_out']:.3f} "
              f"({rec['train_seconds']:.0f}s)", flush=True)

    todo = specs(args, progress=args.jobs == 1 and sys.stderr.isatty())
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for rec in pool.map(run_config, todo):
                done(rec)
    else:
        for spec in todo:
            done(run_config(spec))
    payload["wall_seconds"] = time.perf_counter() - start
    render(out, args, payload)
    payload["runs"] = [{k: v for k, v in r.items() if k != "plot"} for r in payload["runs"]]
    write_json(out / "results.json", payload)
    partial.unlink()
    print(f"wrote {out} in {payload['wall_seconds'] / 60:.1f} min", flush=True)
    return payload


def recorded_args(payload: dict) -> argparse.Namespace:
    """The settings of a recorded run: its command line parsed, then its ``config``."""
    args = parse_args(shlex.split(payload["command"], comments=True)[2:])
    for key, value in (payload.get("config") or {}).items():
        if key in ("rows", "rows4"):
            value = [row_key(r) for r in value]
        if hasattr(args, key) and key not in ("output_dir", "rerender"):
            setattr(args, key, value)
    return args


def rerender(folder) -> dict:
    """Rewrite the tables of an earlier run in ``folder`` (and its figures where the runs
    hold their plot arrays) from its results; its results file is left as it is."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.exists():
        path = folder / "results.partial.json"
    payload = json.loads(path.read_text())
    render(folder, recorded_args(payload), payload)
    return payload


def render(out: Path, args, payload: dict) -> None:
    """The tables and figures of ``payload["runs"]``; a run of the command that is not there
    is named in its table's header."""
    have = {run_key(r) for r in payload["runs"]}
    missing = [k for k in map(run_key, specs(args)) if k not in have]
    write_tables(out, args, payload, missing)
    plot_figures(out, payload["runs"], args.num_components)


if __name__ == "__main__":
    main()
