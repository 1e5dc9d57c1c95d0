"""MSNVI's MNIST variants (§5.2: Table 1, Figs. 3 and 4) in miniature on the bundled 8x8 digits:
Richard Kurle, Stephan Günnemann, Patrick van der Smagt, *Multi-Source Neural Variational
Inference* (AAAI 2019, arXiv:1811.04451).

Three variants of the digits, dynamically binarised (:func:`pyro_mmvae.data.digit_sources`):

- **TB**: top and bottom halves, each both a source and an observation;
- **QU**: the four quarters, each both;
- **NO**: four copies of the digit with independent bit-flip noise (p = 0.05) as the sources,
  the clean digit as the one observation.

On each, five models are trained — L(ind), L(MoE), L(PoE), L(hybrid) with K = 16 and
L(hybrid) with K = 1 — and every one is scored under L(ind), L(MoE) and L(PoE) with K = 16 on
the test split (negative bounds, nats per digit, lower is better: the paper's train x eval
table), beside the IWAE baselines: the full image into one encoder (TB, QU) and a single noisy
source (NO). Fig. 3: samples from the top-half, bottom-half and fused beliefs, and generations
from a one-hot label source (TB + labels). Fig. 4: imputing the missing bottom half (TB) and
bottom-right quarter (QU) in one shot from the PoE of the observed parts, against the
Markov-chain imputation of Rezende et al. (150 steps), run both with the same model (the PoE of
all parts re-encoding its own imputation) and with the IWAE baseline (a standard VAE on the
full image, as Rezende et al.'s).

Writes ``experiments/results/msnvi_digits/`` (README.md with the tables beside the paper's
MNIST numbers from ``msnvi_digits_paper.json``, results.json, samples.png, imputation.png);
``--render RESULTS_JSON`` rewrites that README from its results.json without training.

    python experiments/msnvi_digits.py           # about 20 minutes on 2 CPU cores
    python experiments/msnvi_digits.py --quick   # seconds (the test suite's smoke run)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyro_mmvae import MultiSourceELBO
from pyro_mmvae.data import binarization, digit_sources
from pyro_mmvae.eval import (decode_means, markov_chain_imputation, multisource_evaluation,
                             one_shot_imputation)
from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import BernoulliDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from pyro_mmvae.tables import (beside, command_line, header, machine_summary, markdown_table,
                               repository_relative, write_results)
from pyro_mmvae.train import fit

from _multimodal_tables import rerender_readme  # a sibling: the script's folder is on the path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"tb": ("top", "bottom"), "qu": ("q0", "q1", "q2", "q3")}
# (sources, observations) of each variant; "full" is the IWAE baseline's hard-wired image
ROLES = {"tb": (PARTS["tb"], PARTS["tb"]), "qu": (PARTS["qu"], PARTS["qu"]),
         "no": (tuple(f"noisy{i}" for i in range(4)), ("clean",))}
BASELINE_SOURCE = {"tb": "full", "qu": "full", "no": "noisy0"}
TRAINED = (("ind", 16), ("moe", 16), ("poe", 16), ("hybrid", 16), ("hybrid", 1))
EVALUATED = ("ind", "moe", "poe")


def load_paper(path: Path = Path(__file__).with_name("msnvi_digits_paper.json")):
    """Table 1 of the paper (MNIST, 28x28): ``{variant: {eval objective: (the row over TRAINED,
    then the IWAE; None: no such cell)}}``, the decimals it prints and the reference."""
    paper = json.loads(path.read_text(encoding="utf-8"))
    assert paper["columns"] == [f"{o} K={k}" for o, k in TRAINED] + ["IWAE"], path
    table = {v: {e: tuple(r) for e, r in rows.items()} for v, rows in paper["table1"].items()}
    return table, paper["digits"], paper["source"]


PAPER, PAPER_DIGITS, PAPER_SOURCE = load_paper()
IMPUTED = {"tb": ("bottom",), "qu": ("q3",)}
LABEL = {"ind": "ind", "moe": "MoE", "poe": "PoE", "hybrid": "hybrid"}


def with_full(variant: str, transform):
    """``transform`` followed by the IWAE baseline's hard-wired input: the parts of a TB / QU
    digit concatenated into one ``"full"`` source."""
    def wrapped(batch, mask, generator=None):
        batch, mask = transform(batch, mask, generator)
        if variant in PARTS:
            batch = dict(batch, full=torch.cat([batch[m] for m in PARTS[variant]], -1))
            if mask is not None:
                mask = dict(mask, full=torch.stack([mask[m] for m in PARTS[variant]]).all(0))
        return batch, mask
    return wrapped


def build(sources, observations, dims, args, seed):
    """The MSNVI model: one Gaussian belief per source, fused by the prior-dividing PoE, one
    Bernoulli decoder per observation."""
    torch.manual_seed(seed)
    hidden = tuple(args.hidden)
    guide = MultimodalGuide({s: expert_encoder(dims[s], args.latent, hidden) for s in sources},
                            PoE("divide"))
    model = MultimodalModel(StandardNormalPrior(args.latent),
                            {o: BernoulliDecoder(MLP(args.latent, hidden[::-1], dims[o]))
                             for o in observations})
    return model, guide


def train(variant, sources, observations, objective, k, train_data, args):
    dims = {m: v.shape[-1] for m, v in train_data.items()}
    dims["full"] = sum(dims[m] for m in PARTS.get(variant, ()))
    model, guide = build(sources, observations, dims, args, args.seed)
    history = fit(model, guide, MultiSourceELBO(k, objective=objective), train_data,
                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  progress=False, transform=with_full(variant, binarization(variant)))
    model.eval()
    guide.eval()
    return model, guide, history["loss"]


def binarized(variant, split, seed):
    """One fixed binarisation of a split (the test digits are scored as one draw)."""
    ds = digit_sources(variant, split, dtype=torch.get_default_dtype())
    g = torch.Generator().manual_seed(seed)
    data, _ = with_full(variant, binarization(variant))(ds.data, ds.mask, g)
    return ds, data


def run_variant(variant, args, log):
    ds, _ = binarized(variant, "train", args.seed)
    test_ds, test = binarized(variant, "test", args.seed + 1000)
    sources, observations = ROLES[variant]
    table, models, curves = {}, {}, {}
    for objective, k in TRAINED:
        name = f"{objective} K={k}"
        t0 = time.time()
        model, guide, losses = train(variant, sources, observations, objective, k, ds.data, args)
        table[name] = multisource_evaluation(model, guide, test, objectives=EVALUATED,
                                             num_particles=args.eval_particles)
        models[name], curves[name] = (model, guide), losses
        log(f"  {variant} {name}: {table[name]}  ({time.time() - t0:.0f} s)")
    model, guide, losses = train(variant, (BASELINE_SOURCE[variant],), observations, "poe", 16,
                                 ds.data, args)
    # one source: every objective is the IWAE bound of that source
    table["IWAE"] = multisource_evaluation(model, guide, test, objectives=("poe",),
                                           num_particles=args.eval_particles)
    models["IWAE"], curves["IWAE"] = (model, guide), losses
    log(f"  {variant} IWAE ({BASELINE_SOURCE[variant]}): {table['IWAE']}")
    return table, models, curves, test, test_ds.labels


class HardWired(nn.Module):
    """The IWAE baseline's guide seen from the parts: it encodes their concatenation, the
    ``"full"`` source, so that a Markov chain can update one part and re-encode."""

    def __init__(self, guide, parts):
        super().__init__()
        self.guide, self.modalities = guide, tuple(parts)

    def forward(self, data, mask):
        full = torch.cat([data[m] for m in self.modalities], -1)
        return self.guide({"full": full},
                          {"full": torch.stack([mask[m] for m in self.modalities]).all(0)})


def imputation(variant, msnvi, iwae, test, args):
    """Fig. 4: one-shot imputation from the PoE of the observed parts (``msnvi``, trained with
    L(ind)) against the Markov chain with the same model and with the IWAE baseline (mean
    log-likelihood of the missing part per step)."""
    targets = IMPUTED[variant]
    parts = {m: test[m] for m in PARTS[variant]}
    torch.manual_seed(args.seed)
    one_shot = one_shot_imputation(*msnvi, parts, targets, num_samples=args.samples)
    out = {"one_shot": float(one_shot["log_likelihood"].mean())}
    for name, (model, guide) in (("chain", msnvi),
                                 ("chain_iwae", (iwae[0], HardWired(iwae[1], PARTS[variant])))):
        chain = markov_chain_imputation(model, guide, parts, targets, steps=args.chain_steps,
                                        generator=torch.Generator().manual_seed(args.seed))
        out[name] = chain["log_likelihood"].mean(1).tolist()
    return out


def label_generation(args, log):
    """Fig. 3b: a TB model with a third, one-hot label source (not generated); returns the
    decoded means of ``samples`` draws from each class's label belief, ``(10, S, 64)``."""
    ds = digit_sources("tb_labels", "train", dtype=torch.get_default_dtype())
    dims = {m: v.shape[-1] for m, v in ds.data.items()}
    model, guide = build(("top", "bottom", "label"), PARTS["tb"], dims, args, args.seed)
    fit(model, guide, MultiSourceELBO(16, objective="hybrid"), ds.data, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=False,
        transform=binarization("tb_labels"))
    model.eval()
    guide.eval()
    eye = torch.eye(10, dtype=torch.get_default_dtype())
    data = {"top": torch.zeros(10, 32), "bottom": torch.zeros(10, 32), "label": eye}
    mask = {"top": torch.zeros(10, dtype=torch.bool), "bottom": torch.zeros(10, dtype=torch.bool),
            "label": torch.ones(10, dtype=torch.bool)}
    with torch.no_grad():
        z = guide.distribution({m: v.to(eye.dtype) for m, v in data.items()}, mask).sample(
            (args.label_samples,))  # (S, 10, D)
        return _images(model, z.transpose(0, 1))


def _images(model, z):
    """Decoded 8x8 digit means of TB latents ``(..., D)`` as ``(..., 64)``."""
    means = decode_means(model, z.reshape(-1, z.shape[-1]), PARTS["tb"])
    return torch.cat([means["top"], means["bottom"]], -1).reshape(z.shape[:-1] + (64,))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(ROLES), default=list(ROLES))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128])
    p.add_argument("--eval-particles", type=int, default=16, help="K of the evaluation")
    p.add_argument("--samples", type=int, default=16, help="draws per one-shot imputation")
    p.add_argument("--chain-steps", type=int, default=150)
    p.add_argument("--label-samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny networks: one is fastest)")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "msnvi_digits"))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 epochs, 5 chain steps, small networks")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only rewrite the README beside RESULTS_JSON from its numbers")
    args = p.parse_args(argv)
    if args.render:
        return rerender_readme(Path(args.render).parent, "msnvi_digits.py", _readme)
    if args.quick:
        args.epochs, args.chain_steps, args.hidden, args.eval_particles = 2, 5, [16], 4
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log = functools.partial(print, flush=True)
    tables, curves, imputations, fused = {}, {}, {}, None
    for variant in args.variants:
        table, models, curves[variant], test, labels = run_variant(variant, args, log)
        tables[variant] = table
        if variant in IMPUTED:
            imputations[variant] = imputation(variant, models["ind K=16"], models["IWAE"],
                                              test, args)
        if variant == "tb":
            fused = _belief_samples(*models["hybrid K=16"], test, labels)
    generated = label_generation(args, log) if "tb" in args.variants else None
    wall = time.time() - t0
    payload = {"args": dict(vars(args), output_dir=repository_relative(out, ROOT)),
               "negative_bounds": tables, "imputation": imputations, "train_loss": curves,
               "wall_s": wall, "command": command_line("experiments/msnvi_digits.py", argv),
               "machine": machine_summary(args.threads)}
    _figures(out, fused, generated, imputations)
    write_results(out, payload, _readme(payload))
    return payload


@torch.no_grad()
def _belief_samples(model, guide, test, labels, per_row=3):
    """Fig. 3a: for one test digit of each class, ``per_row`` decoded samples of the top-half,
    bottom-half and fused beliefs: ``{row: (10, per_row, 64)}`` (the originals first)."""
    idx = torch.stack([torch.nonzero(labels == c)[0, 0] for c in range(10)])
    data = {m: test[m][idx] for m in PARTS["tb"]}
    rows = {"original": torch.cat([data["top"], data["bottom"]], -1).unsqueeze(1)}
    torch.manual_seed(0)
    for name, subset in (("top belief", ("top",)), ("bottom belief", ("bottom",)),
                         ("fused", PARTS["tb"])):
        mask = {m: torch.full((10,), m in subset, dtype=torch.bool) for m in PARTS["tb"]}
        z = guide.distribution(data, mask).sample((per_row,)).transpose(0, 1)  # (10, S, D)
        rows[name] = _images(model, z)
    return rows


def _figures(out, fused, generated, imputations):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    if fused is not None:
        blocks = [("originals", fused["original"])]
        blocks += [(name, fused[name]) for name in ("top belief", "bottom belief", "fused")]
        if generated is not None:
            blocks.append(("from the label belief", generated))
        fig = Figure(figsize=(10, 1.2 * sum(b.shape[1] for _, b in blocks) + 0.5))
        axes = fig.subplots(sum(b.shape[1] for _, b in blocks), 10, squeeze=False)
        r = 0
        for name, block in blocks:
            for s in range(block.shape[1]):
                for c in range(10):
                    axes[r, c].imshow(block[c, s].reshape(8, 8).numpy(), cmap="gray_r", vmin=0,
                                      vmax=1)
                    axes[r, c].set(xticks=[], yticks=[])
                axes[r, 0].set_ylabel(name if s == 0 else "", fontsize=7, rotation=0,
                                      ha="right")
                r += 1
        fig.suptitle("Fig. 3: samples from the beliefs of the halves, their fusion, and from "
                     "a label (one column per class)", fontsize=9)
        fig.savefig(out / "samples.png", dpi=90)
    if imputations:
        fig = Figure(figsize=(5 * len(imputations), 3.5))
        axes = fig.subplots(1, len(imputations), squeeze=False)[0]
        for ax, (variant, r) in zip(axes, imputations.items()):
            steps = np.arange(1, len(r["chain"]) + 1)
            ax.plot(steps, r["chain"], label="Markov chain, same model (PoE of all parts)")
            ax.plot(steps, r["chain_iwae"], label="Markov chain, IWAE on the full image")
            ax.axhline(r["one_shot"], color="C1", label="one shot from the PoE (MSNVI)")
            ax.set(xlabel="Markov-chain step", ylabel="log-likelihood of the missing part",
                   title=f"Digits-{variant.upper()}: {' + '.join(IMPUTED[variant])} missing")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "imputation.png", dpi=100)


def _readme(payload):
    a = payload["args"]
    names = [f"{o} K={k}" for o, k in TRAINED] + ["IWAE"]
    columns = [f"L({LABEL[o]})" + ("" if k == 16 else f" K={k}") for o, k in TRAINED] + ["IWAE"]
    lines = header(
        "MSNVI on the digits variants (Kurle et al. 2019, §5.2, Table 1, Figs. 3-4)",
        command=payload["command"],
        budget=(f"{a['epochs']} epochs of the 1,438 training digits (dynamic binarisation), "
                f"batch {a['batch_size']}, Adam {a['lr']}, latent {a['latent']}, MLPs "
                f"{a['hidden']}; evaluation K = {a['eval_particles']} on one binarisation of "
                f"the 359 test digits"),
        seeds=[a["seed"]], wall_s=payload["wall_s"], machine=payload.get("machine"))
    lines += ["Negative bounds in nats per digit (lower is better). Rows: the objective of the "
              "evaluation; columns: the objective of training. In parentheses the paper's "
              f"numbers ({PAPER_SOURCE}; `experiments/msnvi_digits_paper.json`): a digit here "
              "has 64 pixels against 784, so compare the pattern, not the values. The IWAE is "
              "the baseline of one source: the full image into one encoder (TB, QU), one noisy "
              "copy (NO).", ""]
    for variant, table in payload["negative_bounds"].items():
        lines += [f"## Digits-{variant.upper()}", ""]
        rows = []
        for e in EVALUATED:
            cells = [beside(table[n].get(e) if n != "IWAE" or e == "poe" else None,
                            PAPER[variant][e][j], PAPER_DIGITS) for j, n in enumerate(names)]
            rows.append([f"L({LABEL[e]})", *cells])
        lines += markdown_table(["eval \\ train", *columns], rows) + [""]
        lines += _verdict(variant, table) + [""]
    if payload["imputation"]:
        lines += ["## Imputation (Fig. 4)", "",
                  "Mean log-likelihood of the missing part of the test digits; the one-shot "
                  "imputation decodes draws from the PoE of the observed parts (model trained "
                  "with L(ind)); the Markov chains re-encode their own imputation each step, "
                  "with the same model (the PoE of all parts) and with the IWAE baseline (the "
                  "full image into one encoder, a standard VAE as Rezende et al.'s). Step 1, "
                  "the best step and the last.", ""]
        rows = [[v.upper(), " + ".join(IMPUTED[v]), f"{r['one_shot']:.2f}",
                 *(" / ".join(f"{x:.2f}" for x in (c[0], max(c), c[-1]))
                   for c in (r["chain"], r["chain_iwae"]))]
                for v, r in payload["imputation"].items()]
        lines += markdown_table(["variant", "missing", "one shot (MSNVI)",
                                 "chain, same model", "chain, IWAE"], rows)
        lines += ["", "Against the paper (Fig. 4: the one-shot imputation beats the chain by a "
                  "large margin):"]
        imputed = payload["imputation"]
        for name, chain in (("IWAE", "chain_iwae"), ("same model", "chain")):
            wins = {v.upper(): r["one_shot"] > max(r[chain]) for v, r in imputed.items()}
            beaten, lost = [v for v, w in wins.items() if w], [v for v, w in wins.items() if not w]
            lines.append(f"- the chain with the {name}: " + (
                f"beaten at every step on {', '.join(beaten)}" if beaten else "") +
                ("; " if beaten and lost else "") +
                (f"its best step beats the one-shot imputation on {', '.join(lost)}"
                 if lost else "") + ".")
        lines += ["", "![imputation](imputation.png)", ""]
    lines += ["![samples](samples.png)", ""]
    return lines


def _verdict(variant, table):
    """What agrees with the paper's conclusions and what does not, measured."""
    out = []
    poe, ind = table["poe K=16"], table["ind K=16"]
    if variant in PARTS:
        out.append(("PoE-trained beliefs are poor alone, as in the paper: " if
                    poe["ind"] > ind["ind"] else "Unlike the paper, the PoE-trained beliefs "
                    "are not worse alone: ") +
                   f"L(ind) {poe['ind']:.2f} after L(PoE) training against {ind['ind']:.2f} "
                   "after L(ind).")
    hyb, hyb1 = table["hybrid K=16"], table["hybrid K=1"]
    out.append(("K = 16 beats K = 1 for L(hybrid), as in the paper" if hyb["poe"] < hyb1["poe"]
                else "Unlike the paper, K = 1 is not worse than K = 16 for L(hybrid)") +
               f" (L(PoE) {hyb['poe']:.2f} against {hyb1['poe']:.2f}).")
    out.append(("L(hybrid) is good on both individual and fused beliefs" if
                hyb["poe"] < ind["poe"] and hyb["ind"] < poe["ind"] else
                "L(hybrid) is not better than L(ind) on the fused belief or than L(PoE) on "
                "the individual ones") +
               f": L(ind) {hyb['ind']:.2f}, L(PoE) {hyb['poe']:.2f}.")
    if variant == "no":
        iwae, fused = table["IWAE"]["poe"], hyb["poe"]
        gain = PAPER["no"]["poe"][-1] - PAPER["no"]["poe"][3]
        out.append((f"Fusing the four noisy sources (L(hybrid), evaluated by L(PoE)) gains "
                    f"{iwae - fused:.2f} nats over the single-source IWAE (the paper: "
                    f"{gain:.2f})." if fused < iwae else
                    f"Fusing the four noisy sources (L(hybrid), evaluated by L(PoE)) does not "
                    f"beat the single-source IWAE ({fused:.2f} against {iwae:.2f}; the paper "
                    f"gains {gain:.2f})."))
    return ["- " + line for line in out]


if __name__ == "__main__":
    main(sys.argv[1:])
