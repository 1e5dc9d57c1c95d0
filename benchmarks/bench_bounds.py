r"""Step-time benchmark of the multimodal bounds, and of Pyro's overhead over plain PyTorch.

Two tables:

1. **Bounds × aggregators.** Median wall time of one step of ``fit`` (``SVIStep`` with
   ``make_optimizer``: forward, backward and one ``torch.optim.Adam`` step) for each bound
   (``MaskedMultimodalELBO``,
   ``MixtureMultimodalELBO(form="stratified")``, ``SubsampledMultimodalELBO``), each with its
   default masking, and each aggregator (``PoE``, ``MoE``, ``MoPoE``) at ``M`` modalities; the
   ratio of each to the masked-bound/PoE step at the same ``M``; and the growth factor from the
   smallest to the largest ``M``.
2. **Pyro overhead.** The masked bound with a PoE guide (analytic KL, STL: the library's
   defaults) run five ways on identical networks and data:

   - ``step``: ``fit``'s step, ``SVIStep(model, guide, MaskedMultimodalELBO(),
     make_optimizer(lr))``;
   - ``svi``: Pyro's ``SVI(model, guide, pyro.optim.Adam, MaskedMultimodalELBO()).step`` (one
     optimiser per parameter, the parameters found at every step);
   - ``loss+adam``: ``elbo.differentiable_loss(model, guide, data, mask)`` and a single
     ``torch.optim.Adam`` over all parameters (the library's traces, without ``SVI`` or
     ``pyro.optim``);
   - ``torch``: a hand-written PyTorch loss doing what the library's step does: encoders run
     once, both PoEs (of S and of O) built from the same features and stacked as rows
     ``[S, O]``, one reparameterised draw for both rows, decoders run once on the stacked
     draws;
   - ``plain Pyro``: that hand-written bound as a minimal Pyro program on the same networks
     (:class:`PyroMaskedPoE`: Pyro's own ``TraceMeanField_ELBO``, the same Adam), the floor of
     any Pyro-native step for this work, so ``step / plain Pyro`` is what the library itself
     costs.

   Before timing, the script checks that the library and the hand-written loss agree: same seed,
   validation on; the hand-written loss draws its random numbers in the library's order and
   shapes (the subset ``S ~ iid_half`` as ``rand(B, M) < 1/2``, then one standard-normal draw of
   shape ``(2, 1, B, D)`` for the rows ``[z_S, z_O]``), so both see the same ``S`` and the same
   noise. It compares the loss values and every parameter gradient, and, independently of the
   random streams, evaluates the hand-written loss at the subset and ``z`` read from a
   ``poutine.trace`` of the library's guide.

   (Earlier versions also timed the library with its encoders converted to ``PyroModule``\ s,
   a work-around for a guide that re-registered every encoder parameter on each access; the
   guide now reads ``self.encoders`` once per call, both register each parameter once per step,
   and the two timed alike, so that column is gone. So is a hand-written loss that ran the
   encoders once per encoding, which mirrored the library before ``MaskedMultimodalELBO``
   stacked its two encodings into one guide call.)

Model: ``pyro_mmvae.models.LinearGaussianModel`` (linear Gaussian decoders, unit noise, ``N(0, I)``
prior); guide: ``pyro_mmvae.guides.MultimodalGuide`` with one MLP
``pyro_mmvae.guides.expert_encoder`` per modality; data:
``pyro_mmvae.data.linear_gaussian.shared_latent_study`` with every modality observed.

Measurement:

- float32; ``pyro.enable_validation(False)`` while timing (validation stays on for the
  equality check).
- ``torch.set_num_threads(--threads)``, default 1: the reference machine has 2 cores shared with
  other jobs, and one thread gives the steadiest ratios for these small matrices (256 × 128).
- Variants are timed *interleaved*: every round runs one step of each variant, in an order
  rotated every round, so drifting machine load affects all variants alike; the first
  ``--warmup`` rounds are discarded and the median of the rest is reported. A variant stops
  after ``--min-repeats`` timed steps once its timed steps exceed ``--max-seconds``. Table 1
  interleaves all its (bound, aggregator, M) cases in one loop, so its growth with M is a
  side-by-side ratio too; table 2 interleaves the variants at each M. A case whose last step
  took under ``--prime-below-ms`` runs one untimed step before each timed one, so that it does
  not pay for a larger neighbour's cache and allocator footprint.
- Each SVI variant has its own Pyro param store (swapped in outside the timed region), since
  ``PyroModule`` parameters of same-named modules would otherwise collide in the global store.
- The stratified mixture bound evaluates the mixture density of each of the ``K`` component
  draws against all ``K`` components, a ``(K, S, B, K, D)`` tensor: MoPoE at ``M = 10`` (1024
  components with the prior) needs 8 GiB per such tensor at ``B = 256``. A case over
  ``--max-pairwise-mb`` is timed at the largest batch under it instead, and its ratios are per
  data point (marked † in the table).

Run ``python benchmarks/bench_bounds.py --output benchmarks/results/bounds.md``; ``--quick`` is
a smoke run, ``--profile BOUND/AGGREGATOR/M`` prints a cProfile of one case instead.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import io
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from pyro import poutine
from torch.distributions import Normal, kl_divergence

from pyro_mmvae.guides import MultimodalGuide, expert_encoder
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae import (MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO,
                        full_mask)
from pyro_mmvae.data.linear_gaussian import shared_latent_study
from pyro_mmvae.protocol import VECTORIZED, is_vectorized
from pyro_mmvae.registry import build_aggregator
from pyro_mmvae.train import SVIStep, make_optimizer
from _param_store import ParamStoreSlot

BOUNDS: Dict[str, Callable[[], object]] = {
    "masked": lambda: MaskedMultimodalELBO(),
    "mixture": lambda: MixtureMultimodalELBO(form="stratified"),
    "subsampled": lambda: SubsampledMultimodalELBO(),
}
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4  # float32 tolerances of the equality check
AGGREGATORS = ("PoE", "MoE", "MoPoE")  # the registry's display names (build_aggregator)


# --- problem ---------------------------------------------------------------------------------
def make_data(num_modalities: int, dim: int, latent_dim: int, batch: int, seed: int):
    """``({m: (B, D_m)}, {m: (B,)} all True)`` from the linear-Gaussian simulator."""
    sim = shared_latent_study(num_points=batch, num_modalities=num_modalities,
                              latent_dim=latent_dim, dim_range=(dim, dim + 1), seed=seed,
                              dtype=torch.float32)
    return sim.data, full_mask(sim.data)


def make_model_guide(data, latent_dim: int, hidden: Sequence[int], aggregator: str, seed: int):
    """Linear-Gaussian model and an MLP-encoder guide, initialised from ``seed``."""
    torch.manual_seed(seed)
    dims = {m: x.shape[1] for m, x in data.items()}
    model = LinearGaussianModel(dims, latent_dim)
    encoders = {m: expert_encoder(d, latent_dim, hidden) for m, d in dims.items()}
    guide = MultimodalGuide(encoders, build_aggregator(aggregator, 2 * latent_dim, latent_dim))
    return model, guide


def num_components(aggregator: str, num_modalities: int) -> int:
    """Mixture components of the guide, counting the prior component SubsetMixture appends."""
    if aggregator == "PoE":
        return 1
    if aggregator == "MoE":
        return num_modalities + 1
    return 2 ** num_modalities  # 2^M - 1 subsets + the prior


def pairwise_bytes(bound: str, aggregator: str, num_modalities: int, batch: int,
                   latent_dim: int) -> int:
    """Size of the largest tensor of one step: the (K, S, B, K, D) stratified mixture density."""
    if bound != "mixture" or aggregator == "PoE":
        return 0
    k = num_components(aggregator, num_modalities)
    return 4 * k * k * batch * latent_dim


# --- timing ----------------------------------------------------------------------------------
class Variant:
    """A named training step with its own Pyro param store, timed interleaved with others."""

    def __init__(self, name: str, step: Callable[[], object], own_store: bool = True):
        self.name = name
        self.step = step
        self.store = ParamStoreSlot() if own_store else None
        self.times: List[float] = []
        self.done = False

    def activate(self):
        if self.store is not None:
            self.store.activate()


def time_interleaved(variants: Sequence[Variant], warmup: int, repeats: int, min_repeats: int,
                     max_seconds: float, prime_below: float = 0.0) -> None:
    """Round-robin steps of all variants (rotated order); fills ``variant.times`` (seconds).

    A variant whose last step took less than ``prime_below`` seconds runs one untimed step
    right before each timed one: a short step that follows a much larger variant otherwise
    pays for that variant's cache and allocator footprint (about 10 % for a 7 ms step after a
    MoPoE step at M = 10), which would bias the growth with M when cases of every size are
    interleaved.
    """
    rounds = warmup + repeats
    last = {}
    for r in range(rounds):
        active = [v for v in variants if not v.done]
        if not active:
            break
        shift = r % len(active)
        for v in active[shift:] + active[:shift]:
            v.activate()
            if r >= warmup and last.get(id(v), float("inf")) < prime_below:
                v.step()
            t0 = time.perf_counter()
            v.step()
            dt = time.perf_counter() - t0
            last[id(v)] = dt
            if r >= warmup:
                v.times.append(dt)
                if len(v.times) >= min_repeats and sum(v.times) > max_seconds:
                    v.done = True
    ParamStoreSlot.release()


def median_ms(v: Variant) -> float:
    return 1e3 * statistics.median(v.times)


def step_variant(name: str, bound: str, data, mask, model, guide, lr: float) -> Variant:
    """``fit``'s step: :class:`~pyro_mmvae.train.SVIStep` with
    :func:`~pyro_mmvae.train.make_optimizer` (one ``torch.optim.Adam`` over all parameters)."""
    step = SVIStep(model, guide, BOUNDS[bound](), make_optimizer(lr))
    return Variant(name, lambda: step(data, mask))


def svi_variant(name: str, bound: str, data, mask, model, guide, lr: float) -> Variant:
    """Pyro's own ``SVI.step`` with ``pyro.optim.Adam`` (one optimiser per parameter)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=BOUNDS[bound]())
    return Variant(name, lambda: svi.step(data, mask))


# --- the hand-written masked bound -----------------------------------------------------------
class TorchMaskedPoE:
    r"""Plain-PyTorch masked bound with a PoE guide, mirroring ``MaskedMultimodalELBO`` (one
    particle, ``masking="iid_half"``, analytic KL):

    .. math:: \log p(x_S\mid z_S) - \mathrm{KL}(q_S\,\|\,\mathcal N(0,I))
        + \log p(x_{O\setminus S}\mid z_O) - \mathrm{KL}(q_O\,\|\,q_S),

    with :math:`q_A` the PoE (prior expert on) of the experts in :math:`A`, :math:`z_A` a
    reparameterised draw from it, and Gaussian decoders. Written as one would by hand, and doing
    the work the library's step does: the encoders run once (inputs of never-observed
    modalities zeroed), both PoEs are built from the same expert parameters as rows ``[S, O]``
    of one ``(2, 1, B, D)`` Gaussian (the ``1`` is the particle dim), one draw gives ``z_S`` and
    ``z_O``, and the decoders run once on it. Works on copies of the library model's and guide's
    networks, so it starts from the same weights.

    Random numbers are drawn in the library's order and shapes (``rand(B, M)`` for S, then one
    standard-normal ``(2, 1, B, D)``), so under one seed both see the same S and noise.
    """

    def __init__(self, model, guide, lr: float):
        self.modalities = list(guide.modalities)
        self.encoders = [copy.deepcopy(guide.encoders[m]) for m in self.modalities]
        self.decoders = [copy.deepcopy(model.decoders[m].net) for m in self.modalities]
        self.noise_scales = [model.decoders[m].scale.detach().clone() for m in self.modalities]
        self.min_scale = guide.aggregator.min_scale
        self.optim = torch.optim.Adam(self.parameters(), lr=lr)

    def parameters(self):
        """Parameters in the order of ``library_parameters``."""
        return [p for net in self.encoders + self.decoders for p in net.parameters()]

    def _experts(self, xs, observed):
        """Expert means and precisions ``(B, M, D)``; inputs never observed zeroed."""
        feats = [enc(torch.where(observed[:, i:i + 1], x, torch.zeros_like(x)))
                 for i, (enc, x) in enumerate(zip(self.encoders, xs))]
        loc, raw = torch.stack(feats, dim=-2).chunk(2, dim=-1)
        return loc, (F.softplus(raw) + self.min_scale).pow(-2)

    def loss(self, xs: Sequence[torch.Tensor], observed: torch.Tensor,
             subset: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Negative bound summed over the batch; ``observed`` is bool ``(B, M)``.

        ``subset`` (bool ``(B, M)``) and ``noise`` (standard normal ``(2, 1, B, D)``) default to
        fresh draws; pass them to evaluate the loss at given random numbers.
        """
        if subset is None:
            subset = observed & (torch.rand(observed.shape) < 0.5)  # S ~ iid_half, inside O
        loc, prec = self._experts(xs, observed)
        w = torch.stack([subset, observed]).unsqueeze(1).to(prec.dtype).unsqueeze(-1)
        total = (w * prec).sum(-2) + 1.0  # (2, 1, B, D); prior expert N(0, I)
        q = Normal((w * prec * loc).sum(-2) / total, total.rsqrt())  # rows q_S, q_O
        z = q.rsample() if noise is None else q.loc + noise * q.scale  # rows z_S, z_O
        rest = observed & ~subset
        score = torch.stack([subset, rest]).unsqueeze(1)  # (2, 1, B, M): x_S | z_S, x_rest | z_O
        rec = 0.0
        for i, (dec, x, sigma) in enumerate(zip(self.decoders, xs, self.noise_scales)):
            rec = rec + torch.where(score[..., i], Normal(dec(z), sigma).log_prob(x).sum(-1), 0.0)
        q_s, q_o = Normal(q.loc[0], q.scale[0]), Normal(q.loc[1], q.scale[1])
        kl_s = kl_divergence(q_s, Normal(torch.zeros_like(q_s.loc), 1.0)).sum(-1)
        kl_c = kl_divergence(q_o, q_s).sum(-1)
        kl_c = torch.where(rest.any(-1), kl_c, 0.0)  # exactly 0 where S = O, as the library
        return -(rec.sum() - kl_s.sum() - kl_c.sum())

    def step(self, xs, observed) -> float:
        self.optim.zero_grad(set_to_none=True)
        loss = self.loss(xs, observed)
        loss.backward()
        self.optim.step()
        return loss.item()


class PyroMaskedPoE:
    r""":class:`TorchMaskedPoE`'s bound as a minimal plain Pyro program on its networks: the
    guide samples ``z`` for the rows ``[S, O]`` of the stacked PoE inside a pair and a data
    plate; the model's prior on the rows is ``[N(0, I), q_S]`` (the conditional prior, built
    from the guide's ``q_S`` and never detached); each modality is observed under
    ``poutine.mask`` of its scored rows (``x_S`` with ``z_S``, ``x_{O\setminus S}`` with
    ``z_O``); Pyro's own ``TraceMeanField_ELBO`` (analytic KLs, the conditional one masked out
    where S = O through the guide site's mask) and the same ``torch.optim.Adam``. The floor of
    any Pyro-native step for this work: the same objective, Pyro's effect handlers and nothing
    of the library."""

    def __init__(self, model, guide, lr: float):
        self.t = TorchMaskedPoE(model, guide, lr)
        self.encoders = torch.nn.ModuleList(self.t.encoders)
        self.decoders = torch.nn.ModuleList(self.t.decoders)
        self.elbo = pyro.infer.TraceMeanField_ELBO()
        self.q_s = None

    def guide(self, xs, observed, subset):
        pyro.module("encoders", self.encoders)
        loc, prec = self.t._experts(xs, observed)
        w = torch.stack([subset, observed]).to(prec.dtype).unsqueeze(-1)  # (2, B, M, 1)
        total = (w * prec).sum(-2) + 1.0  # (2, B, D); prior expert N(0, I)
        q_loc, q_scale = (w * prec * loc).sum(-2) / total, total.rsqrt()
        self.q_s = (q_loc[0], q_scale[0])
        differs = (observed & ~subset).any(-1)  # S != O: the conditional KL counts
        with pyro.plate("pair", 2, dim=-2), pyro.plate("data", loc.shape[0], dim=-1), \
                poutine.mask(mask=torch.stack([torch.ones_like(differs), differs])):
            pyro.sample("z", dist.Normal(q_loc, q_scale).to_event(1))

    def model(self, xs, observed, subset):
        pyro.module("decoders", self.decoders)
        loc_s, scale_s = self.q_s
        prior_loc = torch.stack([torch.zeros_like(loc_s), loc_s])
        prior_scale = torch.stack([torch.ones_like(scale_s), scale_s])
        score = torch.stack([subset, observed & ~subset])  # (2, B, M)
        with pyro.plate("pair", 2, dim=-2), pyro.plate("data", loc_s.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            for i, (dec, x, sigma) in enumerate(zip(self.decoders, xs, self.t.noise_scales)):
                with poutine.mask(mask=score[..., i]):
                    pyro.sample(f"x_{i}", dist.Normal(dec(z), sigma).to_event(1), obs=x)

    def loss(self, xs, observed, subset=None):
        if subset is None:
            subset = observed & (torch.rand(observed.shape) < 0.5)  # S ~ iid_half, inside O
        return self.elbo.differentiable_loss(self.model, self.guide, xs, observed, subset)

    def step(self, xs, observed) -> float:
        self.t.optim.zero_grad(set_to_none=True)
        loss = self.loss(xs, observed)
        loss.backward()
        self.t.optim.step()
        return loss.item()


def library_parameters(model, guide):
    """Library parameters in the order of ``TorchMaskedPoE.parameters``."""
    return ([p for m in guide.modalities for p in guide.encoders[m].parameters()]
            + [p for m in guide.modalities for p in model.decoders[m].net.parameters()])


class RecordingGuide:
    """Calls ``guide`` under ``poutine.trace`` and keeps the mask it got and its ``z`` site."""

    def __init__(self, guide):
        self.guide = guide
        self.calls = []
        # vectorised as the guide is, so the bound calls it once for the rows [S, O]
        setattr(self, VECTORIZED, is_vectorized(guide))

    def __call__(self, data, mask):
        tr = poutine.trace(self.guide).get_trace(data, mask)
        self.calls.append((mask, tr.nodes[self.guide.latent_site]))
        return tr.nodes["_RETURN"]["value"]


def check_equal(data, mask, model, guide, seed: int) -> dict:
    """Library loss and gradients vs the hand-written loss (validation on), two ways.

    - ``same seed``: both run from one seed; the hand-written loss draws its random numbers in
      the library's order and shapes, so it uses the same S and noise.
    - ``traced S, z``: the library's guide is called through :class:`RecordingGuide`; its one
      call gets the masks of the rows ``[S, O]`` and samples ``z`` of shape ``(2, 1, B, D)``.
      S is read from the mask, the noise recovered as ``(z - loc) / scale`` from the traced
      distribution, and the hand-written loss evaluated at them: a check that does not depend
      on the two drawing random numbers alike.

    - ``plain Pyro, same seed``: :class:`PyroMaskedPoE` (Pyro's ``TraceMeanField_ELBO``) from
      the same seed; it draws S and the noise in the same order and shapes.

    Returns ``{name: {"library", "value", "rel_loss_diff", "max_rel_grad_diff", "ok"}}``.
    """
    pyro.enable_validation(True)
    xs = [data[m] for m in guide.modalities]
    observed = torch.stack([mask[m] for m in guide.modalities], -1)
    elbo = MaskedMultimodalELBO()

    def run(loss_fn, params):
        for p in params:
            p.grad = None
        pyro.clear_param_store()
        torch.manual_seed(seed)
        loss = loss_fn()
        loss.backward()
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        return loss.item(), grads

    recorder = RecordingGuide(guide)
    lib, lib_grads = run(lambda: elbo.differentiable_loss(model, recorder, data, mask),
                         library_parameters(model, guide))
    if len(recorder.calls) != 1:
        raise RuntimeError(f"expected one guide call per step, got {len(recorder.calls)}")
    enc_mask, site = recorder.calls[0]
    pair = torch.stack([enc_mask[m] for m in guide.modalities], -1)  # (2, 1, B, M)
    subset = pair[0, 0]
    fn = site["fn"].base_dist if hasattr(site["fn"], "base_dist") else site["fn"]
    noise = ((site["value"] - fn.loc) / fn.scale).detach()  # (2, 1, B, D)
    if not torch.equal(pair[1, 0], observed):
        raise RuntimeError("row 1 of the guide's mask is not the observed set")
    hand = TorchMaskedPoE(model, guide, lr=1e-3)
    plain = PyroMaskedPoE(model, guide, lr=1e-3)
    alternatives = {
        "same seed": (lambda: hand.loss(xs, observed), hand),
        "traced S, z": (lambda: hand.loss(xs, observed, subset=subset, noise=noise), hand),
        "plain Pyro, same seed": (lambda: plain.loss(xs, observed), plain.t),
    }
    out = {}
    for name, (loss_fn, owner) in alternatives.items():
        value, grads = run(loss_fn, owner.parameters())
        grad_diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                        for a, b in zip(lib_grads, grads))
        rel = abs(lib - value) / abs(value)
        out[name] = {"library": lib, "value": value, "rel_loss_diff": rel,
                     "max_rel_grad_diff": grad_diff,
                     "ok": rel <= LOSS_RTOL and grad_diff <= GRAD_RTOL}
    pyro.clear_param_store()
    pyro.enable_validation(False)
    return out


# --- the two tables --------------------------------------------------------------------------
def bounds_table(args) -> dict:
    """``{(bound, aggregator, M): {"ms": float, "n": int, "batch": int, "note": str}}``.

    All (bound, aggregator, M) cases are timed in one interleaved loop, so the growth with M
    compares steps timed side by side, like the ratios at one M.
    """
    results = {}
    limit = args.max_pairwise_mb * 2 ** 20
    variants, batches, notes = [], {}, {}
    for m_count in args.modalities:
        data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
        for agg in AGGREGATORS:
            for bound in BOUNDS:
                name = f"{bound}/{agg}/{m_count}"
                size = pairwise_bytes(bound, agg, m_count, args.batch, args.latent_dim)
                b = args.batch
                if size > limit:  # too large at the full batch: time a smaller one
                    b = max(1, min(args.batch, int(limit // (size // args.batch))))
                    k = num_components(agg, m_count)
                    notes[name] = (f"{bound}/{agg} at M={m_count}: the stratified mixture density "
                                   f"is a (K, S, B, K, D) = ({k}, 1, {args.batch}, {k}, "
                                   f"{args.latent_dim}) tensor, {size / 2 ** 30:.1f} GiB at "
                                   f"B={args.batch} (over --max-pairwise-mb "
                                   f"{args.max_pairwise_mb:g}); timed at B={b} instead, so its "
                                   "ratio and growth compare time per data point.")
                sub = {key: x[:b] for key, x in data.items()}
                sub_mask = {key: x[:b] for key, x in mask.items()}
                model, guide = make_model_guide(sub, args.latent_dim, args.hidden, agg, args.seed)
                variants.append(step_variant(name, bound, sub, sub_mask, model, guide, args.lr))
                batches[name] = b
    print(f"[bounds] timing {len(variants)} cases interleaved ...", flush=True)
    t0 = time.perf_counter()
    time_interleaved(variants, args.warmup, args.repeats, args.min_repeats, args.max_seconds,
                     args.prime_below_ms / 1e3)
    print(f"[bounds] {time.perf_counter() - t0:.0f} s", flush=True)
    for v in variants:
        bound, agg, m_count = v.name.split("/")
        results[(bound, agg, int(m_count))] = {"ms": median_ms(v), "n": len(v.times),
                                               "batch": batches[v.name],
                                               "note": notes.get(v.name, "")}
    return results


def overhead_table(args) -> dict:
    """``{M: {"check": ..., variant: ms, "n": ...}}`` for the masked bound with a PoE guide."""
    results = {}
    for m_count in args.modalities:
        data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
        model, guide = make_model_guide(data, args.latent_dim, args.hidden, "PoE", args.seed)
        check = check_equal(data, mask, model, guide, args.seed)
        for name, c in check.items():
            print(f"[check M={m_count}] {'PASS' if c['ok'] else 'FAIL'}: library loss "
                  f"{c['library']:.6f}  {name} loss {c['value']:.6f}  rel. diff "
                  f"{c['rel_loss_diff']:.1e}  max rel. grad diff {c['max_rel_grad_diff']:.1e}",
                  flush=True)
        # Every variant trains its own copy from the same initial weights.
        xs = [data[m] for m in guide.modalities]
        observed = torch.stack([mask[m] for m in guide.modalities], -1)
        hand = TorchMaskedPoE(model, guide, args.lr)
        m2, g2 = copy.deepcopy(model), copy.deepcopy(guide)
        elbo = MaskedMultimodalELBO()
        adam = torch.optim.Adam(library_parameters(m2, g2), lr=args.lr)

        def loss_adam():
            adam.zero_grad(set_to_none=True)
            elbo.differentiable_loss(m2, g2, data, mask).backward()
            adam.step()

        plain = PyroMaskedPoE(model, guide, args.lr)
        variants = [step_variant("step", "masked", data, mask, model, guide, args.lr),
                    svi_variant("svi", "masked", data, mask, *copy.deepcopy((model, guide)),
                                args.lr),
                    Variant("loss+adam", loss_adam),
                    Variant("plain Pyro", lambda: plain.step(xs, observed)),
                    Variant("torch", lambda: hand.step(xs, observed), own_store=False)]
        print(f"[overhead M={m_count}] timing ...", flush=True)
        time_interleaved(variants, args.warmup, args.repeats, args.min_repeats, args.max_seconds,
                         args.prime_below_ms / 1e3)
        results[m_count] = {"check": check, "n": min(len(v.times) for v in variants),
                            **{v.name: median_ms(v) for v in variants}}
    return results


# --- output ----------------------------------------------------------------------------------
def fmt_ratio(x: float) -> str:
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×"


def format_bounds(results, modalities, batch: int) -> str:
    lo, hi = min(modalities), max(modalities)
    head = ["bound", "aggregator"] + [f"M={m} ms (× masked/PoE)" for m in modalities]
    head.append(f"M={hi} / M={lo}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []

    def per_point(r):
        return r["ms"] / r["batch"]

    for agg in AGGREGATORS:
        for bound in BOUNDS:
            row = [bound, agg]
            for m in modalities:
                r = results[(bound, agg, m)]
                ratio = per_point(r) / per_point(results[("masked", "PoE", m)])
                if r["batch"] == batch:
                    row.append(f"{r['ms']:.1f} ({fmt_ratio(ratio)})")
                else:
                    notes.append(r["note"])
                    row.append(f"{r['ms']:.0f} at B={r['batch']}† ({fmt_ratio(ratio)} per data "
                               "point)")
            a, b = results[(bound, agg, hi)], results[(bound, agg, lo)]
            mark = "†" if batch != a["batch"] or batch != b["batch"] else ""
            row.append(f"{fmt_ratio(per_point(a) / per_point(b))}{mark}")
            lines.append("| " + " | ".join(row) + " |")
    counts = sorted({r["n"] for r in results.values()})
    lines.append("")
    lines.append(f"Timed steps per cell (after warm-up): {counts[0]}–{counts[-1]}.")
    for n in notes:
        lines.append("")
        lines.append(f"† {n}")
    return "\n".join(lines)


def format_overhead(results) -> str:
    names = ("step", "svi", "loss+adam", "plain Pyro", "torch")
    ratios = (("step", "torch"), ("plain Pyro", "torch"), ("step", "plain Pyro"),
              ("svi", "step"))
    head = (["M"] + [f"{n} ms" for n in names]
            + [f"**{a} / {b}**" if (a, b) == ("step", "plain Pyro") else f"{a} / {b}"
               for a, b in ratios])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in results.items():
        cells = [f"{r[a] / r[b]:.2f}×" for a, b in ratios]
        cells[2] = f"**{cells[2]}**"
        lines.append("| " + " | ".join([str(m)] + [f"{r[k]:.1f}" for k in names] + cells)
                     + " |")
    lines.append("")
    lines.append(f"Timed steps per variant: {min(r['n'] for r in results.values())}–"
                 f"{max(r['n'] for r in results.values())}.")
    lines.append("")
    lines.append("Equality check (before timing, validation on): library `differentiable_loss` "
                 "vs the hand-written loss. `same seed`: both run from one seed; the hand-written "
                 "loss draws `rand(B, M)` for S and one standard normal `(2, 1, B, D)` for the "
                 "rows `[z_S, z_O]`, as the library does, so both see the same S and noise. "
                 "`traced S, z`: the hand-written loss evaluated at the S and the noise "
                 "`(z - loc) / scale` read from a `poutine.trace` of the library's (single) guide "
                 "call, independent of how either draws random numbers. `plain Pyro, same "
                 "seed`: the plain-Pyro program from the same seed (it draws S and the noise "
                 "alike), against the library. `rel`: relative "
                 "difference of the loss; `grad`: the largest over parameters of max|Δgrad| / "
                 f"max|grad|; pass means rel ≤ {LOSS_RTOL:g} and grad ≤ {GRAD_RTOL:g}.")
    lines.append("")
    lines.append("| M | library loss | " + " | ".join(next(iter(results.values()))["check"])
                 + " |")
    lines.append("|" + "---|" * (2 + len(next(iter(results.values()))["check"])))
    for m, r in results.items():
        c = r["check"]
        cells = [f"{'pass' if v['ok'] else 'FAIL'}: {v['value']:.4f} (rel {v['rel_loss_diff']:.0e}"
                 f", grad {v['max_rel_grad_diff']:.0e})" for v in c.values()]
        lines.append(f"| {m} | {next(iter(c.values()))['library']:.4f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(args) -> str:

    return (f"torch {torch.__version__}, pyro {pyro.__version__}, Python "
            f"{platform.python_version()}, {cpu_name()} ({os.cpu_count()} cores), "
            f"torch threads {torch.get_num_threads()}, float32, CPU")


def library_revision() -> str:
    """``git`` commit of the checkout, and which library files differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pyro_mmvae", "models",
                                "guides"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    dirty = [line[3:] for line in dirty if line.strip()]
    return commit + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")


def render(args, argv, bounds, overhead, elapsed) -> str:
    cmd = "python benchmarks/bench_bounds.py " + " ".join(shlex.quote(a) for a in argv)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "# Multimodal bounds: step time and Pyro overhead", "",
        f"- Command: `{cmd.strip()}`",
        f"- Date: {date}; total run time {elapsed:.0f} s",
        f"- Environment: {environment(args)}",
        f"- Library: commit {library_revision()}",
        f"- Problem: linear-Gaussian model ({args.dim} features per modality, latent "
        f"{args.latent_dim}), MLP encoders (hidden {list(args.hidden)}), batch {args.batch}, "
        "every modality observed, one particle, Adam lr "
        f"{args.lr}; `pyro.enable_validation(False)` while timing",
        f"- Timing: median over interleaved steps after {args.warmup} warm-up rounds (at most "
        f"{args.repeats} timed steps, fewer once a variant's timed steps exceed "
        f"{args.max_seconds:g} s, never fewer than {args.min_repeats}); a case whose last step "
        f"took under {args.prime_below_ms:g} ms runs one untimed step before each timed one", ""]
    if bounds is not None:
        parts += ["## 1. Step time of each bound and aggregator", "",
                  "`fit`'s step, `SVIStep` with `make_optimizer` (forward + backward + one "
                  "`torch.optim.Adam`). Bounds with their default "
                  "masking: masked = `MaskedMultimodalELBO()` (iid_half, analytic KL, STL); "
                  "mixture = `MixtureMultimodalELBO(form='stratified')` (S = O); subsampled = "
                  "`SubsampledMultimodalELBO()` (full + M unimodal + 1 random subset). In "
                  "parentheses: the ratio to masked/PoE at the same M.", "",
                  format_bounds(bounds, args.modalities, args.batch), ""]
    if overhead is not None:
        parts += ["## 2. Pyro overhead: masked bound, PoE guide", "",
                  "`step`: `fit`'s step (`SVIStep(model, guide, MaskedMultimodalELBO(), "
                  "make_optimizer(lr))`); `svi`: Pyro's `SVI(..., pyro.optim.Adam, "
                  "MaskedMultimodalELBO()).step`; `loss+adam`: `differentiable_loss` + one "
                  "`torch.optim.Adam`; `plain Pyro`: the hand-written bound as a minimal Pyro "
                  "program (a pair and a data plate, prior rows `[N(0, I), q_S]`, each "
                  "modality masked to its scored rows, Pyro's `TraceMeanField_ELBO`) + "
                  "`torch.optim.Adam`, the floor of any Pyro-native step; `torch`: "
                  "hand-written PyTorch doing the library's work (encoders once, the PoEs of S "
                  "and O stacked as two rows, one draw, decoders once on both rows) + "
                  "`torch.optim.Adam`. Same networks, same initial weights, same data.", "",
                  format_overhead(overhead), ""]
    return "\n".join(parts)


# --- profiling -------------------------------------------------------------------------------
def profile_steps(args, step, data, mask, what: str) -> None:
    """Print cProfile's table of ``--repeats`` steps of ``fit``'s step (after ``--warmup``
    untimed ones)."""
    for _ in range(args.warmup):
        step(data, mask)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.repeats):
        step(data, mask)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.profile_sort).print_stats(args.profile_lines)
    print(f"cProfile of {args.repeats} steps (SVIStep), {what}, batch {args.batch}, sorted by "
          f"{args.profile_sort}")
    print(out.getvalue())


def profile(args, spec: str) -> None:
    bound, agg, m_count = spec.split("/")
    m_count = int(m_count)
    data, mask = make_data(m_count, args.dim, args.latent_dim, args.batch, args.seed)
    model, guide = make_model_guide(data, args.latent_dim, args.hidden, agg, args.seed)
    step = SVIStep(model, guide, BOUNDS[bound](), make_optimizer(args.lr))
    profile_steps(args, step, data, mask, f"{bound} bound, {agg}, M={m_count}")


# --- entry point -----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", type=int, nargs="+", default=[2, 5, 10], help="values of M")
    p.add_argument("--dim", type=int, default=32, help="features per modality D_m")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128],
                   help="encoder hidden layer widths")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    add_timing_options(p, repeats=50, max_seconds=10.0)
    p.add_argument("--max-pairwise-mb", type=float, default=256.0,
                   help="largest (K, S, B, K, D) stratified-mixture tensor to run at full batch; "
                   "larger cases run at the batch that fits")
    p.add_argument("--tables", nargs="+", choices=["bounds", "overhead"],
                   default=["bounds", "overhead"])
    add_run_options(p, "BOUND/AGGREGATOR/M", "mixture/MoPoE/10")
    return quick(p.parse_args(argv))


def add_timing_options(p, repeats: int, max_seconds: float) -> None:
    """The timing options of the step benchmarks (defaults ``repeats``, ``max_seconds``)."""
    p.add_argument("--warmup", type=int, default=3, help="discarded rounds")
    p.add_argument("--repeats", type=int, default=repeats, help="most timed steps per variant")
    p.add_argument("--min-repeats", type=int, default=5, help="fewest timed steps per variant")
    p.add_argument("--max-seconds", type=float, default=max_seconds,
                   help="stop timing a case once its timed steps exceed this")
    p.add_argument("--prime-below-ms", type=float, default=100.0,
                   help="run an untimed step before each timed step of a case faster than this "
                   "(0: never)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)


def add_run_options(p, profile_metavar: str, profile_example: str) -> None:
    """``--output``, ``--quick`` and the profiler's options."""
    p.add_argument("--output", help="write the markdown report here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: M = 2 3, batch 32, 1 warm-up, 3 repeats")
    p.add_argument("--profile", metavar=profile_metavar,
                   help=f"cProfile --repeats SVI steps of one case (e.g. {profile_example}) "
                   "instead")
    p.add_argument("--profile-sort", default="tottime", help="pstats sort key")
    p.add_argument("--profile-lines", type=int, default=25)


def quick(args):
    """``--quick``'s budget."""
    if args.quick:
        args.modalities, args.batch, args.warmup, args.repeats = [2, 3], 32, 1, 3
        args.min_repeats = 1
    return args


def run_benchmark(args, argv, tables: Dict[str, Callable], profile: Callable,
                  render: Callable) -> Optional[dict]:
    """Run the ``tables`` that ``--tables`` names (in the order given here) with one thread
    count and Pyro's validation off, print ``render(args, argv, results, seconds)`` and write
    it to ``--output``; or only profile one case (``--profile``)."""
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    pyro.enable_validation(False)
    if args.profile:
        profile(args, args.profile)
        return None
    t0 = time.perf_counter()
    results = {name: fn(args) if name in args.tables else None for name, fn in tables.items()}
    report = render(args, argv, results, time.perf_counter() - t0)
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_benchmark(
        parse_args(argv), argv, {"overhead": overhead_table, "bounds": bounds_table}, profile,
        lambda args, argv, r, seconds: render(args, argv, r["bounds"], r["overhead"], seconds))


if __name__ == "__main__":
    main()
