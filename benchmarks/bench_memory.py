r"""Peak memory and time of the evaluation functions under memory budgets.

``log_likelihood`` (1000 points x 1000 particles), ``rate_distortion``,
``conditional_coherence``, ``joint_coherence`` and ``to_inference_data`` each run at the
default budget (256 MiB) and at other budgets, every measurement in a fresh subprocess (one
torch thread) on a 5-modality model: MLP expert encoders 64 -> 128 -> 128 with a PoE, latent 8,
MLP decoders 8 -> 128 -> 128 -> 64 with a Gaussian likelihood, untrained weights, random data.

**Peak extra memory** is the peak resident set size during the call minus the resident set
size right before it: the subprocess builds the model and data, runs the function once on a few
points (so one-time lazy allocations of torch are not counted), resets the kernel's peak-RSS
mark (``echo 5 > /proc/self/clear_refs``, Linux), records ``VmRSS`` of ``/proc/self/status``,
calls the function and reads ``VmHWM``. Where ``clear_refs`` is not writable it falls back on
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (an upper bound then: the peak of the whole
process). Times are one call's wall-clock seconds: provisional on a shared machine.

Usage::

    python benchmarks/bench_memory.py                      # writes benchmarks/results/memory.md
    python benchmarks/bench_memory.py --quick --output -   # smoke run, seconds; prints only
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

MIB = 2 ** 20
BUDGETS = {"64 MiB": 64 * MIB, "256 MiB (default)": None, "1 GiB": 1024 * MIB,
           "one chunk (1 TiB)": 2 ** 40}
CASES = ("log_likelihood", "rate_distortion", "conditional_coherence", "joint_coherence",
         "to_inference_data")
ROOT = Path(__file__).resolve().parent.parent
MMAP_THRESHOLD = 128 * 1024
SKIP = {("log_likelihood", "one chunk (1 TiB)")}  # several GiB: not on a shared 24 GiB box
CHOSEN = []  # what the memory helpers returned during the last call


# --------------------------------------------------------------------------- one measurement

def build(n: int, modalities: int = 5, features: int = 64, latent: int = 8, seed: int = 0):
    import torch
    from torch import nn

    from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
    from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior

    torch.manual_seed(seed)
    names = [f"m{i}" for i in range(modalities)]
    guide = MultimodalGuide({m: expert_encoder(features, latent, (128, 128)) for m in names},
                            PoE())
    model = MultimodalModel(StandardNormalPrior(latent), {
        m: GaussianDecoder(nn.Sequential(nn.Linear(latent, 128), nn.ReLU(), nn.Linear(128, 128),
                                         nn.ReLU(), nn.Linear(128, features)))
        for m in names})
    data = {m: torch.randn(n, features) for m in names}
    labels = torch.randint(10, (n,))
    classifiers = {m: nn.Linear(features, 10) for m in names}
    model.eval()
    guide.eval()
    return model, guide, data, labels, classifiers


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def call(case: str, n: int, particles: int, budget, model, guide, data, labels, classifiers):
    """Run ``case`` on ``n`` points; returns the chunks its memory helper chose."""
    from pyro_mmvae.diagnostics import to_inference_data
    from pyro_mmvae.eval import (conditional_coherence, joint_coherence, log_likelihood as ll,
                                 rate_distortion)

    chosen = CHOSEN
    chosen.clear()
    for module in map(importlib.import_module, (
            "pyro_mmvae.diagnostics.arviz", "pyro_mmvae.eval.coherence",
            "pyro_mmvae.eval.information", "pyro_mmvae.eval.log_likelihood")):
        for name in ("chunk_for_budget", "chunks_for_budget"):
            fn = getattr(module, name, None)
            if fn is not None and not hasattr(fn, "recorded"):
                def recorder(*args, _fn=fn, **kwargs):
                    out = _fn(*args, **kwargs)
                    CHOSEN.append(out)
                    return out
                recorder.recorded = True
                setattr(module, name, recorder)
    x = {m: v[:n] for m, v in data.items()}
    if case == "log_likelihood":
        ll(model, guide, x, num_samples=particles, memory_budget=budget)
    elif case == "rate_distortion":
        rate_distortion(model, guide, x, num_samples=particles, memory_budget=budget)
    elif case == "conditional_coherence":
        conditional_coherence(model, guide, x, labels[:n], classifiers, num_samples=particles,
                              memory_budget=budget)
    elif case == "joint_coherence":
        joint_coherence(model, classifiers, num_samples=n * particles, memory_budget=budget)
    elif case == "to_inference_data":
        to_inference_data(model, guide, x, num_samples=particles, memory_budget=budget)
    else:
        raise ValueError(f"unknown case {case!r}")
    return list(chosen)


def measure(case: str, n: int, particles: int, budget) -> dict:
    """One measurement in this process (the child's side)."""
    import pyro
    import torch

    torch.set_num_threads(1)
    pyro.enable_validation(False)
    pyro.set_rng_seed(0)
    model, guide, data, labels, classifiers = build(n)
    call(case, 2, 2, budget, model, guide, data, labels, classifiers)  # warm-up, not measured
    exact = _reset_peak()
    before = _status("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    chosen = call(case, n, particles, budget, model, guide, data, labels, classifiers)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not exact:  # ru_maxrss is in KiB on Linux
        before, peak = before * 1024, peak * 1024
    return {"peak_extra_mib": (peak - before) / MIB, "rss_before_mib": before / MIB,
            "seconds": seconds, "chunks": [list(c) if isinstance(c, tuple) else c
                                           for c in chosen], "exact": exact}


# --------------------------------------------------------------------------- the table

SETUPS = {  # case: (data points, particles) and what they mean
    "log_likelihood": (1000, 1000, "1000 points x 1000 particles (joint, all observed)"),
    "rate_distortion": (1000, 100, "1000 points x 100 particles"),
    "conditional_coherence": (1000, 10, "1000 points x 31 subsets x 10 particles, 5 linear "
                              "classifiers"),
    "joint_coherence": (1000, 100, "100 000 prior samples"),
    "to_inference_data": (1000, 100, "1000 points x 100 draws, all groups"),
}


def run_child(case, n, particles, budget, fixed_mmap: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", case, str(n), str(particles),
           "none" if budget is None else str(budget)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_mmap:  # every block over 128 KiB its own mapping, unmapped when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{case} at {budget}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _chunks(case, chunks) -> str:
    if not chunks:
        return "-"
    c = chunks[-1]
    if case in ("rate_distortion", "conditional_coherence"):
        return f"{c[0]} points x {c[1]} particles"
    if case == "joint_coherence":
        return f"{c} samples"
    unit = "draws" if case == "to_inference_data" else "particles"
    return f"{c} {unit}" + (f" (x{len(chunks)} calls)" if len(chunks) > 1 else "")


def environment() -> str:
    import pyro
    import torch

    cpu = "unknown CPU"
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                        re.M).group(1)
    except (OSError, AttributeError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"torch {torch.__version__}, pyro {pyro.__version__}, Python "
            f"{platform.python_version()}, {cpu} ({os.cpu_count()} cores, nproc), torch threads "
            f"1, float32, CPU; library commit {commit}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "memory.md"),
                        help="markdown file to write ('-': print only)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100 points, a tenth of the particles, two budgets")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pyro_mmvae.eval.memory import ACTIVATION_FACTOR
    if args.child:
        case, n, particles, budget = args.child
        result = measure(case, int(n), int(particles), None if budget == "none" else int(budget))
        print(json.dumps(result))
        return
    budgets = dict(list(BUDGETS.items())[:2]) if args.quick else BUDGETS
    t0 = time.perf_counter()
    rows, exact = [], True
    for case in args.cases:
        n, particles, what = SETUPS[case]
        if args.quick:
            n, particles = 100, max(1, particles // 10)
            what += f" (quick: {n} points, {particles} particles)"
        for label, budget in budgets.items():
            if (case, label) in SKIP and not args.quick:
                continue
            r = run_child(case, n, particles, budget)
            live = run_child(case, n, particles, budget, fixed_mmap=True)
            exact = exact and r["exact"] and live["exact"]
            rows.append(f"| `{case}` | {what} | {label} | {_chunks(case, r['chunks'])} | "
                        f"{live['peak_extra_mib']:.0f} | {r['peak_extra_mib']:.0f} | "
                        f"{r['seconds']:.2f} |")
            print(rows[-1], flush=True)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/bench_memory.py"] + given)
    method = ("peak RSS during the call (`VmHWM` after `echo 5 > /proc/self/clear_refs`) minus "
              "`VmRSS` right before it" if exact else
              "`ru_maxrss` after the call minus `ru_maxrss` before it (an upper bound)")
    text = "\n".join([
        "# Evaluation memory under budgets",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; total run "
        f"time {time.perf_counter() - t0:.0f} s",
        f"- Environment: {environment()}",
        "- Model: 5 modalities of 64 features, MLP expert encoders 64 -> 128 -> 128 with PoE, "
        "latent 8, MLP decoders 8 -> 128 -> 128 -> 64, Gaussian likelihood; untrained weights, "
        "random data",
        f"- Peak extra memory: {method}; each measurement in a fresh subprocess, after one "
        "warm-up call on 2 points",
        "- Two runs per row: with `MALLOC_MMAP_THRESHOLD_=131072` (glibc puts every block over "
        "128 KiB in its own mapping and unmaps it when freed, so the peak RSS follows the peak "
        "of live tensors: the figure the budget bounds, reproducible to about 1 MiB) and with "
        "glibc's default (dynamic) threshold, what a user's process sees: freed blocks may stay "
        "in the heap, and that figure varied between runs of the same case (log_likelihood "
        "1000 x 1000 at the default budget: 127 to 384 MiB in five runs while writing this)",
        "- Time: wall-clock seconds of the one measured call, default allocator (shared "
        "machine: provisional; the fixed threshold runs about 2x slower)",
        "",
        "| function | size | memory_budget | chunk chosen | peak extra MiB, live (fixed "
        "mmap threshold) | peak extra MiB, glibc default | time s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Notes:",
        "",
        "- The budget bounds what one chunk holds (its traces, probed, times "
        f"`ACTIVATION_FACTOR` = {ACTIVATION_FACTOR} for the activations the networks free as "
        "they go and what the allocator keeps), not what "
        "the function returns: `to_inference_data` returns every draw (its "
        "`posterior_predictive` alone is 100 x 1000 x 5 x 64 float32 = 122 MiB) and holds the "
        "chunks and their concatenation at once, so its peak is about twice its result "
        "at any budget.",
        "- `log_likelihood` is not run as one chunk (1000 x 1000 particles at once: several GiB "
        "on a shared machine); its largest chunk is the 1 GiB row's.",
        "- Chunk chosen: particles (draws, samples) per chunk, or data points x particles for "
        "`rate_distortion` and `conditional_coherence`, which chunk data points first and split "
        "the particles only where one point with all of them does not fit.",
        "",
    ])
    print()
    print(text)
    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
