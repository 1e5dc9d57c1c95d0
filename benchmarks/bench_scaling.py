r"""Data-parallel scaling: steps per second of :func:`pyro_mmvae.train.fit` on 1 and 2
processes (gloo on CPU; NCCL on 1 and 2 GPUs with ``--device cuda`` where a machine has them).

The problem: 5 modalities x 64 dims of random data, MLP expert encoders 64 -> 128 -> 128 -> 2D
and a PoE, latent 8, MLP decoders 8 -> 128 -> 128 -> 64 with a Gaussian likelihood (scale 0.1),
the masked bound, Adam 1e-3; ``--steps`` timed steps per configuration after one warm-up
epoch, at each global batch size of ``--batches``. Each configuration runs in freshly spawned
processes, one torch thread each; the processes of a 2-process run split every global batch
in two, so the objective and the steps are those of one process (the final losses are
printed side by side; with the same seed they agree to float tolerance).

Reported per batch size: seconds per step and steps per second for 1 and 2 processes,
speedup (1-process time / 2-process time) and scaling efficiency (speedup / 2), and the bytes
the gradient all-reduce moves per step (parameters x 4 bytes, float32).

Usage::

    python benchmarks/bench_scaling.py --output benchmarks/results/scaling.md
    python benchmarks/bench_scaling.py --quick --output -     # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import MaskedMultimodalELBO
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from pyro_mmvae.train import fit
from pyro_mmvae.train.distributed import Distributed

MODALITIES, DIM, HIDDEN, LATENT = 5, 64, 128, 8


def problem(num_points: int, seed: int = 0):
    """Random data ``{m: (N, 64)}`` and the model and guide (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    data = {f"m{i}": torch.randn(num_points, DIM, generator=g) for i in range(MODALITIES)}
    torch.manual_seed(seed)
    guide = MultimodalGuide({m: expert_encoder(DIM, LATENT, (HIDDEN, HIDDEN)) for m in data},
                            PoE())
    model = MultimodalModel(StandardNormalPrior(LATENT),
                            {m: GaussianDecoder(MLP(LATENT, (HIDDEN, HIDDEN), DIM), scale=0.1)
                             for m in data})
    return data, model, guide


def train(batch: int, steps: int, device: str, place=None) -> dict:
    """One warm-up epoch and one timed epoch of ``steps`` global batches of ``batch``."""
    data, model, guide = problem(batch * steps)
    history = fit(model, guide, MaskedMultimodalELBO(), data, epochs=2, batch_size=batch,
                  lr=1e-3, seed=0, progress=False, device=device, validate="never",
                  distributed=False if place is None else place)
    params = sum(p.numel() for p in list(model.parameters()) + list(guide.parameters()))
    return {"seconds_per_step": history["epoch_time"][-1] / steps,
            "final_loss": history["loss"][-1], "parameters": params}


def _worker(rank, world, init_file, batch, steps, device, out):
    torch.set_num_threads(1)
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        place = Distributed(rank, world, local_rank=rank)
        result = train(batch, steps, f"cuda:{rank}" if device == "cuda" else "cpu",
                       place if world > 1 else None)
        if rank == 0:
            torch.save(result, out)
        dist.barrier()  # every process is done before any leaves the group
    finally:
        dist.destroy_process_group()


def run(world: int, batch: int, steps: int, device: str) -> dict:
    """``train`` on ``world`` freshly spawned processes; rank 0's result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.start_processes(_worker, args=(world, os.path.join(tmp, "init"), batch, steps,
                                          device, out), nprocs=world, start_method="spawn")
        return torch.load(out, weights_only=False)


def machine(device: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = (f"; {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
            if device == "cuda" else "")
    return (f"{cpu}, {os.cpu_count()} cores{gpus}; torch {torch.__version__}, Python "
            f"{platform.python_version()}, 1 torch thread per process")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096],
                   help="global batch sizes")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--output", default="-", help="markdown file ('-': print only)")
    p.add_argument("--quick", action="store_true", help="batches 32 128, 3 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.steps = [32, 128], 3
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        p.error("--device cuda needs 2 GPUs")
    start = time.perf_counter()
    rows = []
    for batch in args.batches:
        one = run(1, batch, args.steps, args.device)
        two = run(2, batch, args.steps, args.device)
        speedup = one["seconds_per_step"] / two["seconds_per_step"]
        rows.append(f"| {batch} | {1e3 * one['seconds_per_step']:.2f} | "
                    f"{1e3 * two['seconds_per_step']:.2f} | {1 / one['seconds_per_step']:.1f} | "
                    f"{1 / two['seconds_per_step']:.1f} | {speedup:.2f} | {speedup / 2:.2f} | "
                    f"{one['final_loss']:.6f} | {two['final_loss']:.6f} |")
        print(rows[-1], flush=True)
    params = one["parameters"]
    command = "python benchmarks/bench_scaling.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    report = "\n".join([
        "# Data-parallel scaling: 1 vs 2 processes", "",
        f"Command: `{command.strip()}`", "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{machine(args.device)}; backend {'NCCL' if args.device == 'cuda' else 'gloo'}.", "",
        f"Problem: {MODALITIES} modalities x {DIM} dims, MLP encoders {DIM} -> {HIDDEN} -> "
        f"{HIDDEN} with a PoE, latent {LATENT}, MLP decoders, masked bound, Adam; "
        f"{args.steps} timed steps after a warm-up epoch. {params} parameters: the gradient "
        f"all-reduce moves {params * 4 / 2 ** 20:.2f} MiB (float32) per step.", "",
        "| global batch | ms/step, 1 process | ms/step, 2 processes | steps/s, 1 | steps/s, 2 | "
        "speedup | efficiency | final loss, 1 | final loss, 2 |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Run time {time.perf_counter() - start:.0f} s.", ""])
    if args.output != "-":
        Path(args.output).write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
