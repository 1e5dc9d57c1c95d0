r"""Encoders and decoders of one architecture as one batched call, or one by one.

``MultimodalGuide(batch_modalities=...)`` and ``MultimodalModel(batch_modalities=...)`` run the
networks of modalities that share an architecture as one ``torch.vmap`` call
(:mod:`pyro_mmvae.batching`). This script times a training step (``differentiable_loss``,
backward, ``torch.optim.Adam``) with ``batch_modalities=False`` and ``True``, interleaved
round by round, for M modalities of 64 features (MLP encoders 64→128→128→2·8, decoders
8→128→128→64, Gaussian likelihood), batch 128, under the MMVAE mixture bound (every modality
decoded whole, so encoders and decoders are batched) and MVAE's objective (decoders run on
their scored rows, so only the encoders are batched), on the CPU (one thread) and, where
there is one, on CUDA. It prints the medians and the ratios, and writes them with ``--output``.

Usage: ``python benchmarks/bench_batching.py [--modalities 5 10] [--steps 20] [--rounds 5]
[--output benchmarks/results/batching.md]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import pyro
import torch
from torch import nn

from pyro_mmvae.guides import MoE, MultimodalGuide, PoE
from pyro_mmvae.infer import MixtureMultimodalELBO, SubsampledMultimodalELBO
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior

BOUNDS = {
    "MMVAE (mixture, MoE)": (lambda: MixtureMultimodalELBO(), MoE),
    "MVAE (subsampled, PoE)": (lambda: SubsampledMultimodalELBO(num_subsets=0), PoE),
}


def mlp(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, o))


def build(modalities: int, aggregator, batch, device, dim: int = 64, latent: int = 8):
    torch.manual_seed(0)
    names = [f"m{i}" for i in range(modalities)]
    guide = MultimodalGuide({m: mlp(dim, 2 * latent) for m in names},
                            aggregator(scale="logvar"), batch_modalities=batch).to(device)
    model = MultimodalModel(StandardNormalPrior(latent),
                            {m: GaussianDecoder(mlp(latent, dim), 0.1) for m in names},
                            batch_modalities=batch).to(device)
    return model, guide


def step_time(elbo, model, guide, opt, data, steps: int, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        elbo.differentiable_loss(model, guide, data, None).backward()
        opt.step()
    sync()
    return (time.perf_counter() - start) / steps * 1e3


def measure(bound: str, modalities: int, device, steps: int, rounds: int, batch: int = 128):
    make_elbo, aggregator = BOUNDS[bound]
    data = {f"m{i}": torch.randn(batch, 64, device=device) for i in range(modalities)}
    cases = {}
    for setting in (False, True):
        model, guide = build(modalities, aggregator, setting, device)
        params = list(model.parameters()) + list(guide.parameters())
        cases[setting] = (make_elbo(), model, guide, torch.optim.Adam(params, 1e-3), [])
        step_time(*cases[setting][:4], data, 3, device)  # warm-up
    for _ in range(rounds):
        for setting, (elbo, model, guide, opt, times) in cases.items():
            times.append(step_time(elbo, model, guide, opt, data, steps, device))
    loop, batched = (statistics.median(cases[s][4]) for s in (False, True))
    return loop, batched


def machine(device) -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {torch.get_num_threads()} thread(s)"
    if device.type == "cuda":
        text += f"; {torch.cuda.get_device_name(device)}"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modalities", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                       else [])
    lines = ["| device | objective | M | one by one (ms/step) | batched (ms/step) | "
             "batched / one by one |", "|---|---|---|---|---|---|"]
    for device in devices:
        for bound in BOUNDS:
            for m in args.modalities:
                loop, batched = measure(bound, m, device, args.steps, args.rounds)
                lines.append(f"| {device.type} | {bound} | {m} | {loop:.1f} | {batched:.1f} | "
                             f"{batched / loop:.2f} |")
                print(lines[-1], flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    head = ["# Batched encoders and decoders\n", "```", "python benchmarks/bench_batching.py "
            + " ".join(argv if argv is not None else __import__("sys").argv[1:]), "```", "",
            f"{time.strftime('%Y-%m-%d')}, commit {commit}; machines: "
            + "; ".join(machine(d) for d in devices)
            + f"; torch {torch.__version__}, pyro {pyro.__version__}. Median of {args.rounds} "
            f"rounds x {args.steps} steps, batch 128, interleaved.", ""]
    text = "\n".join(head + lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
