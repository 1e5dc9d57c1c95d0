r"""The linear-Gaussian experiments of Hirt et al. 2024 (TMLR, arXiv:2309.00380), §5.1: Table 1
and both halves of Table 2.

Hirt et al., arXiv 2309.00380, Sec. 5.1 and App. J: :math:`z\sim\mathcal N(0,I_D)`,
:math:`x_m=W_mz+b_m+\sigma_m\epsilon_m` learned with the masked bound (the paper's "ours") and
the mixture bound in the form of the authors' code (same masking distribution,
``form="sampled"``), with
PoE / MoE / MoPoE / learnable aggregators (``--tables 1``: the bi-modal example; ``2``:
:func:`~pyro_mmvae.data.linear_gaussian.shared_latent_study`) or the permutation-equivariant
guides with private latents (``2e``: :func:`~pyro_mmvae.data.linear_gaussian.private_latent_study`).
Metrics: the relative LLH gap to the PCA fit (exact likelihoods), rate / distortion, weak MCC.
Training is :func:`pyro_mmvae.train.fit` as the authors' code trains (Adam on the summed loss,
:func:`~pyro_mmvae.train.clamp_gradients`: NaN -> 0, element-wise clip). Tables and plots:
``_linear_gaussian_report.py``; the paper's numbers: ``linear_gaussian_paper.json``.

``python experiments/linear_gaussian.py --help``; ``--quick`` is a seconds-long smoke run.
``--include`` / ``--merge results.json`` add other rows / pool other seeds of an earlier run;
``--rerender [DIR]`` rewrites a run's tables and plots from its ``results.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import pyro
import torch
from threadpoolctl import threadpool_limits

import _linear_gaussian_report as report
from _linear_gaussian_report import (BOUNDS, PAPER, PE_GUIDES, RD_KEYS, epochs_of, load_included,
                                     load_merged, merged_provenance, rows_of, seeds_of, SETTINGS,
                                     table_key, write_outputs)
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO
from pyro_mmvae.data.linear_gaussian import (illustrative_bimodal, private_latent_study,
                                             shared_latent_study)
from pyro_mmvae.eval import rate_distortion
from pyro_mmvae.eval.mcc import mcc, mean_corr_coef
from pyro_mmvae.guides import (AttentionPrivate, IndependentPrivate, MultimodalGuide,
                               PooledPrivate, expert_encoder)
from pyro_mmvae.models import (ExactPosteriorGuide, LinearGaussianModel, pca_maximum_likelihood,
                               relative_llh_gap)
from pyro_mmvae.protocol import full_mask, private_site, stack_mask
from pyro_mmvae.registry import AggregatorSizes, build_aggregator
from pyro_mmvae.tables import repository_relative
from pyro_mmvae.train import clamp_gradients, fit, write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "experiments" / "results" / "linear_gaussian"
PRIVATE = {"sumpooling": PooledPrivate, "selfattention": AttentionPrivate}
AGGREGATORS = tuple(report.AGGREGATOR_NAMES)
TABLES = ("1", "2", "2e")


# --- metrics ---------------------------------------------------------------------------------
def weak_mcc(z_true, z_hat, seed: int = 0) -> float:
    """Weak out-of-sample MCC (:func:`pyro_mmvae.eval.mcc.mcc`; halves drawn with ``seed``)."""
    return mcc(z_true, z_hat, seed=seed)["weak_out"]


def mcc_record(u, sample, mean, seed: int, shared: int = 0) -> dict:
    """Weak MCC of a sample and of the posterior mean (and of their first ``shared`` columns)."""
    out = {"mcc": weak_mcc(u, sample, seed), "mcc_posterior_mean": weak_mcc(u, mean, seed)}
    if shared:
        out.update(mcc_shared=weak_mcc(u[:, :shared], sample[:, :shared], seed),
                   mcc_shared_posterior_mean=weak_mcc(u[:, :shared], mean[:, :shared], seed))
    return out


def fixed_noise_mle(x: torch.Tensor, noise_scale: torch.Tensor, latent_dim: int) -> float:
    r"""Summed LLH of the linear-Gaussian MLE with the noise scale fixed (``(Dx,)``): whiten,
    then :math:`\hat V=U_D(\Lambda_D-1)_+^{1/2}` (Tipping & Bishop): the floor of the gap."""
    y = (x - x.mean(0)) / noise_scale
    evals, evecs = torch.linalg.eigh(y.T @ y / y.shape[0])
    evals, evecs = evals.flip(0), evecs.flip(1)
    v = evecs[:, :latent_dim] * (evals[:latent_dim] - 1).clamp_min(0).sqrt()
    cov = v @ v.T + torch.eye(y.shape[1], dtype=y.dtype)
    mvn = torch.distributions.MultivariateNormal(torch.zeros_like(y[0]), covariance_matrix=cov)
    return float(mvn.log_prob(y).sum() - y.shape[0] * noise_scale.log().sum())


def true_model(ds, dtype, private_dim: int = 0) -> LinearGaussianModel:
    """The data-generating model (stacked loadings cut into ``[shared | own private]``)."""
    shared = ds.latents.shape[1] - len(ds.data) * private_dim
    model = LinearGaussianModel(ds.modality_dims, shared, noise_scale=dict(ds.noise_scales),
                                private_dim=private_dim).to(dtype)
    with torch.no_grad():
        for i, m in enumerate(ds.data):
            w = ds.weights[m]
            own = w[:, shared + i * private_dim:shared + (i + 1) * private_dim]
            model.decoders[m].net.weight.copy_(torch.cat([w[:, :shared], own], 1))
            model.decoders[m].net.bias.copy_(ds.biases[m])
    return model


def stacked_loadings(model: LinearGaussianModel) -> torch.Tensor:
    """All modalities' loadings on the stacked latent, ``(sum_m D_m, D + M P)``."""
    return torch.cat([model.linear_parameters(m)[0] for m in model.modalities], 0)


def latent_usage(model: LinearGaussianModel) -> list:
    """Singular values of the stacked loadings, largest first (near 0: an unused direction)."""
    with torch.no_grad():
        return torch.linalg.svdvals(stacked_loadings(model).double()).tolist()


def guide_stacked_sample(guide, data) -> torch.Tensor:
    """One draw of ``u = (z, w_1, ..., w_M)`` from a private-latent guide given all of ``x``."""
    tr = pyro.poutine.trace(guide).get_trace(data, full_mask(data))
    return torch.cat([tr.nodes["z"]["value"]] + [tr.nodes[private_site(m)]["value"]
                                                 for m in guide.modalities], -1)


def guide_stacked_mean(guide, data) -> torch.Tensor:
    """``(E[z | x], E[w_1 | z̄, x], ..., E[w_M | z̄, x])`` with ``z̄ = E[z | x]``."""
    mask = full_mask(data)
    feats = guide.features(data, mask)
    zbar = guide.distribution(data, mask).mean
    loc, _ = guide.private(feats, stack_mask(mask, guide.modalities), zbar)  # (B, M, P)
    return torch.cat([zbar, loc.flatten(-2)], -1)


# --- one run: (table, aggregator, bound, seed) ----------------------------------------------
def make_data(spec):
    if spec["table"] == 1:
        return illustrative_bimodal(spec["num_points"], noise_scales=tuple(spec["noise1"]),
                                    latent_dim=1, seed=spec["seed"], dtype=torch.float64)
    study, dims = ((private_latent_study, dict(shared_dim=spec["latent_dim2"],
                                               private_dim=spec["private_dim"]))
                   if spec["table"] == "2e" else
                   (shared_latent_study, dict(latent_dim=spec["latent_dim2"])))
    return study(spec["num_points"], num_modalities=spec["modalities2"], seed=spec["seed"],
                 dtype=torch.float64, **dims)


def make_guide(spec, dims, latent_dim: int, private_dim: int = 0) -> MultimodalGuide:
    """MLP experts ``D_m -> hidden -> E = 2(D + P)`` and the registry's aggregator (the
    authors' code); the ``pe-`` guides add a private head (Table 2 equivariant)."""
    agg, code = spec["aggregator"], latent_dim + private_dim
    encoders = {m: expert_encoder(d, code, tuple(spec["hidden"])) for m, d in dims.items()}
    sizes = AggregatorSizes(width=spec["agg_hidden"], pooling_width=spec["pooling_dim"],
                            attention_width=spec["attention_dim"], mlp_width=spec["mlp_dim"],
                            num_heads=spec["num_heads"], num_components=spec["num_components"])
    if agg == "pe-poe":  # first 2D features: shared PoE expert; last 2P: private expert
        return MultimodalGuide(encoders, build_aggregator("poe", 2 * latent_dim, latent_dim),
                               private=IndependentPrivate(2 * latent_dim, private_dim),
                               shared_features=2 * latent_dim)
    kind = agg.removeprefix("pe-")
    aggregator = build_aggregator(kind, 2 * code, latent_dim, len(dims), sizes)
    if kind == agg:
        return MultimodalGuide(encoders, aggregator)
    private = PRIVATE[kind](2 * code, latent_dim, private_dim,  # (built after the aggregator)
                            **sizes.pooled(attention=kind == "selfattention"))
    return MultimodalGuide(encoders, aggregator, private=private)


def make_bound(spec):
    kw = dict(num_particles=spec["num_particles"], masking=spec["masking"], beta=spec["beta"])
    return (MaskedMultimodalELBO(**kw) if spec["bound"] == "masked"
            else MixtureMultimodalELBO(form=spec["mixture_form"], **kw))


def run_config(spec: dict) -> dict:
    """Train one configuration and evaluate it; returns a JSON-ready record."""
    with threadpool_limits(limits=spec["threads"]):
        torch.set_num_threads(spec["threads"])
        return _run_config(spec)


def _run_config(spec: dict) -> dict:
    dtype, f64, seed = getattr(torch, spec["dtype"]), torch.float64, spec["seed"]
    pyro.set_rng_seed(seed)
    ds = make_data(spec)
    equivariant = spec["table"] == "2e"
    private_dim = spec["private_dim"] if equivariant else 0
    dims, stacked_dim = ds.modality_dims, ds.latents.shape[1]  # stacked: D + M P
    latent_dim = stacked_dim - len(dims) * private_dim
    data64 = {m: x.to(f64) for m, x in ds.data.items()}
    data = {m: x.to(dtype) for m, x in ds.data.items()}
    x64 = torch.cat(list(data64.values()), -1)
    _, _, sigma2_mle, llh_mle = pca_maximum_likelihood(x64, stacked_dim)  # the references
    llh_mle = float(llh_mle)
    noise = torch.cat([torch.full((d,), float(ds.noise_scales[m]), dtype=f64)
                       for m, d in dims.items()])
    llh_floor = fixed_noise_mle(x64, noise, stacked_dim)

    torch.manual_seed(seed)
    kw = dict(noise_scale=dict(ds.noise_scales), learn_noise=spec["learn_noise"],
              private_dim=private_dim)
    model = LinearGaussianModel(dims, latent_dim, **kw).to(dtype)
    guide = make_guide(spec, dims, latent_dim, private_dim).to(dtype)
    evaluator = LinearGaussianModel(dims, latent_dim, **kw).to(f64)
    elbo = make_bound(spec)

    def exact_llh(profile_bias: bool = False):  # float64; profiled: biases at the data mean
        with torch.no_grad():
            evaluator.load_state_dict(model.state_dict())
            if profile_bias:
                for m, x in data64.items():
                    evaluator.decoders[m].net.bias.copy_(x.mean(0))
            return float(evaluator.exact_log_likelihood(data64).sum())

    def gap_curve(epoch):
        if epoch % spec["eval_every"] and epoch != spec["epochs"]:
            return {}
        return {"rel_llh_gap": relative_llh_gap(llh_mle, exact_llh())}

    start = time.perf_counter()
    with pyro.validation_enabled(False):
        history = fit(model, guide, elbo, data, epochs=spec["epochs"],
                      batch_size=spec["batch_size"], lr=spec["lr"], seed=None,
                      generator=torch.Generator().manual_seed(seed),
                      gradient_transform=clamp_gradients(spec["clip"]), eval_fn=gap_curve,
                      progress=spec.get("progress", False), validate="never")
        train_s = time.perf_counter() - start
        llh_model = exact_llh()
        with torch.no_grad():
            bound = float(elbo.terms(model, guide, data)["elbo"].mean())
            u = ds.latents.numpy()
            if equivariant:  # (no rate_distortion: its KLs of w_m would condition on other z)
                sample = guide_stacked_sample(guide, data).double().numpy()
                record = mcc_record(u, sample, guide_stacked_mean(guide, data).double().numpy(),
                                    seed, latent_dim)
                record["strong_mcc"] = mean_corr_coef(u, sample)
            else:
                rd = rate_distortion(model, guide, data, masking=spec["masking"],
                                     num_samples=spec["rd_samples"])
                record = {k: float(rd[k].mean()) for k in RD_KEYS}
            if spec["table"] == 2:
                q = guide.distribution(data)
                record.update(mcc_record(u, q.sample().double().numpy(),
                                         q.mean.double().numpy(), seed))
                record["strong_mcc"] = mean_corr_coef(u, q.sample().double().numpy())
    n, gap = len(ds.latents), lambda llh: relative_llh_gap(llh_mle, llh)
    record.update({
        "table": spec["table"], "aggregator": spec["aggregator"], "bound": spec["bound"],
        "seed": seed, "epochs": spec["epochs"], "train_seconds": train_s,
        "steps": spec["epochs"] * history["steps_per_epoch"], "llh_mle": llh_mle,
        "sigma2_mle": float(sigma2_mle), "llh_model": llh_model, "llh_fixed_noise_mle": llh_floor,
        "rel_llh_gap": gap(llh_model), "rel_llh_gap_floor": gap(llh_floor),
        "rel_llh_gap_bias_profiled": gap(exact_llh(profile_bias=True)),
        "bound_per_point": bound, "llh_model_per_point": llh_model / n,
        "final_loss_per_point": history["loss"][-1], "loss_curve": history["loss"],
        "loading_singular_values": latent_usage(evaluator),
        "gap_curve": [[e, ev["rel_llh_gap"]] for e, ev in zip(history["epoch"], history["eval"])
                      if ev]})
    return record


def reference_record(table, seed: int, spec: dict) -> dict:
    """The true model with its exact posterior: the target the learned models approach."""
    spec = dict(spec, table=table, seed=seed)
    pyro.set_rng_seed(seed)
    ds = make_data(spec)
    model = true_model(ds, torch.float64, spec["private_dim"] if table == "2e" else 0)
    x64 = torch.cat(list(ds.data.values()), -1)
    llh_mle = float(pca_maximum_likelihood(x64, ds.latents.shape[1])[3])
    with torch.no_grad(), pyro.validation_enabled(False):
        out = {"rel_llh_gap": relative_llh_gap(
            llh_mle, float(model.exact_log_likelihood(ds.data).sum()))}
        if table == 1 or table == 2:
            rd = rate_distortion(model, ExactPosteriorGuide(model), ds.data,
                                 masking=spec["masking"], num_samples=spec["rd_samples"])
            out.update({k: float(rd[k].mean()) for k in RD_KEYS})
        if table != 1:  # exact posterior of z (or of the stacked u = (z, w_1, ..., w_M))
            q = model.exact_posterior(ds.data)
            out.update(mcc_record(ds.latents.numpy(), q.sample().numpy(), q.mean.numpy(), seed,
                                  model.latent_dim if table == "2e" else 0))
    out.update(table=table, seed=seed)
    return out


# --- command line ----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--tables", nargs="+", choices=TABLES, default=list(TABLES),
        help="1: Table 1; 2: Table 2 invariant; 2e: Table 2 equivariant")
    add("--aggregators", nargs="+", type=report.aggregator_name, choices=AGGREGATORS,
        default=list(AGGREGATORS), help="aggregators of Tables 1 and 2")
    add("--pe-guides", nargs="+", choices=tuple(PE_GUIDES), default=list(PE_GUIDES),
        help="permutation-equivariant guides of Table 2e")
    add("--bounds", nargs="+", choices=BOUNDS, default=list(BOUNDS))
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of Table 1")
    add("--seeds2", type=int, nargs="+", help="seeds of Table 2 (default: --seeds)")
    add("--seeds2e", type=int, nargs="+", help="seeds of Table 2e (default: --seeds2)")
    add("--epochs2e", type=int, help="training epochs, Table 2e (default: --epochs2)")
    add("--hidden", type=int, nargs="+", default=[256, 256], help="expert encoder widths")
    for name, default, what in (
            ("epochs1", 300, "epochs, Table 1"), ("epochs2", 300, "epochs, Table 2"),
            ("num-points", 5000, "N"), ("batch-size", 500, "mini-batch size"),
            ("agg-hidden", 256, "hidden width of the learnable aggregators and private heads"),
            ("pooling-dim", 256, "pooling / slot width"), ("num-heads", 4, "attention heads"),
            ("attention-dim", 256, "attention (qkv) width"), ("mlp-dim", 256, "FFN width"),
            ("num-components", 5, "mixture components"), ("num-particles", 1, "particles"),
            ("modalities2", 5, "Tables 2 / 2e: M"), ("latent-dim2", 5, "Tables 2 / 2e: D"),
            ("private-dim", 5, "Table 2e: private P"), ("rd-samples", 16, "rate_distortion"),
            ("threads", 1, "torch threads per run"), ("jobs", 1, "runs in parallel")):
        add(f"--{name}", type=int, default=default, help=what)
    add("--lr", type=float, default=1e-3)
    add("--clip", type=float, default=100.0, help="element-wise gradient clip")
    add("--beta", type=float, default=1.0)
    add("--masking", default="iid_half", help="rho of both bounds")
    add("--mixture-form", default="sampled", choices=("sampled", "stratified", "average"),
        help="MixtureMultimodalELBO form ('sampled' is the authors' code)")
    add("--learn-noise", action="store_true", help="learn the decoder noise")
    add("--noise1", type=float, nargs=2, default=[0.1, 10.0], help="Table 1 noise scales")
    add("--eval-every", type=int, help="epochs between exact-LLH evaluations (default: ~30)")
    add("--dtype", choices=("float32", "float64"), default="float32")
    add("--progress", action="store_true", help="a progress bar per run (with --jobs 1)")
    add("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    add("--include", type=Path, nargs="+", default=[],
        help="results.json of earlier runs whose other rows are added to the tables")
    add("--merge", type=Path, nargs="+",
        help="results.json of earlier runs of the same rows and settings whose other seeds are "
             "pooled into the cells; with --rerender, replaces the stored list")
    add("--rerender", nargs="?", const=True, type=Path, metavar="DIR",
        help="do not train: rewrite the tables and plots of DIR (default: --output-dir) from "
             "its results.json, with the stored command, runs and wall time")
    add("--quick", action="store_true",
        help="smoke-test budget: N=200, batch 100, 2 epochs, widths 16 / 8, seed 0")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.num_points, args.batch_size = 200, 100
        args.epochs1 = args.epochs2 = args.epochs2e = 2
        args.hidden, args.seeds, args.seeds2, args.seeds2e, args.rd_samples = [16], [0], [0], [0], 2
        args.agg_hidden, args.pooling_dim, args.attention_dim, args.mlp_dim = 16, 8, 8, 16
    args.seeds2 = list(args.seeds if args.seeds2 is None else args.seeds2)
    args.seeds2e = list(args.seeds2 if args.seeds2e is None else args.seeds2e)
    args.epochs2e = args.epochs2 if args.epochs2e is None else args.epochs2e
    if args.batch_size > args.num_points:
        p.error(f"--batch-size ({args.batch_size}) exceeds --num-points ({args.num_points})")
    args.table_keys = [table_key(t) for t in args.tables]
    return args


def specs(args):
    base = {k: getattr(args, k) for k in SETTINGS + ("rd_samples", "threads", "progress")}
    return [dict(base, table=t, aggregator=agg, bound=bound, seed=seed, epochs=epochs_of(args, t),
                 eval_every=args.eval_every or max(1, epochs_of(args, t) // 30))
            for t in args.table_keys for seed in seeds_of(args, t) for agg in rows_of(args, t)
            for bound in args.bounds]


def main(argv=None):
    """Run the experiments (or ``--rerender``); returns the ``results.json`` payload."""
    args = parse_args(argv)
    if args.rerender:
        return report.rerender(args.output_dir if args.rerender is True else args.rerender,
                               parse_args, args.merge)
    threads = torch.get_num_threads()
    try:
        with threadpool_limits(limits=args.threads):
            torch.set_num_threads(args.threads)
            return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args):
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo, records = specs(args), []
    partial = out / "results.partial.json"

    def done(rec):
        records.append(rec)
        write_json(partial, records)  # raw runs so far, in case of a crash
        print(f"[{time.perf_counter() - start:7.1f}s] table {rec['table']} "
              f"{rec['aggregator']:>17} {rec['bound']:>7} seed {rec['seed']}: "
              f"gap {rec['rel_llh_gap']:.3e}" + (f", MCC {rec['mcc']:.3f}" if "mcc" in rec else "")
              + f" ({rec['train_seconds']:.0f}s)", flush=True)

    with (ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1
          else nullcontext()) as pool:
        for rec in (pool.map if pool else map)(run_config, todo):
            done(rec)
    refs = {f"table{t}": [reference_record(t, s, todo[0]) for s in seeds_of(args, t)]
            for t in args.table_keys}
    included, merged = load_included(args), load_merged(args, records)
    config = {k: (repository_relative(v, ROOT) if isinstance(v, Path) else v)
              for k, v in vars(args).items()} | {"include": list(map(str, args.include)),
                                                 "merge": list(map(str, args.merge or []))}
    environment = {"python": platform.python_version(), "torch": torch.__version__,
                   "pyro": pyro.__version__, "threads": torch.get_num_threads(),
                   "cpu_count": os.cpu_count()}
    payload = {
        "description": "Hirt et al. 2024, §5.1: linear-Gaussian experiments; see table*.md",
        "config": config, "environment": environment, "paper": PAPER,
        "wall_seconds": time.perf_counter() - start, "reference_exact_posterior": refs,
        "included": [{k: v for k, v in inc.items() if k != "runs"} for inc in included],
        "merged": merged_provenance(merged), "runs": records}
    payload["summary"] = write_outputs(out, args, payload, included, merged)
    write_json(out / "results.json", payload)
    partial.unlink()
    print(f"wrote {out} in {payload['wall_seconds'] / 60:.1f} min", flush=True)
    return payload


if __name__ == "__main__":
    main()
