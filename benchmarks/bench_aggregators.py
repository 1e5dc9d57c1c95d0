r"""Step-time benchmark of the guide aggregators under the masked bound, as M grows.

Times one ``pyro.infer.SVI.step`` (forward, backward, ``pyro.optim.Adam``) of
``MaskedMultimodalELBO()`` (``iid_half`` masking, analytic KL where it exists, STL) with a
``pyro_mmvae.guides.MultimodalGuide`` whose aggregator is one of

- ``PoE`` and ``MoPoE`` (Gaussian experts, encoder output ``E = 2 * latent``);
- the permutation-invariant ``SumPooling`` and ``SelfAttention`` (``E = --feature-dim``,
  hidden and pooling widths ``--agg-width``; SelfAttention with the registry's 4 heads,
  attention and MLP width 256, one block), and their mixture variants ``SumPoolingMixture``
  and ``SelfAttentionMixture`` (``--components`` components),

each built by :func:`pyro_mmvae.registry.build_aggregator` (the network the command line and
the experiments build for the same options), at ``M = 2, 5, 10, 20`` modalities, on
``pyro_mmvae.models.LinearGaussianModel`` with ``D_m = 32`` per modality, latent 8, batch 256,
every modality observed, one MLP ``pyro_mmvae.guides.expert_encoder`` per modality. Reported:
the median step time, its ratio to PoE at the same ``M``, and the growth from the smallest to
the largest ``M`` with its log-log slope (1: linear in ``M``, 2: quadratic).

A second table times the aggregator alone (``--tables aggregator``): forward and backward of
``q = aggregator(features, mask)``, ``z = q.rsample()``, ``q.log_prob(z).sum()`` on fixed
encoder features ``(B, M, E)`` and the masked bound's stacked mask ``(2, 1, B, M)`` (rows S and
O), which separates the aggregator's own growth with ``M`` from the encoders' and decoders'
(both linear in ``M``), which dominate a step.

MoPoE has ``2^M - 1`` subset components: its guide builds ``(2, 1, B, K, D)`` tensors
(component log-densities, the subset products), 16 MiB each at ``M = 10`` but 16 GiB at
``M = 20``; a case whose such tensor exceeds ``--max-mixture-mb`` is skipped and marked in the
table.

Measurement as in ``bench_bounds.py``: float32, ``pyro.enable_validation(False)``, one torch
thread by default, all aggregators at one ``M`` timed interleaved (one step of each per round,
rotated order), each with its own Pyro param store; medians after ``--warmup`` rounds. All
(aggregator, M) cases of a table run in one interleaved loop, so the growth with M, not only the
ratio at one M, compares steps timed side by side.

Run ``python benchmarks/bench_aggregators.py --output benchmarks/results/aggregators.md``;
``--quick`` is a smoke run; ``--profile AGGREGATOR/M`` prints a cProfile of one case instead.
Aggregators are named as on the command line (``sumpooling-mixture``; the table's names, e.g.
``SumPoolingMixture``, are accepted too).
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import shlex
import sys
import time

import pyro
import pyro.optim
import torch
from pyro.infer import SVI

from bench_bounds import (Variant, add_run_options, add_timing_options,  # noqa: E402
                          environment, library_revision, make_data, median_ms, profile_steps,
                          quick, run_benchmark, time_interleaved)
from pyro_mmvae import MaskedMultimodalELBO  # noqa: E402
from pyro_mmvae.guides import MultimodalGuide, expert_encoder  # noqa: E402
from pyro_mmvae.models import LinearGaussianModel  # noqa: E402
from pyro_mmvae.registry import AGGREGATORS as REGISTRY  # noqa: E402
from pyro_mmvae.registry import (AggregatorSizes, build_aggregator,  # noqa: E402
                                 canonical)

REGISTRY_ATTENTION_TEXT = ("{num_heads} heads, attention and MLP width {attention_width}, one "
                           "block").format(**vars(AggregatorSizes()))
AGGREGATORS = ["poe", "mopoe", "sumpooling", "selfattention", "sumpooling-mixture",
               "selfattention-mixture"]


# --- problem ---------------------------------------------------------------------------------
def feature_size(name: str, args) -> int:
    """Encoder output size ``E``: ``2 * latent`` for the expert aggregators."""
    return 2 * args.latent_dim if REGISTRY[name].experts else args.feature_dim


def make_aggregator(name: str, args, num_modalities: int) -> torch.nn.Module:
    """The registry's aggregator ``name`` (:func:`pyro_mmvae.registry.build_aggregator`;
    widths ``--agg-width``, ``--components`` mixture components)."""
    sizes = AggregatorSizes(width=args.agg_width, num_components=args.components)
    return build_aggregator(name, feature_size(name, args), args.latent_dim, num_modalities,
                            sizes)


def make_model_guide(data, name: str, args):
    """Linear-Gaussian model and a ``MultimodalGuide`` with aggregator ``name``."""
    torch.manual_seed(args.seed)
    dims = {m: x.shape[1] for m, x in data.items()}
    model = LinearGaussianModel(dims, args.latent_dim)
    e = feature_size(name, args)
    encoders = {m: expert_encoder(d, e // 2, args.hidden) for m, d in dims.items()}
    return model, MultimodalGuide(encoders, make_aggregator(name, args, len(dims)))


def largest_mixture_bytes(name: str, num_modalities: int, args) -> int:
    """Bytes of MoPoE's ``(2, 1, B, K, D)`` tensors (K = 2^M subsets with the prior); else 0."""
    if name != "mopoe":
        return 0
    return 4 * 2 * args.batch * 2 ** num_modalities * args.latent_dim


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux: ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# --- the two tables --------------------------------------------------------------------------
def probe_memory(name: str, m_count: int, args) -> str:
    """One step of ``name`` at ``M = m_count`` in a fresh process state: its peak memory."""
    data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
    model, guide = make_model_guide(data, name, args)
    before = peak_rss_gib()
    t0 = time.perf_counter()
    MaskedMultimodalELBO().differentiable_loss(model, guide, data, mask).backward()
    return (f"one forward + backward of {REGISTRY[name].display} at M={m_count}, run before "
            f"anything else, raised the process's peak resident memory from {before:.2f} to "
            f"{peak_rss_gib():.2f} GiB ({time.perf_counter() - t0:.1f} s)")


def step_table(args) -> dict:
    """``{(aggregator, M): {"ms", "n", "params"} or {"skip": reason}}`` and ``"notes"``.

    All (aggregator, M) cases are timed in one interleaved loop, so the growth with M is as
    robust to machine load as the ratios at one M.
    """
    results = {"notes": []}
    limit = args.max_mixture_mb * 2 ** 20
    run_mopoe = [m for m in args.modalities if "mopoe" in args.aggregators
                 and largest_mixture_bytes("mopoe", m, args) <= limit]
    if run_mopoe:  # the largest MoPoE that runs: how much memory does it take?
        m = max(run_mopoe)
        size = largest_mixture_bytes("mopoe", m, args)
        results["notes"].append(
            f"MoPoE at M={m}: {2 ** m - 1} subset components (+ the prior), (2, 1, B, K, D) "
            f"tensors of {size / 2 ** 20:.3g} MiB each: it fits and was timed; "
            + probe_memory("mopoe", m, args) + ".")
        pyro.clear_param_store()
    variants = []
    for m_count in args.modalities:
        data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
        for name in args.aggregators:
            size = largest_mixture_bytes(name, m_count, args)
            if size > limit:
                results[(name, m_count)] = {"skip": (
                    f"{name} at M={m_count}: {2 ** m_count - 1} subset components; its "
                    f"(2, 1, B, K, D) tensors would take {size / 2 ** 30:.1f} GiB each at "
                    f"B={args.batch} (over --max-mixture-mb {args.max_mixture_mb:g}): not run.")}
                continue
            model, guide = make_model_guide(data, name, args)
            svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), loss=MaskedMultimodalELBO())
            v = Variant(name, lambda svi=svi, data=data, mask=mask: svi.step(data, mask))
            v.key, v.params = (name, m_count), num_parameters(guide.aggregator)
            variants.append(v)
    print(f"[step] timing {len(variants)} cases interleaved ...", flush=True)
    t0 = time.perf_counter()
    time_interleaved(variants, args.warmup, args.repeats, args.min_repeats, args.max_seconds,
                     args.prime_below_ms / 1e3)
    print(f"[step] {time.perf_counter() - t0:.0f} s", flush=True)
    for v in variants:
        results[v.key] = {"ms": median_ms(v), "n": len(v.times), "params": v.params}
    return results


def aggregator_table(args) -> dict:
    """Forward + backward of the aggregator alone: ``{(aggregator, M): {"ms", "n"}}``, all
    cases interleaved."""
    results = {}
    limit = args.max_mixture_mb * 2 ** 20
    gen = torch.Generator().manual_seed(args.seed)
    variants = []
    for m_count in args.modalities:
        observed = torch.ones(args.batch, m_count, dtype=torch.bool)
        subset = torch.rand(observed.shape, generator=gen) < 0.5
        mask = torch.stack([subset, observed]).unsqueeze(1)  # (2, 1, B, M): rows S, O
        for name in args.aggregators:
            size = largest_mixture_bytes(name, m_count, args)
            if size > limit:
                results[(name, m_count)] = {"skip": "over --max-mixture-mb"}
                continue
            torch.manual_seed(args.seed)
            agg = make_aggregator(name, args, m_count)
            feats = torch.randn(args.batch, m_count, feature_size(name, args),
                                generator=gen).requires_grad_()

            def step(agg=agg, feats=feats, mask=mask):
                q = agg(feats, mask)
                q.log_prob(q.rsample()).sum().backward()
                feats.grad = None
                agg.zero_grad(set_to_none=True)

            v = Variant(name, step, own_store=False)
            v.key = (name, m_count)
            variants.append(v)
    print(f"[aggregator] timing {len(variants)} cases interleaved ...", flush=True)
    t0 = time.perf_counter()
    time_interleaved(variants, args.warmup, args.repeats, args.min_repeats, args.max_seconds,
                     args.prime_below_ms / 1e3)
    print(f"[aggregator] {time.perf_counter() - t0:.0f} s", flush=True)
    for v in variants:
        results[v.key] = {"ms": median_ms(v), "n": len(v.times)}
    return results


# --- output ----------------------------------------------------------------------------------
def fmt_ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 1 else f"{x:.2f}×"


def format_table(results, args, with_params: bool) -> str:
    ms = list(args.modalities)
    lo, hi = min(ms), max(ms)
    head = ["aggregator"] + [f"M={m} ms (× PoE)" for m in ms]
    head += [f"M={hi} / M={lo}", "slope"]
    if with_params:
        head.append(f"aggregator params at M={lo}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for name in args.aggregators:
        row = [REGISTRY[name].display]
        for m in ms:
            r = results[(name, m)]
            if "skip" in r:
                row.append("not run‡")
                if r["skip"] not in notes and with_params:
                    notes.append(r["skip"])
                continue
            ref = results.get(("poe", m))
            ratio = "" if ref is None or "skip" in ref else f" ({fmt_ratio(r['ms'] / ref['ms'])})"
            row.append(fmt_ms(r["ms"]) + ratio)
        done = [m for m in ms if "skip" not in results[(name, m)]]
        a, b = min(done), max(done)
        if b > a:
            growth = results[(name, b)]["ms"] / results[(name, a)]["ms"]
            slope = math.log(growth) / math.log(b / a)
            tag = "" if (a, b) == (lo, hi) else f" (M={b} / M={a})"
            row += [fmt_ratio(growth) + tag, f"{slope:.2f}"]
        else:
            row += ["–", "–"]
        if with_params:
            row.append(f"{results[(name, lo)]['params']:,}" if "params" in results[(name, lo)]
                       else "–")
        lines.append("| " + " | ".join(row) + " |")
    counts = sorted({r["n"] for r in results.values() if isinstance(r, dict) and "n" in r})
    lines += ["", f"Timed steps per cell (after warm-up): {counts[0]}–{counts[-1]}."]
    for n in notes:
        lines += ["", f"‡ {n}"]
    if results.get("notes"):
        lines += ["", " ".join(results["notes"])]
    return "\n".join(lines)


def render(args, argv, steps, alone, elapsed) -> str:
    cmd = "python benchmarks/bench_aggregators.py " + " ".join(shlex.quote(a) for a in argv)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "# Aggregators under the masked bound: step time as M grows", "",
        f"- Command: `{cmd.strip()}`",
        f"- Date: {date}; total run time {elapsed:.0f} s",
        f"- Environment: {environment(args)}",
        f"- Library: commit {library_revision()}",
        f"- Problem: `pyro_mmvae.models.LinearGaussianModel` ({args.dim} features per modality, "
        f"latent "
        f"{args.latent_dim}), batch {args.batch}, every modality observed, one particle; "
        f"`pyro_mmvae.guides.MultimodalGuide` with one "
        f"`expert_encoder(D_m, E // 2, {list(args.hidden)})` "
        f"per modality, E = {2 * args.latent_dim} for PoE / MoPoE and E = {args.feature_dim} for "
        f"the pooling aggregators; SumPooling / SelfAttention widths (hidden, pooling) "
        f"{args.agg_width}, SelfAttention {REGISTRY_ATTENTION_TEXT} (pyro_mmvae.registry); "
        f"mixtures with {args.components} components; `MaskedMultimodalELBO()` (iid_half, "
        f"analytic KL where it exists, STL), Adam lr {args.lr}; `pyro.enable_validation(False)`",
        f"- Timing: median over interleaved steps after {args.warmup} warm-up rounds (at most "
        f"{args.repeats} timed steps, fewer once a variant's timed steps exceed "
        f"{args.max_seconds:g} s, never fewer than {args.min_repeats}); a case whose last step "
        f"took under {args.prime_below_ms:g} ms runs one untimed step before each timed one", ""]
    if steps is not None:
        parts += ["## 1. `SVI.step` time", "",
                  "Forward + backward + `pyro.optim.Adam` of the whole step (M encoders, the "
                  "aggregator on the stacked masks of S and O, M decoders). In parentheses: the "
                  "ratio to PoE at the same M. Growth: the largest M over the smallest; slope: "
                  "log(growth) / log(M ratio), 1 for cost linear in M, 2 for quadratic.", "",
                  format_table(steps, args, with_params=True), ""]
    if alone is not None:
        parts += ["## 2. The aggregator alone", "",
                  "Forward + backward of `q = aggregator(features, mask)`, `q.log_prob(q.rsample())"
                  ".sum()` on fixed features `(B, M, E)` (leaf tensors) and the masked bound's "
                  "mask `(2, 1, B, M)` (rows S ~ iid_half and O): the aggregator's own cost, "
                  "without encoders, decoders, Pyro or the optimiser.", "",
                  format_table(alone, args, with_params=False), ""]
    return "\n".join(parts)


# --- profiling -------------------------------------------------------------------------------
def profile(args, spec: str) -> None:
    name, m_count = spec.split("/")
    name, m_count = aggregator_name(name), int(m_count)
    data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
    model, guide = make_model_guide(data, name, args)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), loss=MaskedMultimodalELBO())
    profile_steps(args, svi.step, data, mask, f"masked bound, {name}, M={m_count}")


# --- entry point -----------------------------------------------------------------------------
def aggregator_name(text: str) -> str:
    """The registry's name of an aggregator (its older spellings accepted)."""
    try:
        return canonical("aggregator", text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", type=int, nargs="+", default=[2, 5, 10, 20],
                   help="values of M")
    p.add_argument("--aggregators", nargs="+", type=aggregator_name, choices=AGGREGATORS,
                   default=AGGREGATORS, help="registry names (or the table's)")
    p.add_argument("--dim", type=int, default=32, help="features per modality D_m")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128],
                   help="encoder hidden layer widths")
    p.add_argument("--feature-dim", type=int, default=64,
                   help="encoder output size E for the pooling aggregators")
    p.add_argument("--agg-width", type=int, default=128,
                   help="hidden and pooling widths of SumPooling / SelfAttention")
    p.add_argument("--components", type=int, default=5, help="components of the mixtures")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    add_timing_options(p, repeats=40, max_seconds=8.0)
    p.add_argument("--max-mixture-mb", type=float, default=1024.0,
                   help="skip MoPoE where its (2, 1, B, K, D) tensors exceed this")
    p.add_argument("--tables", nargs="+", choices=["step", "aggregator"],
                   default=["step", "aggregator"])
    add_run_options(p, "AGGREGATOR/M", "selfattention/20")
    return quick(p.parse_args(argv))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_benchmark(
        parse_args(argv), argv, {"step": step_table, "aggregator": aggregator_table}, profile,
        lambda args, argv, r, seconds: render(args, argv, r["step"], r["aggregator"], seconds))


if __name__ == "__main__":
    main()
