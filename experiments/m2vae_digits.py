"""The M2VAE's e-MNIST study on e-digits (*Deep Generative Models for learning Coherent Latent
Representations from Multi-Modal Data*, anonymous ICLR 2019 submission on OpenReview, later
published by Korthals et al.; §4.1 Fig. 2 and §5.3 Table 1, Fig. 7), offline: the bundled 8x8
digits (modality ``a``) and procedurally rendered 8x8 shapes (``b``) made correlated by two
label-conditional VAEs (:func:`pyro_mmvae.data.e_digits`).

1. **Validation of the generator** (the paper's JMVAE ℒ_{a,b}: −199.23 on e-MNIST against
   −204.48 on the within-class-shuffled me-MNIST): JMVAE-kl
   (:class:`~pyro_mmvae.infer.JointMultimodalELBO`) trained on e-, me- and the naively paired
   m-digits; its joint evaluation ELBO on each test split.
2. **Table 1**: the M2VAE (recursive objective, beta_norm = 0.01, so beta = 0.32 per modality
   and 0.64 for the pair, alpha = 0.01), the two-stage tVAE and JMVAE-Zero trained on
   e-digits; the evaluation ELBOs of eq. 12 (encode {a, b}, {a} or {b}, decode both) on the
   test split.
3. **Fig. 7**: each model's latent embeddings by class and its decodings of a linear sweep
   over the latent plane within 2 sigma.

Networks: the paper's Table 2 scaled to 8x8 images — one network per subset with branches of
32 and a joint layer of 16 (:class:`~pyro_mmvae.guides.SubsetEncoders`), JMVAE-Zero's joint
encoder 128 -> 16, decoders 2 -> 16 -> 32 -> 64 with tanh, Bernoulli likelihood (BCE),
D_z = 2.

Writes ``experiments/results/m2vae_digits/`` (README.md with the tables beside the paper's
numbers from ``m2vae_digits_paper.json``, results.json, latents.png); ``--rerender DIR``
rewrites ``DIR/README.md`` from ``DIR/results.json`` without training.

    python experiments/m2vae_digits.py           # about ten minutes on 2 CPU cores
    python experiments/m2vae_digits.py --quick   # seconds (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from pyro_mmvae import JointMultimodalELBO, MixtureMultimodalELBO, RecursiveMultimodalELBO
from pyro_mmvae.data import e_digits
from pyro_mmvae.eval import decode_means, encode_means, subset_elbos
from pyro_mmvae.guides import JointEncoder, MultimodalGuide, SubsetEncoders
from pyro_mmvae.infer import beta_normalized
from pyro_mmvae.models import BernoulliDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from pyro_mmvae.tables import (beside, command_line, fmt, header, machine_summary,
                               markdown_table, mean_std, repository_relative, write_results)
from pyro_mmvae.train import fit, fit_two_stage

from _multimodal_tables import rerender_readme  # a sibling: the script's folder is on the path

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("a", "b")
DIM, LATENT = 64, 2
MODELS = ("M2VAE", "tVAE", "JMVAE-Zero")
SUBSETS = ("a+b", "a", "b")


def load_paper(path: Path = Path(__file__).with_name("m2vae_digits_paper.json")):
    """The paper's Table 1 (e-MNIST, 2 x 784 pixels, higher is better) as ``{model: (a+b, a,
    b)}``, the generator's validation ``{"e": ..., "me": ...}``, the decimals it prints and the
    reference."""
    paper = json.loads(path.read_text(encoding="utf-8"))
    assert paper["table1"]["columns"] == list(SUBSETS), path
    return ({k: tuple(paper["table1"][k]) for k in MODELS},
            {k: paper["validation"][k] for k in ("e", "me")}, paper["digits"], paper["source"])


PAPER, PAPER_VALIDATION, PAPER_DIGITS, PAPER_SOURCE = load_paper()


def build(kind: str, args, seed: int):
    torch.manual_seed(seed)
    if kind == "JMVAE-Zero":
        aggregator = JointEncoder(DIM, LATENT, 2, hidden=(4 * args.branch, args.joint))
    else:
        aggregator = SubsetEncoders(DIM, LATENT, 2, branch_dim=args.branch,
                                    hidden=(args.joint,))
    guide = MultimodalGuide({m: nn.Identity() for m in MODALITIES}, aggregator)
    model = MultimodalModel(StandardNormalPrior(LATENT),
                            {m: BernoulliDecoder(MLP(LATENT, (args.joint, args.branch), DIM,
                                                     nn.Tanh)) for m in MODALITIES})
    return model, guide


def train(kind: str, data, args, seed: int):
    """Every model under the paper's beta_norm: beta_S = beta_norm * D_S / D_z for the
    encoder of subset S (0.32 for one modality, 0.64 for both); JMVAE-Zero, whose single
    encoder always reconstructs both modalities, gets the pair's 0.64."""
    model, guide = build(kind, args, seed)
    norm = dict(beta_norm=args.beta_norm, input_dims={m: DIM for m in MODALITIES})
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=seed, progress=False)
    if kind == "M2VAE":
        fit(model, guide, RecursiveMultimodalELBO(alpha=args.alpha, **norm), data,
            epochs=args.epochs, **common)
    elif kind == "JMVAE":
        fit(model, guide, JointMultimodalELBO(alpha=args.alpha, **norm), data,
            epochs=args.epochs, **common)
    elif kind == "tVAE":
        losses = (JointMultimodalELBO(alpha=0.0, **norm),
                  RecursiveMultimodalELBO(alpha=0.0, subsets="unimodal", **norm))
        fit_two_stage(model, guide, data, epochs=(args.epochs, args.epochs), losses=losses,
                      **common)
    else:
        beta = beta_normalized(args.beta_norm, 2 * DIM, LATENT)
        fit(model, guide, MixtureMultimodalELBO(masking="zero_augmented", beta=beta), data,
            epochs=args.epochs, **common)
    model.eval()
    guide.eval()
    return model, guide


def evaluation_elbos(model, guide, test, args, seed):
    """Mean eq. 12 ELBO of each encoder subset on the test split."""
    torch.manual_seed(seed)
    with torch.no_grad():
        r = subset_elbos(model, guide, test, num_particles=args.eval_particles)
    return {name: float(row.mean()) for name, row in zip(r["names"], r["elbo"])}


@torch.no_grad()
def active_dimensions(guide, test, threshold=0.1) -> int:
    """Latent coordinates the joint encoder uses: the standard deviation of its means over
    the test tuples above ``threshold`` (the prior's is 1)."""
    return int((encode_means(guide, test).std(0) > threshold).sum())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-points", type=int, default=10000)
    p.add_argument("--test-points", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--branch", type=int, default=32, help="branch width (the paper: 128, 64)")
    p.add_argument("--joint", type=int, default=16, help="joint layer width (the paper: 64)")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--beta-norm", type=float, default=0.01, help="the paper's beta_norm")
    p.add_argument("--eval-particles", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the e-digits generator")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny networks: one is fastest)")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "m2vae_digits"))
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, small data")
    p.add_argument("--rerender", metavar="DIR",
                   help="only rewrite DIR/README.md from DIR/results.json (no training)")
    args = p.parse_args(argv)
    if args.rerender:
        return rerender_readme(args.rerender, "m2vae_digits.py", _readme)
    generator_epochs = None
    if args.quick:
        args.train_points, args.test_points, args.epochs, args.seeds = 300, 100, 1, [0]
        generator_epochs = 2
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dtype = torch.get_default_dtype()
    extra = {} if generator_epochs is None else {"epochs": generator_epochs, "num_shapes": 200}
    variants = e_digits(args.train_points, args.test_points, seed=args.data_seed, dtype=dtype,
                        **extra)

    validation = {v: [] for v in ("e", "me", "m")}
    for seed in args.seeds:
        for v in validation:
            train_ds, test_ds = variants[v]
            model, guide = train("JMVAE", train_ds.data, args, seed)
            validation[v].append(evaluation_elbos(model, guide, test_ds.data, args, seed)["a+b"])
        done = ", ".join(f"{v} {r[-1]:.2f}" for v, r in validation.items())
        print(f"seed {seed} JMVAE a+b: {done}", flush=True)
    table, shown = {k: {s: [] for s in SUBSETS} for k in MODELS}, {}
    active = {k: [] for k in MODELS}
    train_ds, test_ds = variants["e"]
    for seed in args.seeds:
        for kind in MODELS:
            model, guide = train(kind, train_ds.data, args, seed)
            for s, value in evaluation_elbos(model, guide, test_ds.data, args, seed).items():
                table[kind][s].append(value)
            active[kind].append(active_dimensions(guide, test_ds.data))
            if seed == args.seeds[0]:
                shown[kind] = (model, guide)
            done = ", ".join(f"{s} {table[kind][s][-1]:.2f}" for s in SUBSETS)
            print(f"seed {seed} {kind}: {done}", flush=True)
    wall = time.time() - t0
    payload = {"args": dict(vars(args), output_dir=repository_relative(out, ROOT)),
               "validation_joint_elbo": validation, "evaluation_elbos": table,
               "active_dimensions": active, "wall_s": wall,
               "command": command_line("experiments/m2vae_digits.py", argv),
               "machine": machine_summary(args.threads)}
    _figure(out / "latents.png", shown, test_ds)
    write_results(out, payload, _readme(payload))
    return payload


@torch.no_grad()
def _figure(path, shown, test_ds, grid=8):
    """Fig. 7: per model, the embeddings of q(z|a,b), q(z|a), q(z|b) by class, and the
    decodings of both modalities over a grid within 2 sigma."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    labels = test_ds.labels
    colours = matplotlib.colormaps["tab10"](labels.numpy())
    fig = Figure(figsize=(15, 3.2 * len(shown)))
    axes = fig.subplots(len(shown), 5, squeeze=False)
    u = torch.linspace(-2, 2, grid, dtype=torch.get_default_dtype())
    zz = torch.stack(torch.meshgrid(u, -u, indexing="xy"), -1).reshape(-1, 2)
    n = labels.shape[0]
    for row, (kind, (model, guide)) in zip(axes, shown.items()):
        for ax, subset in zip(row[:3], (MODALITIES, ("a",), ("b",))):
            mask = {m: torch.full((n,), m in subset, dtype=torch.bool) for m in MODALITIES}
            z = encode_means(guide, test_ds.data, mask).numpy()
            ax.scatter(z[:, 0], z[:, 1], s=2, c=colours)
            ax.set_title(f"{kind}: q(z | {', '.join(subset)})", fontsize=8)
        means = decode_means(model, zz, MODALITIES)
        for ax, m in zip(row[3:], MODALITIES):
            tiles = means[m].reshape(grid, grid, 8, 8).permute(0, 2, 1, 3)
            tiles = tiles.reshape(8 * grid, 8 * grid)
            ax.imshow(tiles.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"{kind}: decoded {m} over z in [-2, 2]^2", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _readme(payload):
    a = payload["args"]
    lines = header(
        "M2VAE on e-digits (ICLR 2019 submission, §4.1 and §5.3, Table 1, Fig. 7)",
        command=payload["command"],
        budget=(f"{a['epochs']} epochs of {a['train_points']} e-digits tuples (tVAE: that per "
                f"stage), batch {a['batch_size']}, Adam {a['lr']}, branches {a['branch']}, "
                f"joint layer {a['joint']}, D_z = 2, alpha = {a['alpha']}, beta_norm = "
                f"{a['beta_norm']}; evaluation ELBOs (eq. 12) with {a['eval_particles']} draws "
                f"on {a['test_points']} test tuples; generator seed {a['data_seed']}"),
        seeds=a["seeds"], wall_s=payload["wall_s"], machine=payload.get("machine"))
    v = {k: mean_std(x) for k, x in payload["validation_joint_elbo"].items()}
    lines += ["Mean ± std over the seeds, nats per tuple (higher is better); in parentheses the "
              f"paper's e-MNIST numbers ({PAPER_SOURCE}; `experiments/m2vae_digits_paper.json`; "
              "2 x 784 pixels against 2 x 64 here: compare the pattern).", "",
              "## The generator's validation (Fig. 2)", ""]
    lines += markdown_table(["JMVAE trained and tested on", "ℒ_{a,b}"],
                            [["e-digits", beside(v["e"], PAPER_VALIDATION["e"], PAPER_DIGITS)],
                             ["me-digits (b shuffled within class)",
                              beside(v["me"], PAPER_VALIDATION["me"], PAPER_DIGITS)],
                             ["m-digits (real images paired by class)", fmt(v["m"])]])
    lines += ["", "Against the paper: " + (
        f"as on e-MNIST, the joint ELBO is higher on e- than on me-digits ({fmt(v['e'])} "
        f"against {fmt(v['me'])}): the generator's pairs share within-class structure that "
        "a joint model can use." if v["e"][0] > v["me"][0] else
        f"unlike e-MNIST, the joint ELBO is not higher on e- than on me-digits ({fmt(v['e'])} "
        f"against {fmt(v['me'])})."), "", "## Table 1", ""]
    t = payload["evaluation_elbos"]
    act = payload["active_dimensions"]
    rows = [[kind] + [beside(mean_std(t[kind][s]), PAPER[kind][j], PAPER_DIGITS)
                      for j, s in enumerate(SUBSETS)]
            + [" / ".join(map(str, act[kind]))] for kind in MODELS]
    lines += markdown_table(["model", "ℒ_{a,b}", "ℒ_a", "ℒ_b",
                             "latent dimensions used (per seed)"], rows)
    m = {k: {s: mean_std(t[k][s])[0] for s in SUBSETS} for k in MODELS}
    unimodal_best = all(m["M2VAE"][s] >= max(m[k][s] for k in MODELS) for s in ("a", "b"))
    gap = {k: m[k]["a+b"] - min(m[k]["a"], m[k]["b"]) for k in MODELS}
    lines += ["", "Against the paper: " + (
        "as in Table 1, the M2VAE has the best unimodal ELBOs" if unimodal_best else
        "unlike Table 1, the M2VAE does not have the best unimodal ELBOs") +
        "; the gap between the joint and the worse unimodal ELBO is " +
        ", ".join(f"{k} {gap[k]:.2f}" for k in MODELS) + " (the paper: " +
        ", ".join(f"{p[0] - min(p[1:]):.2f}" for p in PAPER.values()) + ")" +
        (", the M2VAE's smaller than the tVAE's as in the paper" if
         gap["M2VAE"] < gap["tVAE"] else ", the M2VAE's not smaller than the tVAE's") +
        ". A model whose joint encoder uses fewer than the two latent dimensions (last "
        "column: coordinates whose means vary by more than 0.1 over the test tuples) has "
        "collapsed part of its latent space, which also narrows its gap.", "",
        "![latents](latents.png)", ""]
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
