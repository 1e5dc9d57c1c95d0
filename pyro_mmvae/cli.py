"""The ``pyro-mmvae`` command line.

``pyro-mmvae train`` with no options trains a product-of-experts guide under the masked bound
on the linear-Gaussian shared-latent simulation (seed 004 §5.1: 5 modalities, latent dimension
5) and writes a run directory ``runs/<dataset>-<aggregator>-<bound>-<timestamp>`` with
``config.json``, ``metrics.json``, ``checkpoint.pt`` and ``loss_curve.png``.

Layout, so that further commands and datasets slot in:

- :data:`DATASETS` maps a ``--dataset`` name to a :class:`DatasetSpec` (how to load it, build
  its generative model, and evaluate a trained model on it);
- :data:`AGGREGATORS` and :data:`BOUNDS` map ``--aggregator`` / ``--bound`` to constructors;
- each subcommand registers itself with ``add_<name>_parser(subparsers)``, which sets
  ``func``; option groups shared between commands are added by ``add_data_args``,
  ``add_model_args`` and ``add_runtime_args``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

import pyro
import torch

from guides import (MoE, MoPoE, MultimodalGuide, PoE, SelfAttention, SelfAttentionMixture,
                    SumPooling, SumPoolingMixture, expert_encoder)
from models import LinearGaussianModel, pca_maximum_likelihood, relative_llh_gap
from models.linear_gaussian import gaussian_log_likelihood
from pyro_mmvae import __version__
from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.infer import (MASKINGS, MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO)
from pyro_mmvae.train import (CHECKPOINT, CONFIG, LOSS_CURVE, METRICS, TrainingDiverged, fit,
                              resolve_device, write_json)

# --- registries ------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """A dataset split into train and test, ``{modality: (N, ...)}`` each."""

    train: Dict[str, torch.Tensor]
    test: Dict[str, torch.Tensor]
    info: Dict[str, object] = field(default_factory=dict)  # recorded in config.json

    @property
    def modality_dims(self) -> Dict[str, int]:
        return {m: int(x[0].numel()) for m, x in self.train.items()}


@dataclass
class DatasetSpec:
    """How the CLI loads a dataset, builds its generative model and evaluates a trained run."""

    load: Callable[[argparse.Namespace], PreparedData]
    build_model: Callable[[argparse.Namespace, PreparedData], torch.nn.Module]
    evaluate: Callable[[argparse.Namespace, PreparedData, torch.nn.Module, torch.nn.Module],
                       Dict[str, float]]
    help: str = ""


def _pooled(cls, **extra):
    """A learnable aggregator on the experts' 2D features (as the authors' linear study)."""
    return lambda latent_dim, width: cls(2 * latent_dim, latent_dim, hidden_dim=width,
                                         pooling_dim=width, **extra)


# name -> constructor(latent_dim, width of the learnable aggregators)
AGGREGATORS = {
    "poe": lambda latent_dim, width: PoE(),
    "moe": lambda latent_dim, width: MoE(),
    "mopoe": lambda latent_dim, width: MoPoE(),
    "sumpooling": _pooled(SumPooling),
    "selfattention": _pooled(SelfAttention),
    "sumpooling-mixture": _pooled(SumPoolingMixture),
    "selfattention-mixture": _pooled(SelfAttentionMixture),
}
BOUNDS = {"masked": MaskedMultimodalELBO, "mixture": MixtureMultimodalELBO,
          "subsampled": SubsampledMultimodalELBO}
BOUND_HELP = {"masked": "the masked bound of seed 004 (default masking iid_half)",
              "mixture": "the mixture-based bound, MMVAE/MoPoE (default masking all)",
              "subsampled": "MVAE's full + unimodal + random-subset ELBOs (default masking mvae)"}


def split(data: Mapping[str, torch.Tensor], test_fraction: float):
    """First ``1 - test_fraction`` of the points for training, the rest for testing."""
    n = next(iter(data.values())).shape[0]
    n_test = int(round(n * test_fraction))
    n_train = n - n_test
    return ({m: x[:n_train] for m, x in data.items()},
            {m: x[n_train:] for m, x in data.items()})


def load_linear_gaussian(args) -> PreparedData:
    """``shared_latent_study`` (seed 004 Table 2 data), split into train and test."""
    sim = shared_latent_study(num_points=args.num_points, num_modalities=args.num_modalities,
                              latent_dim=args.latent_dim, seed=args.data_seed)
    train, test = split(sim.data, args.test_fraction)
    return PreparedData(train, test, {"generator": "shared_latent_study",
                                      "data_seed": args.data_seed})


def build_linear_gaussian_model(args, data: PreparedData):
    """``LinearGaussianModel`` with one linear decoder per modality and unit noise."""
    return LinearGaussianModel(data.modality_dims, args.latent_dim)


@torch.no_grad()
def evaluate_linear_gaussian(args, data: PreparedData, model, guide) -> Dict[str, float]:
    """Exact and IS log-likelihoods per data point, the PCA MLE and the relative LLH gap.

    Exact log-likelihoods and PCA run in float64 on copies; the IS estimate runs the trained
    model and guide as they are, on the test split, with ``args.is_samples`` samples.
    """
    device = next(model.parameters()).device
    exact = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    train64 = {m: x.to(device="cpu", dtype=torch.float64) for m, x in data.train.items()}
    test64 = {m: x.to(device="cpu", dtype=torch.float64) for m, x in data.test.items()}
    out = {"train_exact_log_likelihood": exact.exact_log_likelihood(train64).mean().item()}
    x_train = torch.cat(list(train64.values()), dim=-1)  # (N, sum D_m)
    w, b, sigma2, total = pca_maximum_likelihood(x_train, args.latent_dim)
    out["pca_mle_train_log_likelihood"] = total.item() / x_train.shape[0]
    out["relative_llh_gap"] = relative_llh_gap(out["pca_mle_train_log_likelihood"],
                                               out["train_exact_log_likelihood"])
    n_test = next(iter(data.test.values())).shape[0]
    if n_test:
        out["test_exact_log_likelihood"] = exact.exact_log_likelihood(test64).mean().item()
        x_test = torch.cat(list(test64.values()), dim=-1)
        cov = w @ w.T + sigma2 * torch.eye(x_test.shape[-1], dtype=torch.float64)
        out["pca_mle_test_log_likelihood"] = gaussian_log_likelihood(x_test, b, cov).mean().item()
        test = {m: x.to(device) for m, x in data.test.items()}
        model.eval()
        guide.eval()
        out["test_is_log_likelihood"] = log_likelihood(model, guide, test,
                                                       num_samples=args.is_samples).mean().item()
        out["is_num_samples"] = args.is_samples
    return out


DATASETS: Dict[str, DatasetSpec] = {
    "linear-gaussian": DatasetSpec(
        load_linear_gaussian, build_linear_gaussian_model, evaluate_linear_gaussian,
        help="linear-Gaussian shared-latent simulation (seed 004 §5.1): Gaussian modalities "
             "x_m = W_m z + b_m + noise, D_m in 30..59"),
}


def build_guide(args, data: PreparedData):
    """``MultimodalGuide`` with one MLP Gaussian-expert encoder per modality."""
    encoders = {m: expert_encoder(d, args.latent_dim, hidden=tuple(args.hidden))
                for m, d in data.modality_dims.items()}
    return MultimodalGuide(encoders, AGGREGATORS[args.aggregator](args.latent_dim,
                                                                  args.aggregator_width))


def build_loss(args):
    """The bound named by ``--bound`` with its options."""
    kwargs = {"beta": args.beta, "iwae": args.iwae}
    if args.masking is not None:
        kwargs["masking"] = args.masking
    return BOUNDS[args.bound](args.num_particles, **kwargs)


# --- argument types -------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# --- parsers ---------------------------------------------------------------------------------

DEFAULT_EPOCHS = 50  # ~1 min on 2 CPU cores (about 1550 steps of batch 128)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(DATASETS), default="linear-gaussian",
                   help="; ".join(f"{k}: {v.help}" for k, v in DATASETS.items())
                   + " (default: %(default)s)")
    g.add_argument("--num-modalities", type=positive_int, default=5,
                   help="number of modalities M (linear-gaussian; default: %(default)s)")
    g.add_argument("--num-points", type=positive_int, default=5000,
                   help="data points simulated, before the train/test split "
                        "(linear-gaussian; default: %(default)s)")
    g.add_argument("--test-fraction", type=fraction, default=0.2,
                   help="fraction held out as the test split (default: %(default)s)")
    g.add_argument("--data-seed", type=int, default=0,
                   help="seed of the data simulation (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and guide")
    g.add_argument("--latent-dim", type=positive_int, default=5,
                   help="latent dimension D of the model and of the simulation "
                        "(default: %(default)s)")
    g.add_argument("--aggregator", choices=list(AGGREGATORS), default="poe",
                   help="guide aggregator: poe (product of experts with a prior expert), moe "
                        "(mixture of unimodal experts), mopoe (mixture of products over all "
                        "subsets), sumpooling (DeepSets), selfattention (masked self-attention), "
                        "and their 5-component mixture versions (default: %(default)s)")
    g.add_argument("--aggregator-width", type=positive_int, default=128, metavar="W",
                   help="hidden and pooling width of the learnable aggregators "
                        "(default: %(default)s)")
    g.add_argument("--hidden", type=positive_int, nargs="+", default=[128, 128],
                   metavar="H", help="hidden layer sizes of each modality encoder "
                                     "(default: 128 128)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of parameter initialisation, shuffling and sampling "
                        "(default: %(default)s)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train (default: %(default)s)")
    g.add_argument("--num-threads", type=int, default=1, metavar="N",
                   help="torch CPU threads; 0 keeps torch's default. One thread is fastest for "
                        "the small default networks (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a multimodal VAE and write a run directory",
        description="Train a multimodal VAE with SVI and write a run directory with "
                    "config.json, metrics.json, checkpoint.pt (after every epoch) and "
                    "loss_curve.png. Without options: a PoE guide under the masked bound on the "
                    "linear-Gaussian simulation (5 modalities, latent dimension 5).")
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("objective")
    g.add_argument("--bound", choices=sorted(BOUNDS), default="masked",
                   help="; ".join(f"{k}: {v}" for k, v in BOUND_HELP.items())
                   + " (default: %(default)s)")
    g.add_argument("--masking", choices=sorted(MASKINGS), default=None,
                   help="masking distribution rho over modality subsets (default: the bound's "
                        "own default)")
    g.add_argument("--beta", type=positive_float, default=1.0,
                   help="weight of the KL (rate) terms (default: %(default)s)")
    g.add_argument("--num-particles", type=positive_int, default=1,
                   help="samples per data point in the bound (default: %(default)s)")
    g.add_argument("--iwae", action="store_true",
                   help="importance-weighted version of the bound (DReG gradients); "
                        "use with --num-particles > 1")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                   help="training epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=128,
                   help="mini-batch size; the last incomplete batch is dropped "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=positive_float, default=1e-2,
                   help="Adam learning rate (default: %(default)s)")
    g.add_argument("--clip-norm", type=positive_float, default=None,
                   help="clip gradient norms at this value (ClippedAdam; default: no clipping)")
    g = p.add_argument_group("output and evaluation")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="run directory (default: runs/<dataset>-<aggregator>-<bound>-<timestamp>)")
    g.add_argument("--is-samples", type=positive_int, default=100,
                   help="importance samples for the test log-likelihood (default: %(default)s)")
    add_runtime_args(p)
    p.set_defaults(func=functools.partial(run_train, parser=p))
    return p


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="pyro-mmvae", description="Multimodal variational autoencoders for Pyro.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(subparsers)
    return parser


# --- commands --------------------------------------------------------------------------------

def default_run_dir(args) -> Path:
    """``runs/<dataset>-<aggregator>-<bound>-<timestamp>`` (a suffix avoids collisions)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{args.dataset}-{args.aggregator}-{args.bound}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _config(args, data: PreparedData) -> dict:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k != "func"}
    cfg["modality_dims"] = data.modality_dims
    cfg["num_test"] = int(next(iter(data.test.values())).shape[0])
    cfg["dataset_info"] = data.info
    cfg["pyro_mmvae_version"] = __version__
    return cfg


def run_train(args, parser: argparse.ArgumentParser) -> int:
    """``pyro-mmvae train``: load data, build model/guide/bound, fit, evaluate, summarise."""
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.iwae and args.num_particles == 1:
        print("note: --iwae with --num-particles 1 is the ordinary bound", file=sys.stderr)
    threads = torch.get_num_threads()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    try:
        return _train(args, parser, device)
    finally:
        torch.set_num_threads(threads)


def _train(args, parser, device) -> int:
    """The body of ``train`` (threads already set): returns 0, or 1 if training diverged."""
    spec = DATASETS[args.dataset]
    data = spec.load(args)
    n_train = next(iter(data.train.values())).shape[0]
    if args.batch_size > n_train:
        parser.error(f"--batch-size {args.batch_size} exceeds the {n_train} training points; "
                     "lower --batch-size or raise --num-points")
    run_dir = args.output_dir or default_run_dir(args)
    args.output_dir = run_dir
    pyro.set_rng_seed(args.seed)  # parameter initialisation (fit re-seeds for training)
    model = spec.build_model(args, data)
    guide = build_guide(args, data)
    try:
        loss = build_loss(args)
    except ValueError as err:
        parser.error(str(err))

    print(f"training {args.aggregator} guide, {args.bound} bound on {args.dataset} "
          f"({n_train} train points, {len(data.modality_dims)} modalities) for {args.epochs} "
          f"epochs on {device}; run directory: {run_dir}")
    t0 = time.perf_counter()
    try:
        history = fit(model, guide, loss, data.train, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm,
                      run_dir=run_dir, seed=args.seed, device=device,
                      progress=not args.no_progress, config=_config(args, data))
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        write_json(run_dir / METRICS, {"status": "diverged", "error": str(err),
                                       "train_loss": err.history["loss"],
                                       "history": err.history})
        return 1
    train_time = time.perf_counter() - t0
    metrics = {"status": "completed", "epochs": len(history["loss"]),
               "train_loss": history["loss"], "final_train_loss": history["loss"][-1],
               "train_time_s": train_time}
    metrics.update(spec.evaluate(args, data, model, guide))
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["history"] = history
    write_json(run_dir / METRICS, metrics)
    print(summary(metrics, run_dir))
    return 0


def summary(metrics: Mapping, run_dir: Path) -> str:
    """A few lines for the terminal (log-likelihoods are means per data point, in nats)."""
    lines = [f"done in {metrics['wall_time_s']:.1f} s ({metrics['epochs']} epochs); "
             f"final train loss {metrics['final_train_loss']:.4f} per data point"]
    if "train_exact_log_likelihood" in metrics:
        lines.append("log-likelihood per data point (nats):")
        rows = [("exact, train", "train_exact_log_likelihood"),
                ("exact, test", "test_exact_log_likelihood"),
                ("PCA maximum likelihood, train", "pca_mle_train_log_likelihood"),
                ("PCA maximum likelihood, test", "pca_mle_test_log_likelihood"),
                (f"importance sampled (K={metrics.get('is_num_samples')}), test",
                 "test_is_log_likelihood")]
        lines += [f"  {label:<38} {metrics[key]:.4f}" for label, key in rows if key in metrics]
        lines.append(f"relative LLH gap to the PCA MLE (train): {metrics['relative_llh_gap']:.3e}")
    files = ", ".join((CONFIG, METRICS, CHECKPOINT, LOSS_CURVE))
    lines.append(f"wrote {files} to {run_dir}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``pyro-mmvae``; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
