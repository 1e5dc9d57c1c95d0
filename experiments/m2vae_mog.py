"""The M2VAE's bimodal mixture of Gaussians (*Deep Generative Models for learning Coherent
Latent Representations from Multi-Modal Data*, anonymous ICLR 2019 submission on OpenReview,
later published by Korthals et al.; §4.2 and §5.1, Figs. 3-6).

Ten classes, each a 2-D point in modality ``a`` (a grid: classes 5, 6, 7 share a mean, and so
do 0, 8) and in ``b`` (a circle: 0 and 9 share one), so class 0 is ambiguous in each modality
alone and resolved by both (:func:`pyro_mmvae.data.ambiguous_gaussians`). Three models with a
2-D latent and the paper's Table 2 networks (branches of 128, a joint layer of 64, decoders
2 -> 128 -> 2 with tanh):

- **M2VAE**: one encoder per subset (:class:`~pyro_mmvae.guides.SubsetEncoders`) trained by
  the recursive objective (:class:`~pyro_mmvae.infer.RecursiveMultimodalELBO`, weights 1/2);
- **tVAE**: the same encoders, trained in two stages (:func:`pyro_mmvae.train.fit_two_stage`):
  the joint VAE, then the unimodal encoders against the frozen decoders;
- **JMVAE-Zero**: one joint encoder on zero-filled inputs
  (:class:`~pyro_mmvae.guides.JointEncoder`, masking ``"zero_augmented"``).

The paper's MoG results are figures; the script measures what they show:

- Fig. 4, the (beta, alpha) sweep of the M2VAE: the embeddings of q(z|a, b), q(z|a), q(z|b);
- Fig. 5, the three models side by side: embeddings coloured by class and by the evaluation
  ELBO (eq. 12: encode a subset, decode both);
- Fig. 6, auto re-encoding z <- E q(z | decode(z)) from random seeds over the latent plane
  coloured by the re-encoding loss.

and tabulates, per model: the evaluation ELBOs of eq. 12 (the Table 1 columns), the
**coherence** of each unimodal encoder (the accuracy of the nearest class centroid of the
joint embeddings at the unimodal embedding, over the classes that modality resolves), the
ELBO drop of the unimodal encodings of ambiguous classes (the paper's ambiguity signal), and
the fraction of test points whose class survives 20 steps of auto re-encoding.

Writes ``experiments/results/m2vae_mog/`` (README.md, results.json, data.png, sweep.png,
comparison.png, reencoding.png); ``--rerender DIR`` rewrites ``DIR/README.md`` from
``DIR/results.json`` without training.

    python experiments/m2vae_mog.py           # a few minutes on 2 CPU cores
    python experiments/m2vae_mog.py --quick   # seconds (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyro_mmvae import MixtureMultimodalELBO, RecursiveMultimodalELBO
from pyro_mmvae.data import ambiguous_gaussians
from pyro_mmvae.eval import auto_reencode, decode_means, encode_means, subset_elbos
from pyro_mmvae.guides import JointEncoder, MultimodalGuide, SubsetEncoders
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from pyro_mmvae.tables import (command_line, fmt, header, machine_summary, markdown_table,
                               mean_std, repository_relative, write_results)
from pyro_mmvae.train import fit, fit_two_stage

from _multimodal_tables import rerender_readme  # a sibling: the script's folder is on the path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ("*Deep Generative Models for learning Coherent Latent Representations from "
             "Multi-Modal Data* (anonymous ICLR 2019 submission on OpenReview, later published "
             "by Korthals et al.)")
MODALITIES = ("a", "b")
MODELS = ("M2VAE", "tVAE", "JMVAE-Zero")
# the classes each modality tells apart (a: grid, 5/6/7 and 0/8 share; b: circle, 0/9 share)
RESOLVED = {"a": (1, 2, 3, 4, 9), "b": (1, 2, 3, 4, 5, 6, 7, 8)}
AMBIGUOUS = {"a": (0, 5, 6, 7, 8), "b": (0, 9)}
ENCODERS = {"q(z|a,b)": MODALITIES, "q(z|a)": ("a",), "q(z|b)": ("b",)}


def build(kind: str, args, seed: int):
    torch.manual_seed(seed)
    if kind == "JMVAE-Zero":
        aggregator = JointEncoder(2, 2, 2, hidden=(2 * args.width, 64))
    else:
        aggregator = SubsetEncoders(2, 2, 2, branch_dim=args.width, hidden=(64,))
    guide = MultimodalGuide({m: nn.Identity() for m in MODALITIES}, aggregator)
    model = MultimodalModel(StandardNormalPrior(2),
                            {m: GaussianDecoder(MLP(2, (args.width,), 2, nn.Tanh),
                                                scale=args.scale) for m in MODALITIES})
    return model, guide


def train(kind: str, data, args, beta: float, alpha: float, seed: int):
    model, guide = build(kind, args, seed)
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=seed, progress=False)
    if kind == "M2VAE":
        fit(model, guide, RecursiveMultimodalELBO(alpha=alpha, beta=beta), data,
            epochs=args.epochs, **common)
    elif kind == "tVAE":
        fit_two_stage(model, guide, data, epochs=(args.epochs, args.epochs), beta=beta,
                      **common)
    else:
        fit(model, guide, MixtureMultimodalELBO(masking="zero_augmented", beta=beta), data,
            epochs=args.epochs, **common)
    model.eval()
    guide.eval()
    return model, guide


def _subset_mask(n: int, subset) -> dict:
    return {m: torch.full((n,), m in subset, dtype=torch.bool) for m in MODALITIES}


@torch.no_grad()
def measure(model, guide, test, labels, args, seed) -> dict:
    """The numbers of one trained model (module docstring)."""
    n = labels.shape[0]
    emb = {name: encode_means(guide, test, _subset_mask(n, s)) for name, s in ENCODERS.items()}
    centroids = torch.stack([emb["q(z|a,b)"][labels == c].mean(0) for c in range(10)])

    def nearest(z):
        return torch.cdist(z, centroids).argmin(-1)

    coherence = {}
    for m in MODALITIES:
        keep = torch.isin(labels, torch.tensor(RESOLVED[m]))
        coherence[m] = float((nearest(emb[f"q(z|{m})"][keep]) == labels[keep]).float().mean())
    joint = float((nearest(emb["q(z|a,b)"]) == labels).float().mean())
    torch.manual_seed(seed)
    elbo = subset_elbos(model, guide, test, num_particles=args.eval_particles)
    by_subset = dict(zip(elbo["names"], elbo["elbo"]))
    drop = {}
    for m in MODALITIES:
        amb = torch.isin(labels, torch.tensor(AMBIGUOUS[m]))
        drop[m] = float(by_subset[m][~amb].mean() - by_subset[m][amb].mean())
    final = auto_reencode(model, guide, emb["q(z|a,b)"], MODALITIES, steps=args.steps)[-1]
    return {"elbo": {k: float(v.mean()) for k, v in by_subset.items()},
            "coherence": coherence, "ambiguity_drop": drop, "joint_accuracy": joint,
            "reencoding_kept": float((nearest(final) == labels).float().mean()),
            "embeddings": {k: v.numpy() for k, v in emb.items()},
            "elbo_per_point": {k: v.numpy() for k, v in by_subset.items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=500, help="training points per class")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=128, help="the branch width (Table 2: 128)")
    p.add_argument("--scale", type=float, default=0.1, help="the decoders' fixed scale")
    p.add_argument("--beta", type=float, default=0.01,
                   help="beta of the comparison (the paper's beta_norm 1e-2; D = D_z = 2)")
    p.add_argument("--alpha", type=float, default=0.01, help="alpha of the comparison")
    p.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.01, 1.0])
    p.add_argument("--steps", type=int, default=20, help="auto re-encoding steps")
    p.add_argument("--eval-particles", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds of the comparison (the sweep and figures: the first)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny networks: one is fastest)")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "m2vae_mog"))
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, small data")
    p.add_argument("--rerender", metavar="DIR",
                   help="only rewrite DIR/README.md from DIR/results.json (no training)")
    args = p.parse_args(argv)
    if args.rerender:
        return rerender_readme(args.rerender, "m2vae_mog.py", _readme)
    if args.quick:
        args.per_class, args.epochs, args.width, args.steps = 30, 2, 16, 3
        args.betas, args.alphas, args.seeds = args.betas[:1], args.alphas[:2], args.seeds[:1]
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dtype = torch.get_default_dtype()
    train_ds = ambiguous_gaussians(args.per_class, seed=args.data_seed, dtype=dtype)
    test_ds = ambiguous_gaussians(max(args.per_class // 5, 10), seed=args.data_seed + 1,
                                  dtype=dtype)
    test, labels = test_ds.data, test_ds.labels

    compared, trained, seed0 = {k: [] for k in MODELS}, {}, args.seeds[0]
    for seed in args.seeds:
        for kind in MODELS:
            pair = train(kind, train_ds.data, args, args.beta, args.alpha, seed)
            if seed == seed0:
                trained[kind] = pair
            compared[kind].append(measure(*pair, test, labels, args, seed))
            print(f"seed {seed} {kind}: {_summary(compared[kind][-1])}", flush=True)
    sweep = {}
    for beta in args.betas:
        for alpha in args.alphas:
            pair = (beta, alpha)
            if pair == (args.beta, args.alpha):
                sweep[f"{beta},{alpha}"] = compared["M2VAE"][0]
                continue
            pair = train("M2VAE", train_ds.data, args, beta, alpha, seed0)
            sweep[f"{beta},{alpha}"] = measure(*pair, test, labels, args, seed0)
            print(f"M2VAE beta={beta} alpha={alpha}: {_summary(sweep[f'{beta},{alpha}'])}",
                  flush=True)
    wall = time.time() - t0
    payload = {"args": dict(vars(args), output_dir=repository_relative(out, ROOT)),
               "models": {k: [_numbers(r) for r in v] for k, v in compared.items()},
               "sweep": {k: _numbers(v) for k, v in sweep.items()}, "wall_s": wall,
               "command": command_line("experiments/m2vae_mog.py", argv),
               "machine": machine_summary(args.threads)}
    _data_figure(out / "data.png", test_ds)
    _embedding_figure(out / "comparison.png", {k: v[0] for k, v in compared.items()}, labels,
                      by_elbo=True)
    _embedding_figure(out / "sweep.png", {f"beta={k.split(',')[0]}, alpha={k.split(',')[1]}":
                                          v for k, v in sweep.items()}, labels)
    _reencoding_figure(out / "reencoding.png", trained, args)
    write_results(out, payload, _readme(payload))
    return payload


def _numbers(r):
    """A measurement without its per-point arrays (kept for the figures only)."""
    return {k: v for k, v in r.items() if k not in ("embeddings", "elbo_per_point")}


def _summary(r):
    return (f"ELBO {r['elbo']}, coherence {r['coherence']}, re-encoding kept "
            f"{r['reencoding_kept']:.2f}")


def _data_figure(path, dataset):
    """Fig. 3: the two modalities' points coloured by class (shared means: a 5, 6, 7 and
    0, 8; b 0, 9)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    colours = matplotlib.colormaps["tab10"](np.arange(10))
    fig = Figure(figsize=(8, 4))
    for ax, m in zip(fig.subplots(1, 2), MODALITIES):
        x = dataset.data[m].numpy()
        for c in range(10):
            pts = x[dataset.labels.numpy() == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=colours[c], label=str(c))
        ax.set_title(f"modality {m}", fontsize=9)
        ax.set_aspect("equal")
    ax.legend(fontsize=6, markerscale=3, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _embedding_figure(path, results, labels, by_elbo=False):
    """One row per model (or sweep cell): the embeddings of each encoder coloured by class
    (and, with ``by_elbo``, by the evaluation ELBO of eq. 12)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    colours = matplotlib.colormaps["tab10"](labels.numpy())
    cols = len(ENCODERS) * (2 if by_elbo else 1)
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(results)))
    axes = fig.subplots(len(results), cols, squeeze=False)
    for row, (name, r) in zip(axes, results.items()):
        for j, (enc, subset) in enumerate(ENCODERS.items()):
            z = np.asarray(r["embeddings"][enc])
            row[j].scatter(z[:, 0], z[:, 1], s=3, c=colours)
            row[j].set_title(f"{name}: {enc}", fontsize=8)
            if by_elbo:
                e = np.asarray(r["elbo_per_point"]["+".join(subset)])
                sc = row[len(ENCODERS) + j].scatter(z[:, 0], z[:, 1], s=3, c=e, cmap="viridis",
                                                    vmin=np.percentile(e, 5), vmax=e.max())
                row[len(ENCODERS) + j].set_title(f"{name}: ELBO of {enc}", fontsize=8)
                fig.colorbar(sc, ax=row[len(ENCODERS) + j])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


@torch.no_grad()
def _reencoding_figure(path, trained, args, grid=80, seeds=40, extent=4.0):
    """Fig. 6: per model, the latent plane coloured by the loss of re-encoding its decoding,
    ``|| decode(E q(z | decode(z))) - decode(z) ||^2``, and auto re-encoding trajectories from
    random seeds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(trained), 4))
    axes = fig.subplots(1, len(trained), squeeze=False)[0]
    u = torch.linspace(-extent, extent, grid, dtype=torch.get_default_dtype())
    zz = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
    g = torch.Generator().manual_seed(args.seeds[0])
    start = ((torch.rand(seeds, 2, generator=g) * 2 - 1) * extent).to(zz.dtype)
    for ax, (name, (model, guide)) in zip(axes, trained.items()):
        x = decode_means(model, zz, MODALITIES)
        again = decode_means(model, encode_means(guide, x), MODALITIES)
        loss = sum(((again[m] - x[m]) ** 2).sum(-1) for m in MODALITIES)
        ax.imshow(np.log10(loss.reshape(grid, grid).numpy() + 1e-6), origin="lower",
                  extent=(-extent, extent, -extent, extent), cmap="magma")
        path_z = auto_reencode(model, guide, start, MODALITIES, steps=args.steps).numpy()
        for s in range(seeds):
            ax.plot(path_z[:, s, 0], path_z[:, s, 1], color="w", lw=0.6)
        ax.scatter(path_z[-1, :, 0], path_z[-1, :, 1], s=8, color="c", zorder=3)
        ax.set_title(f"{name}: log10 re-encoding loss, trajectories", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _sweep_verdict(sweep, a):
    """What the sweep shows about alpha = 1 and about the joint embedding's classes."""
    def coherence(r):
        return min(r["coherence"].values())

    big = [r for k, r in sweep.items() if float(k.split(",")[1]) >= 1]
    small = [r for k, r in sweep.items() if float(k.split(",")[1]) < 1]
    if not big or not small:
        return "(the sweep has no alpha >= 1 to compare)."
    joint = min(r["joint_accuracy"] for r in big)
    return (f"alpha = 1 gives the most coherent unimodal encoders (worst-modality coherence "
            f"{min(map(coherence, big)):.2f}-{max(map(coherence, big)):.2f} against "
            f"{min(map(coherence, small)):.2f}-{max(map(coherence, small)):.2f} for alpha < 1)"
            + (f" and the joint embeddings still tell all ten classes apart (accuracy at least "
               f"{joint:.2f}): at this budget no collapse of the multimodal classes, unlike the "
               "paper's remark." if joint >= 0.95 else
               f", but the joint embeddings no longer tell all classes apart (accuracy "
               f"{joint:.2f}): the collapse the paper describes."))


def _readme(payload):
    a = payload["args"]
    lines = header(
        "M2VAE on the bimodal mixture of Gaussians (ICLR 2019 submission, §5.1, Figs. 4-6)",
        command=payload["command"],
        budget=(f"{a['epochs']} epochs of {10 * a['per_class']} points (tVAE: that per "
                f"stage), batch {a['batch_size']}, Adam {a['lr']} (the paper: RMSprop), "
                f"Gaussian decoders with fixed scale {a['scale']} (the paper's loss is the RMS "
                f"error: this weighs reconstruction by 1 / (2 scale^2) = "
                f"{1 / (2 * a['scale'] ** 2):.0f} per squared unit, so its beta is not on the "
                f"paper's scale); comparison at beta = {a['beta']}, "
                f"alpha = {a['alpha']}; evaluation ELBOs with {a['eval_particles']} draws"),
        seeds=a["seeds"], wall_s=payload["wall_s"], machine=payload.get("machine"))
    lines += [f"Paper: {REFERENCE}.", "",
              "The paper shows these experiments as figures only. Evaluation ELBOs of eq. 12 "
              "(encode the subset, decode both; higher is better; comparable only within a "
              "model, as the paper warns), coherence of the unimodal encoders (the nearest "
              "class centroid of the joint embeddings at the unimodal embedding, over the "
              "classes that modality resolves: a 1-4, 9; b 1-8), the ELBO drop of the "
              "unimodal encodings of the classes a modality cannot tell apart, the accuracy "
              "of the joint embeddings' nearest class centroid (all ten classes: low when "
              "classes collapse together), and the "
              "fraction of test points still in their class after "
              f"{a['steps']} steps of auto re-encoding.", ""]

    def row(name, runs):
        """Mean ± std over ``runs`` (one per seed) of each column."""
        if isinstance(runs, dict):
            runs = [runs]

        def cell(get):
            return fmt(mean_std([get(r) for r in runs]))

        return [name, *(cell(lambda r, s=s: r["elbo"][s]) for s in ("a+b", "a", "b")),
                *(cell(lambda r, m=m: r["coherence"][m]) for m in MODALITIES),
                cell(lambda r: r["joint_accuracy"]),
                *(cell(lambda r, m=m: r["ambiguity_drop"][m]) for m in MODALITIES),
                cell(lambda r: r["reencoding_kept"])]

    head = ["model", "ELBO a,b", "ELBO a", "ELBO b", "coherence of q_a", "coherence of q_b",
            "joint accuracy", "ambiguity drop a", "ambiguity drop b", "kept after re-encoding"]
    lines += ["## Comparison (Fig. 5)", ""]
    lines += markdown_table(head, [row(k, v) for k, v in payload["models"].items()])
    m = payload["models"]
    best = max(MODELS, key=lambda k: mean_std(min(r["coherence"].values())
                                              for r in m[k])[0])
    lines += ["", f"Against the paper (the M2VAE the most coherent): the most coherent here is "
              f"{best}" + (", as in the paper." if best == "M2VAE" else ", unlike the paper."),
              "", "![comparison](comparison.png)", "", "## The M2VAE's (beta, alpha) sweep "
              "(Fig. 4)", ""]
    lines += markdown_table(["beta, alpha"] + head[1:],
                            [row(k.replace(",", ", "), v) for k, v in payload["sweep"].items()])
    lines += ["", "The paper: alpha <= 1e-2 works, alpha = 1 over-constrains (the multimodal "
              "classes collapse onto the unimodal means); large beta blurs and collapses the "
              "latent space. Here: " + _sweep_verdict(payload["sweep"], payload["args"]), "",
              "![sweep](sweep.png)", "", "## Auto re-encoding (Fig. 6)",
              "", "![re-encoding](reencoding.png)", "", "The data (Fig. 3):", "",
              "![data](data.png)", ""]
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
