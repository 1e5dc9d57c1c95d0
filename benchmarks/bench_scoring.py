r"""Cost of generating masked-out modalities during training, side by side in one run.

``pyro_mmvae.observe`` generates every masked-out entry (so ``Predictive`` cross-generates);
inside the library's bounds (``pyro_mmvae.protocol.scoring()``) a masked-out real-valued
modality keeps its placeholder instead, since the bounds read only log-densities. This script
times ``SVI.step`` of ``MaskedMultimodalELBO`` on five 3×16×16 image modalities (the default
PolyDigits networks, SumPooling guide, batch 64, one thread) with the scoring shortcut (the
library's behaviour) and with every masked-out entry drawn, interleaved, and prints the ratio.

Usage: ``python benchmarks/bench_scoring.py [--steps 15] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import SVI

import pyro_mmvae.protocol as protocol
from pyro_mmvae import MaskedMultimodalELBO
from pyro_mmvae.guides import MultimodalGuide, SumPooling
from pyro_mmvae.models import MultimodalModel, StandardNormalPrior, image_modality


def build(latent: int = 16, n: int = 64, modalities: int = 5):
    parts = {f"m{i}": image_modality((3, 16, 16), latent) for i in range(modalities)}
    model = MultimodalModel(StandardNormalPrior(latent), {m: d for m, (_, d) in parts.items()})
    encoders = {m: e for m, (e, _) in parts.items()}
    feature = next(iter(encoders.values()))(torch.zeros(1, 3, 16, 16)).shape[-1]
    guide = MultimodalGuide(encoders, SumPooling(feature, latent))
    data = {m: torch.rand(n, 3, 16, 16) for m in parts}
    mask = {m: torch.ones(n, dtype=torch.bool) for m in parts}
    return model, guide, data, mask


def time_steps(svi, data, mask, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(data, mask)
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    pyro.set_rng_seed(0)
    model, guide, data, mask = build()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=MaskedMultimodalELBO())
    for _ in range(3):
        svi.step(data, mask)
    real = protocol._real_valued
    times = {"scoring (library)": [], "every entry drawn": []}
    for _ in range(args.rounds):
        protocol._real_valued = real
        times["scoring (library)"].append(time_steps(svi, data, mask, args.steps))
        protocol._real_valued = lambda fn: False
        times["every entry drawn"].append(time_steps(svi, data, mask, args.steps))
    protocol._real_valued = real
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:20s} {v:7.1f} ms/step (median of {args.rounds} x {args.steps} steps)")
    print(f"drawing costs {med['every entry drawn'] / med['scoring (library)']:.2f}x")


if __name__ == "__main__":
    main()
