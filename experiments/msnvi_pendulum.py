"""MSNVI's pendulum (Kurle, Günnemann and van der Smagt, AAAI 2019, §5.3, Fig. 5): redundant
sensors, fusion and conflict detection.

Three noisy cameras see a pendulum bob; the model generates only its (x, y). Trained with
L(ind) (K = 16), one Gaussian belief per camera. On a sweep of three rotations in which camera 0
fails (pure noise) after two, the script reports, before and after the failure:

- the error and predictive spread of (x, y) from each single camera and from the prior-dividing
  PoE of all three and of cameras 1 and 2 (500 latent samples per angle);
- the conflict measure of camera 0 against the others, which should rise when it fails, so
  that one fuses only the two healthy cameras.

Writes ``experiments/results/msnvi_pendulum/`` (README.md, results.json, sweep.png). The paper
shows figures only. ``--rerender DIR`` rewrites ``DIR/README.md`` from ``DIR/results.json``
without training.

    python experiments/msnvi_pendulum.py           # a few minutes on 2 CPU cores
    python experiments/msnvi_pendulum.py --quick   # seconds (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyro_mmvae import MultiSourceELBO
from pyro_mmvae.data import pendulum, pendulum_sweep
from pyro_mmvae.eval import conflict_matrix, decode_means
from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from pyro_mmvae.tables import (command_line, fmt, header, machine_summary, markdown_table,
                               repository_relative, write_results)
from pyro_mmvae.train import fit

from _multimodal_tables import rerender_readme  # a sibling: the script's folder is on the path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ("Richard Kurle, Stephan Günnemann, Patrick van der Smagt, *Multi-Source Neural "
             "Variational Inference*, AAAI 2019, arXiv:1811.04451")
CAMERAS = ("camera0", "camera1", "camera2")
FUSIONS = {"camera 0": ("camera0",), "camera 1": ("camera1",), "camera 2": ("camera2",),
           "PoE(0, 1, 2)": CAMERAS, "PoE(1, 2)": ("camera1", "camera2")}


def predictive(model, guide, data, subset, samples):
    """Mean and standard deviation ``(N, 2)`` of the decoded (x, y) over ``samples`` draws
    from the belief of ``subset``."""
    n = next(iter(data.values())).shape[0]
    mask = {m: torch.full((n,), m in subset, dtype=torch.bool) for m in CAMERAS}
    q = guide.distribution({m: data[m] for m in CAMERAS}, mask)
    z = q.sample((samples,))  # (S, N, D)
    xy = decode_means(model, z.reshape(-1, z.shape[-1]), ["xy"])["xy"].reshape(samples, n, 2)
    return xy.mean(0), xy.std(0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--points", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=16, help="the paper's is 32")
    p.add_argument("--particles", type=int, default=16, help="K of L(ind)")
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps-per-rotation", type=int, default=60)
    p.add_argument("--samples", type=int, default=500, help="latent samples per angle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir",
                   default=str(ROOT / "experiments" / "results" / "msnvi_pendulum"))
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--rerender", metavar="DIR",
                   help="only rewrite DIR/README.md from DIR/results.json (no training)")
    args = p.parse_args(argv)
    if args.rerender:
        return rerender_readme(args.rerender, "msnvi_pendulum.py", _readme)
    if args.quick:
        args.epochs, args.points, args.samples, args.hidden = 2, 256, 20, 16
        args.image_size, args.steps_per_rotation = 8, 6
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dtype = torch.get_default_dtype()
    pixels = args.image_size ** 2

    torch.manual_seed(args.seed)
    guide = MultimodalGuide({m: expert_encoder(pixels, args.latent_dim, (args.hidden,))
                             for m in CAMERAS}, PoE("divide"))
    model = MultimodalModel(StandardNormalPrior(args.latent_dim),
                            {"xy": GaussianDecoder(MLP(args.latent_dim, (64, 64), 2),
                                                   scale=0.05)})
    train = pendulum(num_points=args.points, image_size=args.image_size, seed=args.seed,
                     dtype=dtype)
    history = fit(model, guide, MultiSourceELBO(args.particles, objective="ind"), train.data,
                  epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed, progress=False)
    model.eval()
    guide.eval()

    sweep = pendulum_sweep(3, args.steps_per_rotation, image_size=args.image_size,
                           seed=args.seed + 1, dtype=dtype)
    split = 2 * args.steps_per_rotation
    truth = sweep.data["xy"]
    torch.manual_seed(args.seed + 2)
    rows, curves = {}, {}
    with torch.no_grad():
        for name, subset in FUSIONS.items():
            mean, std = predictive(model, guide, sweep.data, subset, args.samples)
            err = (mean - truth).norm(dim=-1)
            rows[name] = {"error before": float(err[:split].mean()),
                          "error after": float(err[split:].mean()),
                          "spread before": float(std[:split].mean()),
                          "spread after": float(std[split:].mean())}
            curves[name] = {"mean": mean.tolist(), "std": std.tolist()}
        c = conflict_matrix(guide, {m: sweep.data[m] for m in CAMERAS})  # (N, 3, 3)
    # camera 0 against the others, both directions, per angle
    c0 = torch.stack([c[:, 0, 1], c[:, 0, 2], c[:, 1, 0], c[:, 2, 0]], -1).mean(-1)
    c12 = torch.stack([c[:, 1, 2], c[:, 2, 1]], -1).mean(-1)
    conflict = {"camera 0 vs others, before": float(c0[:split].mean()),
                "camera 0 vs others, after": float(c0[split:].mean()),
                "camera 1 vs 2, before": float(c12[:split].mean()),
                "camera 1 vs 2, after": float(c12[split:].mean())}
    recorded = dict(vars(args), output_dir=repository_relative(out, ROOT))
    payload = {"args": recorded, "rows": rows, "conflict": conflict,
               "final_loss": history["loss"][-1], "wall_s": time.time() - t0,
               "command": command_line("experiments/msnvi_pendulum.py", argv),
               "machine": machine_summary()}
    _figure(out / "sweep.png", sweep, curves, c0, split)
    write_results(out, {**payload, "curves": curves, "conflict_curve": c0.tolist()},
                  _readme(payload))
    return payload


def _figure(path, sweep, curves, c0, split):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(3, 1, sharex=True)
    t = np.arange(len(c0))
    panels = ((0, "x", ("camera 0", "PoE(0, 1, 2)", "PoE(1, 2)")),
              (1, "y", ("camera 1", "camera 2", "PoE(1, 2)")))
    for i, coord, names in panels:
        for name in names:
            mean, std = np.array(curves[name]["mean"]), np.array(curves[name]["std"])
            axes[i].plot(t, mean[:, i], label=name)
            axes[i].fill_between(t, mean[:, i] - 2 * std[:, i], mean[:, i] + 2 * std[:, i],
                                 alpha=0.2)
        axes[i].plot(t, sweep.data["xy"][:, i].numpy(), "k--", lw=0.8, label=f"true {coord}")
        axes[i].set_ylabel(f"{coord} (mean ± 2 sd)")
        axes[i].legend(fontsize=7, ncol=4)
    axes[2].semilogy(t, c0.numpy())
    axes[2].axhline(1.0, color="0.5", lw=0.8)
    axes[2].set_ylabel("conflict of camera 0")
    for ax in axes:
        ax.axvline(split, color="r", lw=0.8)
    axes[2].set_xlabel("sweep step (camera 0 fails at the red line)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _readme(payload):
    a = payload["args"]
    lines = header(
        "MSNVI pendulum: fusion and conflict (Kurle et al. 2019, §5.3, Fig. 5)",
        command=payload["command"],
        budget=(f"{a['epochs']} epochs of {a['points']} renders ({a['image_size']}x"
                f"{a['image_size']} px; the paper's are 32x32), batch 128, Adam 1e-3, L(ind) "
                f"with K = {a['particles']}, latent {a['latent_dim']}, encoders {a['hidden']} "
                f"wide; sweep: 3 rotations of {a['steps_per_rotation']} steps, camera 0 pure "
                f"noise after two; {a['samples']} latent samples per angle"),
        seeds=[a["seed"]], wall_s=payload["wall_s"], machine=payload.get("machine"))
    columns = ("error before", "error after", "spread before", "spread after")
    lines += [f"Paper: {REFERENCE}.", ""]
    lines += markdown_table(["belief", *columns],
                            [[name, *(fmt(r[k], 3) for k in columns)]
                             for name, r in payload["rows"].items()])
    c = payload["conflict"]
    lines += ["", "Error: distance of the predictive mean of (x, y) from the bob (radius 1); "
              "spread: the predictive standard deviation, averaged over x and y.", ""]
    lines += markdown_table(
        ["conflict (mean c)", "before the failure", "after"],
        [["camera 0 vs cameras 1, 2", fmt(c["camera 0 vs others, before"]),
          fmt(c["camera 0 vs others, after"])],
         ["camera 1 vs camera 2", fmt(c["camera 1 vs 2, before"]),
          fmt(c["camera 1 vs 2, after"])]]) + [""]
    r = payload["rows"]
    rises = c["camera 0 vs others, after"] > c["camera 0 vs others, before"]
    poe_hurt = r["PoE(0, 1, 2)"]["error after"] > r["PoE(1, 2)"]["error after"]
    lines += ["Against the paper (Fig. 5): the conflict of camera 0 "
              + ("rises after its failure" if rises else "does not rise after its failure")
              + ", and after it the fusion of all three is "
              + ("worse than that of the healthy two" if poe_hurt else
                 "not worse than that of the healthy two")
              + ". Fusing redundant cameras narrows the predictive spread before the failure: "
              f"{r['PoE(0, 1, 2)']['spread before']:.3f} for the PoE against "
              f"{min(r[f'camera {k}']['spread before'] for k in range(3)):.3f} for the best "
              "single camera.", "", "![sweep](sweep.png)"]
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
