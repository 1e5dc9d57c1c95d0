r"""pyro_mmvae against MultiVae 1.0.3, side by side (issue 11, point 7).

MVAE, MMVAE and MoPoE from both libraries on identical data, networks, initial weights and
objectives, trained interleaved in one process; one shared importance-sampling estimator of the
test NLL for both; MoPoE step time as ``M`` grows; ``log_likelihood`` 1000 points x 1000
particles.

Problem (the issue filer's setup): synthetic data with ``M = 5`` modalities of 64 dims (2000
train / 500 test points), a shared 8-dim latent pushed through fixed random nonlinear maps
(``tanh`` MLP 8 -> 32 -> 64 per modality) plus N(0, 0.1^2) noise, all from ``--seed``;
per-modality MLP encoders 64 -> 128 -> 128 with a mean and a log-variance head (latent 8),
decoders 8 -> 128 -> 128 -> 64 (ReLU), Gaussian likelihood with fixed scale 0.1, N(0, I) prior,
beta = 1, Adam lr 1e-3, batch 128, 20 epochs, one torch thread.

The networks are built once per configuration and deep-copied into every variant, so all start
from the same weights:

======  ===============================================  =======================================
model   pyro_mmvae                                       MultiVae 1.0.3
======  ===============================================  =======================================
MVAE    ``SubsampledMultimodalELBO(num_subsets=0)``,     ``MVAE`` (``k=0``, ``warmup=0``,
        ``PoE(scale="logvar", min_scale=0)``             ``use_subsampling=True``)
MMVAE   ``MixtureMultimodalELBO(form="stratified")``,    ``MMVAE`` (``K=1``, ``"normal"``
        ``MoE(scale="logvar", min_scale=0)``             posterior/prior, ``learn_prior=False``,
                                                         ``loss="dreg_looser"``: STL at K = 1)
MoPoE   ``MixtureMultimodalELBO(form="average",          ``MoPoE`` (all 31 subsets, prior expert in
        num_subsets=1)``, ``MoPoE(scale="logvar",        the full-set product)
        min_scale=0)``
======  ===============================================  =======================================

Variants timed per model, one epoch each per round, order rotated every round:

- ``ours``: the step of ``pyro_mmvae.train.fit``, ``SVIStep(model, guide, loss,
  make_optimizer(lr))`` (``pyro.infer.SVI``'s step with the parameters found once, and one
  ``torch.optim.Adam`` over all of them, ``pyro_mmvae.optim.SharedOptim``) over shuffled
  mini-batches (index permutation of in-memory tensors);
- ``torch``: a plain-PyTorch loss written here that does what our bound does (same estimator),
  with one ``torch.optim.Adam``: the cost of Pyro and of the library's generality;
- ``mv-trainer``: MultiVae's own ``BaseTrainer.train_step(epoch)`` (its ``DataLoader``, callbacks
  and tqdm progress bar, written to ``/dev/null``; not ``train()``'s evaluation, logging and
  checkpointing);
- ``mv-loop``: MultiVae's ``model.forward`` in the same plain loop as ``torch``;
- ``pyro`` (MVAE and MoPoE): ``torch``'s networks and subset products as a minimal plain Pyro
  program (``pyro.module``, a data plate, one latent site, one observed site per modality),
  Pyro's ``TraceMeanField_ELBO`` and the same ``torch.optim.Adam``: what any Pyro program doing
  this work pays for Pyro's effect handlers, so ``ours / plain Pyro`` is the library's own
  cost (MoPoE: the KL of the drawn component, an unbiased estimate of ``torch``'s exact
  average over the components).

The first epoch of each is a warm-up and is not counted; s/epoch and CPU s/epoch
(``time.process_time``) are medians of the rest. Peak RSS: RSS is per process, so each of
``ours`` and ``mv-trainer`` also runs alone in a fresh subprocess for two epochs and reports its
peak RSS (``ru_maxrss``) minus its RSS just before training (after imports, data and model).

Test NLL: one function (:func:`stratified_nll`) scores every trained model, given plain torch
callables for q(z | x) (a mixture: logits, means, scales) and for the decoder means. It draws
``ceil(K / C)`` particles from each of the ``C`` components of the joint posterior (1 for PoE)
and returns ``-log sum_{c,i} pi_c / n exp(log p(x|z) + log p(z) - log q(z|x))``, in chunks of
data points and particles. ``ours`` and ``mv-trainer`` are also retrained from
``--nll-seeds`` seeds, since 20 epochs leave a seed-to-seed spread of several nats.

Before training, the ``check`` table evaluates the three losses (ours, ``torch``, MultiVae) at
the shared initial weights, averaged over draws: they agree within their standard errors.
What differs in the objectives: MultiVae's MVAE and MoPoE losses are batch means (ours are
sums; Adam sees the scale only through its epsilon); MultiVae's MoPoE assigns the 31
components to batch positions deterministically (``floor(B / 31)`` points each, the rest to the
full set) where ours draws one per point uniformly; MultiVae's MoPoE PoE adds 1e-8 to the
variances.

Also: MoPoE step time as ``M`` grows (ours with one drawn subset and with all subsets,
MultiVae), each case under an address-space cap; and the joint log-likelihood of 1000 points
with 1000 particles, ours ``log_likelihood`` against MultiVae's ``compute_joint_nll``, each in a
fresh subprocess. ``--profile MODEL`` splits one step into parts and cProfiles it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import datetime
import gc
import importlib.metadata
import io
import itertools
import json
import math
import os
import pstats
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from torch.distributions import Normal

try:
    from multivae.models import MMVAE, MVAE, MMVAEConfig, MoPoE as MVMoPoE, MoPoEConfig, MVAEConfig
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.data.datasets import DatasetOutput
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
except ImportError as exc:  # pragma: no cover - the message is the point
    sys.exit("bench_vs_multivae.py needs MultiVae 1.0.3, the [bench] extra: "
             f"pip install -e '.[bench]'   ({exc})")

from pyro_mmvae import MixtureMultimodalELBO, SubsampledMultimodalELBO  # noqa: E402
from pyro_mmvae.eval import log_likelihood  # noqa: E402
from pyro_mmvae.data import MultimodalDataset  # noqa: E402
from pyro_mmvae.train import SVIStep, make_optimizer  # noqa: E402
from _param_store import ParamStoreSlot  # noqa: E402
from pyro_mmvae.guides import MoE, MoPoE, MultimodalGuide, PoE  # noqa: E402
from pyro_mmvae.models import (GaussianDecoder, MultimodalModel,  # noqa: E402
                               StandardNormalPrior)

MULTIVAE_VERSION = importlib.metadata.version("multivae")

MODELS = ("MVAE", "MMVAE", "MoPoE")
PYRO_KINDS = ("MVAE", "MoPoE")  # those with a plain-Pyro variant (PyroVariant)
NOISE = 0.1  # likelihood scale, and the data's noise


# --- data and networks -----------------------------------------------------------------------
def make_data(num_modalities: int, dim: int, latent_dim: int, num_points: int, seed: int,
              hidden: int = 32) -> Dict[str, torch.Tensor]:
    """``{m: (N, dim)}``: a shared ``z ~ N(0, I)`` through fixed random tanh MLPs, plus noise.

    The maps depend on ``seed`` only (not on ``num_points``); the points on both.
    """
    g = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(num_modalities):
        w1 = torch.randn(latent_dim, hidden, generator=g) / math.sqrt(latent_dim)
        b1 = 0.5 * torch.randn(hidden, generator=g)
        w2 = torch.randn(hidden, dim, generator=g) / math.sqrt(hidden)
        maps.append((w1, b1, w2))
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(num_points, latent_dim, generator=g)
    return {f"m{i}": torch.tanh(z @ w1 + b1) @ w2 + NOISE * torch.randn(num_points, dim,
                                                                        generator=g)
            for i, (w1, b1, w2) in enumerate(maps)}


class EncoderNet(nn.Module):
    """``in -> hidden -> hidden`` ReLU trunk with mean and log-variance heads."""

    def __init__(self, dim: int, hidden: int, latent_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                   nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


def decoder_net(latent_dim: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, dim))


class Nets:
    """One encoder and one decoder net per modality, built from a seed; ``copy()`` to use."""

    def __init__(self, modalities: Sequence[str], dim: int, hidden: int, latent_dim: int,
                 seed: int):
        torch.manual_seed(seed)
        self.modalities = list(modalities)
        self.latent_dim = latent_dim
        self.encoders = {m: EncoderNet(dim, hidden, latent_dim) for m in modalities}
        self.decoders = {m: decoder_net(latent_dim, hidden, dim) for m in modalities}

    def copy(self):
        return ({m: copy.deepcopy(e) for m, e in self.encoders.items()},
                {m: copy.deepcopy(d) for m, d in self.decoders.items()})


# --- our library -----------------------------------------------------------------------------
class OursEncoder(nn.Module):
    """Our guides read ``[mean, log-variance]`` features (``scale="logvar"``)."""

    def __init__(self, net: EncoderNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat(self.net(x), dim=-1)


def ours_setup(kind: str, nets: Nets, num_subsets_mopoe: Optional[int] = 1, **mixture):
    """Our model, guide and bound for ``kind``; ``mixture``: further arguments of MoPoE's
    ``MixtureMultimodalELBO`` (``form``, ``recompute_decoders``)."""
    encs, decs = nets.copy()
    agg = {"MVAE": PoE, "MMVAE": MoE, "MoPoE": MoPoE}[kind](scale="logvar", min_scale=0.0)
    guide = MultimodalGuide({m: OursEncoder(e) for m, e in encs.items()}, agg)
    model = MultimodalModel(StandardNormalPrior(nets.latent_dim),
                            {m: GaussianDecoder(d, scale=NOISE) for m, d in decs.items()})
    if kind == "MVAE":
        elbo = SubsampledMultimodalELBO(num_subsets=0)
    elif kind == "MMVAE":
        elbo = MixtureMultimodalELBO(form="stratified")
    else:
        mixture = {"form": "average", **mixture}
        elbo = MixtureMultimodalELBO(num_subsets=num_subsets_mopoe if mixture["form"] == "average"
                                     else None, **mixture)
    return model, guide, elbo


def full_mask(batch):
    n = next(iter(batch.values())).shape[0]
    return {m: torch.ones(n, dtype=torch.bool) for m in batch}


class OursVariant:
    """``fit``'s step (``SVIStep``: ``SVI.step`` with the parameters found once) with its own
    Pyro param store."""

    def __init__(self, kind: str, nets: Nets, lr: float, num_subsets_mopoe=1):
        self.model, self.guide, elbo = ours_setup(kind, nets, num_subsets_mopoe)
        self.store = ParamStoreSlot()
        self.svi = SVIStep(self.model, self.guide, elbo, make_optimizer(lr))

    def activate(self):
        self.store.activate()

    def step(self, batch):
        self.activate()
        return self.svi(batch, full_mask(batch))

    # plain-torch callables for the shared NLL estimator
    def posterior(self, batch):
        self.activate()
        with torch.no_grad():
            q = self.guide.distribution(batch, full_mask(batch))
        if hasattr(q, "locs"):  # DiagNormalMixture
            return q.logits, q.locs, q.scales
        base = q.base_dist
        return base.loc.new_zeros(base.loc.shape[:-1] + (1,)), base.loc[..., None, :], \
            base.scale[..., None, :]

    def decode(self, z):
        return {m: self.model.decoders[m].net(z) for m in self.model.modalities}


# --- hand-written PyTorch losses (what our bounds compute) -----------------------------------
class TorchVariant:
    """Plain PyTorch loss of our bound (summed over the batch), one ``torch.optim.Adam``."""

    def __init__(self, kind: str, nets: Nets, lr: float):
        self.kind = kind
        encs, decs = nets.copy()
        self.modalities = nets.modalities
        self.encoders = nn.ModuleList([encs[m] for m in self.modalities])
        self.decoders = nn.ModuleList([decs[m] for m in self.modalities])
        params = list(self.encoders.parameters()) + list(self.decoders.parameters())
        self.optim = torch.optim.Adam(params, lr=lr)
        m = len(self.modalities)
        if kind == "MoPoE":
            subsets = [s for r in range(1, m + 1) for s in itertools.combinations(range(m), r)]
            self.subsets = torch.zeros(len(subsets), m)
            for k, s in enumerate(subsets):
                self.subsets[k, list(s)] = 1.0
            self.prior = (self.subsets.sum(-1) == m).float()  # prior expert in the full set
        elif kind == "MVAE":  # joint + unimodal rows
            self.subsets = torch.cat([torch.ones(1, m), torch.eye(m)])
            self.prior = torch.ones(m + 1)

    def experts(self, xs):
        mus, logvars = zip(*(enc(x) for enc, x in zip(self.encoders, xs)))
        return torch.stack(mus, -2), torch.stack(logvars, -2)  # (B, M, D)

    def rec(self, z, xs):
        """``(..., B, M)`` log p(x_m | z) for z of shape ``(..., B, D)``."""
        return torch.stack([Normal(dec(z), NOISE).log_prob(x).sum(-1)
                            for dec, x in zip(self.decoders, xs)], -1)

    def products(self, mu, logvar):
        """Subset PoEs ``(K, B, D)`` of the rows of ``self.subsets`` (+ prior expert)."""
        prec = torch.exp(-logvar)  # (B, M, D)
        a = self.subsets
        tot = torch.einsum("km,bmd->kbd", a, prec) + self.prior[:, None, None]
        loc = torch.einsum("km,bmd->kbd", a, prec * mu) / tot
        return loc, tot.rsqrt()

    def loss(self, batch):
        xs = [batch[m] for m in self.modalities]
        mu, logvar = self.experts(xs)
        if self.kind == "MVAE":
            loc, scale = self.products(mu, logvar)  # (1 + M, B, D): rows [all, {0}, {1}, ..]
            z = loc + scale * torch.randn_like(loc)
            # decode only the scored rows: modality m in the joint row and in its own row
            rec = sum(Normal(dec(z[[0, 1 + i]]), NOISE).log_prob(x).sum()
                      for i, (dec, x) in enumerate(zip(self.decoders, xs)))
            kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum()
            return -(rec - kl)
        if self.kind == "MMVAE":
            sigma = torch.exp(0.5 * logvar)
            z = (mu + sigma * torch.randn_like(mu)).transpose(0, 1)  # (M, B, D): one per expert
            rec = self.rec(z, xs).sum(-1)  # (M, B)
            # STL: the mixture density with detached parameters
            q = Normal(mu.detach(), sigma.detach())
            log_q = torch.logsumexp(q.log_prob(z.unsqueeze(-2)).sum(-1), -1) - math.log(len(xs))
            log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
            return -(rec + log_p - log_q).mean(0).sum()
        loc, scale = self.products(mu, logvar)  # (K, B, D)
        k, b, d = loc.shape
        j = torch.randint(k, (b,))  # one drawn component per data point
        idx = torch.arange(b)
        z = loc[j, idx] + scale[j, idx] * torch.randn(b, d)
        rec = self.rec(z, xs).sum(-1)  # (B,)
        kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum(-1).mean(0)  # exact
        return -(rec - kl).sum()

    def step(self, batch):
        self.optim.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        self.optim.step()
        return loss.item()

    def posterior(self, batch):
        with torch.no_grad():
            mu, logvar = self.experts([batch[m] for m in self.modalities])
            if self.kind == "MMVAE":
                locs, scales = mu, torch.exp(0.5 * logvar)
            else:
                loc, scale = self.products(mu, logvar)  # (K, B, D)
                locs, scales = loc.transpose(0, 1), scale.transpose(0, 1)
                if self.kind == "MVAE":  # the joint row only
                    locs, scales = locs[:, :1], scales[:, :1]
        return locs.new_zeros(locs.shape[:-1]), locs, scales

    def decode(self, z):
        return {m: dec(z) for m, dec in zip(self.modalities, self.decoders)}


class PyroVariant:
    """The hand-written loss as a minimal plain Pyro program: the networks and subset products
    of :class:`TorchVariant`, ``pyro.module``, a data plate, one latent site, one observed site
    per modality, Pyro's own ``TraceMeanField_ELBO`` (analytic KL of the guide's site) and one
    ``torch.optim.Adam``: what any Pyro program doing this work pays for Pyro's effect handlers
    (the floor of a Pyro-native step). MVAE and MoPoE only (MMVAE's stratified mixture density
    has no plain-Pyro site form). MoPoE: the KL of the drawn component, not the exact average
    over all 31 (a few hundred multiply-adds less than ``torch``)."""

    def __init__(self, kind: str, nets: Nets, lr: float):
        if kind not in PYRO_KINDS:
            raise ValueError(f"no plain-Pyro variant for {kind}")
        self.t = TorchVariant(kind, nets, lr)
        self.elbo = pyro.infer.TraceMeanField_ELBO()
        self.store = ParamStoreSlot()

    def model(self, xs):
        t = self.t
        pyro.module("decoders", t.decoders)
        b, d = xs[0].shape[0], t.encoders[0].mu.out_features
        rows = 1 + len(xs) if t.kind == "MVAE" else 1
        with pyro.plate("data", b, dim=-1), pyro.plate("subsets", rows, dim=-2):
            z = pyro.sample("z", dist.Normal(xs[0].new_zeros(()), 1.0).expand([rows, b, d])
                            .to_event(1))
        with pyro.plate("data_x", b, dim=-1):
            for i, (dec, x) in enumerate(zip(t.decoders, xs)):
                if t.kind == "MVAE":  # the joint row and the modality's own row
                    with pyro.plate(f"rows_{i}", 2, dim=-2):
                        pyro.sample(f"x_{i}", dist.Normal(dec(z[[0, 1 + i]]), NOISE)
                                    .to_event(1), obs=x.expand(2, *x.shape))
                else:
                    pyro.sample(f"x_{i}", dist.Normal(dec(z[0]), NOISE).to_event(1), obs=x)

    def guide(self, xs):
        t = self.t
        pyro.module("encoders", t.encoders)
        loc, scale = t.products(*t.experts(xs))  # (K, B, D)
        if t.kind == "MoPoE":
            k, b, _ = loc.shape
            j, idx = torch.randint(k, (b,)), torch.arange(b)
            loc, scale = loc[j, idx][None], scale[j, idx][None]
        with pyro.plate("data", loc.shape[1], dim=-1), pyro.plate("subsets", loc.shape[0],
                                                                  dim=-2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def step(self, batch):
        self.store.activate()
        xs = [batch[m] for m in self.t.modalities]
        self.t.optim.zero_grad(set_to_none=True)
        loss = self.elbo.differentiable_loss(self.model, self.guide, xs)
        loss.backward()
        self.t.optim.step()
        return loss.item()

    def posterior(self, batch):
        return self.t.posterior(batch)

    def decode(self, z):
        return self.t.decode(z)


# --- MultiVae --------------------------------------------------------------------------------
class MVEncoder(BaseEncoder):
    def __init__(self, net: EncoderNet):
        BaseEncoder.__init__(self)
        self.net = net

    def forward(self, x):
        mu, logvar = self.net(x)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class MVDecoder(BaseDecoder):
    def __init__(self, net: nn.Module):
        BaseDecoder.__init__(self)
        self.net = net

    def forward(self, z):
        return ModelOutput(reconstruction=self.net(z))


def multivae_model(kind: str, nets: Nets, dim: int):
    encs, decs = nets.copy()
    common = dict(n_modalities=len(nets.modalities), latent_dim=nets.latent_dim,
                  input_dims={m: (dim,) for m in nets.modalities},
                  decoders_dist={m: "normal" for m in nets.modalities},
                  decoder_dist_params={m: {"scale": NOISE} for m in nets.modalities})
    if kind == "MVAE":
        cls, cfg = MVAE, MVAEConfig(**common, use_subsampling=True, k=0, warmup=0, beta=1.0)
    elif kind == "MMVAE":
        cls, cfg = MMVAE, MMVAEConfig(**common, K=1, prior_and_posterior_dist="normal",
                                      learn_prior=False, beta=1.0, loss="dreg_looser")
    else:
        cls, cfg = MVMoPoE, MoPoEConfig(**common, beta=1.0)
    return cls(cfg, encoders={m: MVEncoder(e) for m, e in encs.items()},
               decoders={m: MVDecoder(d) for m, d in decs.items()})


class MVLoopVariant:
    """MultiVae's ``forward`` in a plain torch loop."""

    def __init__(self, kind: str, nets: Nets, dim: int, lr: float):
        self.kind = kind
        self.model = multivae_model(kind, nets, dim)
        self.model.train()
        self.optim = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.epoch = 1

    def step(self, batch):
        self.optim.zero_grad(set_to_none=True)
        loss = self.model(DatasetOutput(data=batch), epoch=self.epoch).loss
        loss.backward()
        self.optim.step()
        return loss.item()

    def posterior(self, batch):
        return mv_posterior(self.kind, self.model, batch)

    def decode(self, z):
        return {m: self.model.decoders[m](z).reconstruction for m in self.model.decoders}


def mv_posterior(kind, model, batch):
    """MultiVae's joint posterior q(z | x_all) as ``(logits, locs, scales)``."""
    model.eval()
    with torch.no_grad():
        inputs = DatasetOutput(data=batch)
        if kind == "MVAE":
            mu, logvar = model.compute_mu_log_var_subset(inputs, list(model.encoders))
            mus, logvars = mu[:, None], logvar[:, None]
        elif kind == "MMVAE":
            outs = [model.encoders[m](batch[m]) for m in model.encoders]
            mus = torch.stack([o.embedding for o in outs], 1)
            logvars = torch.stack([o.log_covariance for o in outs], 1)
        else:
            lat = model.inference(inputs)
            mus, logvars = lat["mus"].transpose(0, 1), lat["logvars"].transpose(0, 1)
    model.train()
    return mus.new_zeros(mus.shape[:-1]), mus, torch.exp(0.5 * logvars)


class MVTrainerVariant:
    """MultiVae's ``BaseTrainer``; one ``train_step(epoch)`` per epoch."""

    def __init__(self, kind: str, nets: Nets, dim: int, lr: float, batch: int, epochs: int,
                 train: Dict[str, torch.Tensor], seed: int, out_dir: str):
        self.kind = kind
        self.model = multivae_model(kind, nets, dim)
        cfg = BaseTrainerConfig(output_dir=out_dir, per_device_train_batch_size=batch,
                                num_epochs=epochs, learning_rate=lr, no_cuda=True, seed=seed)
        with quiet():
            self.trainer = BaseTrainer(self.model, MultimodalBaseDataset(data=train),
                                       training_config=cfg)
        self.epoch = 0

    def epoch_run(self):
        self.epoch += 1
        with quiet():
            self.trainer.train_step(self.epoch)
            self.trainer.callback_handler.on_epoch_end(self.trainer.training_config)

    def posterior(self, batch):
        return mv_posterior(self.kind, self.model, batch)

    def decode(self, z):
        return {m: self.model.decoders[m](z).reconstruction for m in self.model.decoders}


@contextlib.contextmanager
def quiet():
    """stdout/stderr (MultiVae's logger, tqdm) to /dev/null."""
    import logging
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), \
            contextlib.redirect_stdout(null):
        level = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(level)


# --- epochs ----------------------------------------------------------------------------------
def batches(train: Dict[str, torch.Tensor], batch: int, gen: torch.Generator):
    """Shuffled mini-batches (the last one smaller), the library's one iterator."""
    for data, _ in MultimodalDataset(train).batches(batch, shuffle=True, generator=gen):
        yield data


class Runner:
    """A named variant: ``run_epoch()`` trains one epoch; timings in ``wall``/``cpu``."""

    def __init__(self, name: str, variant, train, batch: int, seed: int):
        self.name, self.variant = name, variant
        self.train, self.batch = train, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.wall: List[float] = []
        self.cpu: List[float] = []

    def run_epoch(self):
        t0, c0 = time.perf_counter(), time.process_time()
        if isinstance(self.variant, MVTrainerVariant):
            self.variant.epoch_run()
        else:
            for b in batches(self.train, self.batch, self.gen):
                self.variant.step(b)
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)


def make_runner(name: str, kind: str, nets: Nets, args, train, out_dir: str,
                seed: Optional[int] = None) -> Runner:
    seed = args.seed if seed is None else seed
    if name == "ours":
        v = OursVariant(kind, nets, args.lr)
    elif name == "torch":
        v = TorchVariant(kind, nets, args.lr)
    elif name == "pyro":
        v = PyroVariant(kind, nets, args.lr)
    elif name == "mv-trainer":
        v = MVTrainerVariant(kind, nets, args.dim, args.lr, args.batch, args.epochs, train,
                             seed, out_dir)
    elif name == "mv-loop":
        v = MVLoopVariant(kind, nets, args.dim, args.lr)
    else:
        raise ValueError(name)
    return Runner(name, v, train, args.batch, seed)


VARIANTS = ("ours", "torch", "mv-trainer", "mv-loop")


def variants_of(kind: str) -> tuple:
    """The training table's variants: :data:`VARIANTS`, and ``pyro`` (:class:`PyroVariant`)
    where it exists."""
    return VARIANTS + (("pyro",) if kind in PYRO_KINDS else ())


def train_interleaved(kind: str, args, train, out_dir: str, seed: Optional[int] = None,
                      variants: Sequence[str] = VARIANTS) -> Dict[str, Runner]:
    """Fresh runners from one set of networks (``seed``), one epoch each per round."""
    seed = args.seed if seed is None else seed
    nets = Nets(list(train), args.dim, args.hidden, args.latent_dim, seed)
    runners = [make_runner(n, kind, nets, args, train, out_dir, seed) for n in variants]
    for e in range(args.epochs):
        shift = e % len(runners)
        for r in runners[shift:] + runners[:shift]:
            torch.manual_seed(seed * 1000 + e)
            r.run_epoch()
    return {r.name: r for r in runners}


# --- the shared NLL estimator ----------------------------------------------------------------
def stratified_nll(posterior: Callable, decode: Callable, data: Dict[str, torch.Tensor],
                   num_particles: int, seed: int, point_chunk: int = 100,
                   particle_chunk: int = 128) -> torch.Tensor:
    r"""``-log p(x)`` per data point, ``(N,)``, stratified importance sampling.

    ``posterior(batch) -> (logits (B, C), locs (B, C, D), scales (B, C, D))`` is the joint
    q(z | x) (C = 1 for a Gaussian); ``decode(z) -> {m: mean}`` for ``z (..., B, D)``. Draws
    ``n = ceil(num_particles / C)`` particles from every component with positive weight and
    returns ``-log sum_{c, i} (pi_c / n) exp(log p(x|z_ci) + log p(z_ci) - log q(z_ci|x))``:
    unbiased in p(x) for any mixture. Gaussian likelihood with scale ``NOISE``, N(0, I) prior.
    """
    g = torch.Generator().manual_seed(seed)
    n_points = next(iter(data.values())).shape[0]
    out = []
    with torch.no_grad():
        for s in range(0, n_points, point_chunk):
            batch = {m: x[s:s + point_chunk] for m, x in data.items()}
            logits, locs, scales = posterior(batch)
            log_pi = torch.log_softmax(logits, -1)  # (B, C)
            b, c, d = locs.shape
            n = math.ceil(num_particles / c)
            terms = []
            for k in range(c):
                if not torch.isfinite(log_pi[:, k]).any():
                    continue
                for i in range(0, n, particle_chunk):
                    size = min(particle_chunk, n - i)
                    eps = torch.randn(size, b, d, generator=g)
                    z = locs[:, k] + scales[:, k] * eps  # (P, B, D)
                    rec = sum(Normal(mean, NOISE).log_prob(batch[m]).sum(-1)
                              for m, mean in decode(z).items())
                    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
                    log_q = torch.logsumexp(
                        log_pi + Normal(locs, scales).log_prob(z.unsqueeze(-2)).sum(-1), -1)
                    terms.append(log_pi[:, k] - math.log(n) + rec + log_p - log_q)  # (P, B)
            out.append(-torch.logsumexp(torch.cat(terms), 0))
    return torch.cat(out)


# --- memory in a subprocess ------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_bytes() -> int:
    """Current RSS (``VmRSS``)."""
    return 1024 * _status_kib("VmRSS")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0).

    Without it the peak would be the import's (importing MultiVae / pythae peaks above what
    training these small networks needs). ``ru_maxrss`` is not reset by this.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak RSS since :func:`reset_peak_rss` (``VmHWM``)."""
    try:
        return 1024 * _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(spec: dict) -> dict:
    """Run one measurement alone in this (fresh) process; returns its JSON result."""
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    args = argparse.Namespace(**spec["args"])
    kind = spec.get("kind", "MoPoE")
    if spec["what"] == "train":
        train = make_data(args.modalities, args.dim, args.latent_dim, args.train, args.seed)
        nets = Nets(list(train), args.dim, args.hidden, args.latent_dim, args.seed)
        with tempfile.TemporaryDirectory() as out_dir:
            r = make_runner(spec["variant"], kind, nets, args, train, out_dir)
            base = rss_bytes()
            reset_peak_rss()
            for _ in range(spec["epochs"]):
                r.run_epoch()
        return {"extra_mb": (peak_rss_bytes() - base) / 2 ** 20,
                "peak_mb": peak_rss_bytes() / 2 ** 20, "base_mb": base / 2 ** 20}
    if spec["what"] == "stratified":  # one MoPoE step after another, stratified form
        data = make_data(spec["m"], args.dim, args.latent_dim, args.batch, args.seed)
        nets = Nets(list(data), args.dim, args.hidden, args.latent_dim, args.seed)
        model, guide, elbo = ours_setup("MoPoE", nets, form="stratified",
                                        recompute_decoders=spec["recompute"])
        step = SVIStep(model, guide, elbo, make_optimizer(args.lr))
        base = rss_bytes()
        reset_peak_rss()
        times = []
        for i in range(spec["steps"]):
            torch.manual_seed(i)
            t0 = time.perf_counter()
            step(data, full_mask(data))
            times.append(time.perf_counter() - t0)
        return {"seconds": times[-1], "extra_mb": (peak_rss_bytes() - base) / 2 ** 20,
                "peak_mb": peak_rss_bytes() / 2 ** 20, "base_mb": base / 2 ** 20}
    # log_likelihood: points x particles
    n, k = spec["points"], spec["particles"]
    data = make_data(args.modalities, args.dim, args.latent_dim, n, args.seed + 7)
    nets = Nets(list(data), args.dim, args.hidden, args.latent_dim, args.seed)
    small = {m: x[:2] for m, x in data.items()}
    if spec["variant"] == "ours":
        model, guide, _ = ours_setup(kind, nets)
        log_likelihood(model, guide, small, full_mask(small), num_samples=8)  # warm-up
        budget = spec.get("memory_budget")
        call = lambda: -log_likelihood(model, guide, data, full_mask(data),  # noqa: E731
                                       num_samples=k, memory_budget=budget).sum()
    else:
        model = multivae_model(kind, nets, args.dim)
        model.compute_joint_nll(DatasetOutput(data=small), K=8, batch_size_K=4)
        call = lambda: model.compute_joint_nll(DatasetOutput(data=data), K=k,  # noqa: E731
                                               batch_size_K=100)
    torch.manual_seed(0)
    base = rss_bytes()
    reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    value = float(call())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_bytes()
    return {"seconds": wall, "cpu": cpu, "nll_mean": value / n,
            "extra_mb": (peak - base) / 2 ** 20,
            "peak_mb": peak / 2 ** 20, "base_mb": base / 2 ** 20}


def run_child(spec: dict, timeout: float = 600, **env_vars) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    try:
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                              json.dumps(spec)], capture_output=True, text=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else
                f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- MoPoE scaling ---------------------------------------------------------------------------
@contextlib.contextmanager
def memory_cap(extra_bytes: float):
    """Cap the address space at its current size + ``extra_bytes`` (``RLIMIT_AS``), so that an
    oversized case fails with an allocation error here instead of calling the OOM killer
    (MultiVae's MoPoE at M = 12 grew past 24 GB on a 24 GB machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 1024 * _status_kib("VmSize") + int(extra_bytes)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def mopoe_scaling(args, ms: Sequence[int]) -> List[dict]:
    """Step time of MoPoE as M grows: ours (1 drawn subset; all subsets) and MultiVae."""
    rows = []
    skip = {"ours k=1": False, "ours all": False, "MultiVae": False}
    last = {}
    for m in ms:
        data = make_data(m, args.dim, args.latent_dim, args.batch, args.seed)
        nets = Nets(list(data), args.dim, args.hidden, args.latent_dim, args.seed)
        row = {"M": m, "K": 2 ** m - 1}
        variants = {"ours k=1": lambda: OursVariant("MoPoE", nets, args.lr, 1),
                    "ours all": lambda: OursVariant("MoPoE", nets, args.lr, None),
                    "MultiVae": lambda: MVLoopVariant("MoPoE", nets, args.dim, args.lr)}
        for name, build in variants.items():
            # (2^M - 1) decoded rows x hidden x M decoders x ~8 activations, float32
            act_gb = (2 ** m - 1) * args.batch * args.hidden * m * 8 * 4 / 2 ** 30
            if name == "ours all" and act_gb > args.max_gb:
                row[name] = f"skipped (~{act_gb:.0f} GB of activations)"
                continue
            if skip[name] == float("inf"):
                row[name] = "skipped (out of memory at a smaller M)"
                continue
            if skip[name]:
                row[name] = (f"skipped (~{skip[name]:.0f} s expected for "
                             f"{args.scaling_steps + 1} steps)")
                continue
            times = []
            base = rss_bytes()
            reset_peak_rss()
            try:
                with memory_cap(args.max_gb * 2 ** 30):
                    v = build()
                    t_start = time.perf_counter()
                    for i in range(args.scaling_steps + 1):
                        torch.manual_seed(i)
                        t0 = time.perf_counter()
                        v.step(data)
                        dt = time.perf_counter() - t0
                        if i > 0 or dt > args.max_seconds / 3:
                            times.append(dt)
                        if time.perf_counter() - t_start > args.max_seconds / 2 and times:
                            break
            except (MemoryError, RuntimeError) as exc:
                if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
                    raise
                v = None
                gc.collect()
                row[name] = f"out of memory (> {args.max_gb:.0f} GB more)"
                skip[name] = float("inf")
                continue
            row[name + " MiB"] = max(0.0, (peak_rss_bytes() - base) / 2 ** 20)
            t = statistics.median(times)
            row[name] = 1e3 * t
            # next M: growth at least 2^(dM) for the all-subset forms, 4x otherwise
            nxt = ms[ms.index(m) + 1] if ms.index(m) + 1 < len(ms) else None
            if nxt is not None:
                growth = 2 ** (nxt - m) if name != "ours k=1" else (nxt / m) ** 2
                if name in last:  # the growth measured from the previous M, if steeper
                    prev_m, prev_t = last[name]
                    growth = max(growth, (t / prev_t) ** ((nxt - m) / (m - prev_m)))
                if t * growth * (args.scaling_steps + 1) > args.max_seconds:
                    skip[name] = t * growth * (args.scaling_steps + 1)
            last[name] = (m, t)
            del v
            gc.collect()
        print(f"  M={m}: " + ", ".join(
            f"{k} {v:.1f}" + ("" if k.endswith("MiB") else " ms") if isinstance(v, float)
            else f"{k} {v}" for k, v in row.items() if k not in ("M", "K")), flush=True)
        rows.append(row)
    return rows


# --- profiling -------------------------------------------------------------------------------
def step_breakdown(kind: str, nets: Nets, batch, lr: float, rounds: int = 60) -> str:
    """Median ms of one step, interleaved: ours as SVI, as loss + backward (+ one torch Adam),
    its forward alone (no grad); the same for the hand-written loss and MultiVae."""
    o, o2 = OursVariant(kind, nets, lr), OursVariant(kind, nets, lr)
    elbo = ours_setup(kind, nets)[2]
    mask = full_mask(batch)
    o2.activate()
    elbo.differentiable_loss(o2.model, o2.guide, batch, mask)  # registers the parameters
    opt = torch.optim.Adam(list(o2.model.parameters()) + list(o2.guide.parameters()), lr=lr)
    t, mv = TorchVariant(kind, nets, lr), MVLoopVariant(kind, nets, args_dim(batch), lr)

    def ours_loss(update: bool):
        o2.activate()
        opt.zero_grad(set_to_none=True)
        elbo.differentiable_loss(o2.model, o2.guide, batch, mask).backward()
        if update:
            opt.step()

    def ours_forward():
        o2.activate()
        with torch.no_grad():
            elbo.differentiable_loss(o2.model, o2.guide, batch, mask)

    def torch_forward():
        with torch.no_grad():
            t.loss(batch)

    cases = {"ours: SVIStep (fit's step)": lambda: o.step(batch),
             "ours: loss + backward + torch Adam": lambda: ours_loss(True),
             "ours: loss + backward": lambda: ours_loss(False),
             "ours: loss forward (no grad)": ours_forward,
             "torch: step": lambda: t.step(batch),
             "torch: loss forward (no grad)": torch_forward,
             "MultiVae: forward + backward + Adam": lambda: mv.step(batch)}
    if kind in PYRO_KINDS:
        plain = PyroVariant(kind, nets, lr)
        cases["plain Pyro (TraceMeanField_ELBO): step"] = lambda: plain.step(batch)
    if kind != "MMVAE":  # its DReG hooks need gradients

        def mv_forward():
            with torch.no_grad():
                mv.model(DatasetOutput(data=batch), epoch=1)
        cases["MultiVae: forward (no grad)"] = mv_forward
    times = {k: [] for k in cases}
    for r in range(rounds):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            if r >= 5:
                times[k].append(time.perf_counter() - t0)
    rows = [f"\n### {kind}: median ms per step ({rounds - 5} interleaved rounds, batch "
            f"{next(iter(batch.values())).shape[0]})\n", "| case | ms |", "|---|---|"]
    rows += [f"| {k} | {1e3 * statistics.median(v):.1f} |" for k, v in times.items()]
    return "\n".join(rows) + "\n"


def args_dim(batch) -> int:
    return next(iter(batch.values())).shape[-1]


def profile_steps(kind: str, args, train, steps: int = 30, top: int = 25) -> str:
    nets = Nets(list(train), args.dim, args.hidden, args.latent_dim, args.seed)
    gen = torch.Generator().manual_seed(0)
    batch = next(batches(train, args.batch, gen))
    out = io.StringIO()
    out.write(step_breakdown(kind, nets, batch, args.lr))
    for name, v in (("ours (SVIStep)", OursVariant(kind, nets, args.lr)),
                    ("torch (hand-written)", TorchVariant(kind, nets, args.lr)),
                    ("MultiVae (forward + Adam)", MVLoopVariant(kind, nets, args.dim, args.lr))):
        for _ in range(3):
            v.step(batch)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(steps):
            v.step(batch)
        prof.disable()
        dt = (time.perf_counter() - t0) / steps
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(args.sort).print_stats(top)
        out.write(f"\n### {kind}: {name}, {1e3 * dt:.1f} ms/step under cProfile\n\n```\n")
        out.write("\n".join(line for line in s.getvalue().splitlines()
                            if line.strip())[:6000])
        out.write("\n```\n")
    return out.getvalue()


# --- report ----------------------------------------------------------------------------------
def machine() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"nproc {len(os.sched_getaffinity(0))}, {cpu}; load average at "
            f"start {load}")


def commit() -> str:
    """HEAD's short hash, and whether library files had uncommitted changes."""
    cwd = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=cwd).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pyro_mmvae", "models",
                                "guides"], capture_output=True, text=True,
                               cwd=os.path.dirname(cwd)).stdout.strip()
    except OSError:
        return "?"
    return head + (" (library files with uncommitted changes in the working tree)" if dirty
                   else "")


def objective_check(kind: str, args, data, draws: int) -> Dict[str, tuple]:
    """Mean and standard error of each loss per data point at the shared initial weights.

    MultiVae's MVAE and MoPoE losses are batch means, MMVAE's a batch sum; ours and ``torch``
    batch sums (Adam is invariant to that scale up to its epsilon).
    """
    nets = Nets(list(data), args.dim, args.hidden, args.latent_dim, args.seed)
    o = OursVariant(kind, nets, args.lr)
    elbo = ours_setup(kind, nets)[2]
    t = TorchVariant(kind, nets, args.lr)
    mv = MVLoopVariant(kind, nets, args.dim, args.lr)
    b = next(iter(data.values())).shape[0]
    mv_scale = b if kind == "MMVAE" else 1
    plain = PyroVariant(kind, nets, args.lr) if kind in PYRO_KINDS else None
    xs = [data[m] for m in nets.modalities]
    vals = {"ours": [], "torch": [], "MultiVae": [], "plain Pyro": []}
    for r in range(draws):  # with gradients: MultiVae's MMVAE hooks its samples
        torch.manual_seed(r)
        o.activate()
        vals["ours"].append(elbo.differentiable_loss(o.model, o.guide, data,
                                                     full_mask(data)).item() / b)
        vals["torch"].append(t.loss(data).item() / b)
        vals["MultiVae"].append(mv.model(DatasetOutput(data=data), epoch=1).loss.item()
                                / mv_scale)
        if plain is not None:
            plain.store.activate()
            vals["plain Pyro"].append(plain.elbo.differentiable_loss(plain.model, plain.guide,
                                                                     xs).item() / b)
    return {k: (statistics.mean(v), statistics.stdev(v) / math.sqrt(len(v)))
            for k, v in vals.items() if v}


def fmt(x, spec=".3f"):
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--nll-particles", type=int, default=1000)
    p.add_argument("--nll-seeds", type=int, default=3,
                   help="trainings of ours and the MultiVae trainer for the NLL's spread")
    p.add_argument("--scaling-ms", default="2,5,8,10,12")
    p.add_argument("--scaling-steps", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="skip a scaling case expected to take longer than this")
    p.add_argument("--max-gb", type=float, default=8.0,
                   help="memory a MoPoE scaling case may add (address-space cap; an all-subset "
                        "case whose activations would exceed it is skipped beforehand)")
    p.add_argument("--memory-models", default=",".join(MODELS),
                   help="models whose peak RSS is measured (two subprocesses each)")
    p.add_argument("--ll-points", type=int, default=1000)
    p.add_argument("--ll-particles", type=int, default=1000)
    p.add_argument("--stratified-m", type=int, default=10,
                   help="modalities of the stratified-MoPoE memory table")
    p.add_argument("--tables", default="check,train,memory,scaling,stratified,ll",
                   help="comma list of check, train, memory, scaling, stratified, ll")
    p.add_argument("--check-draws", type=int, default=50)
    p.add_argument("--profile", choices=MODELS,
                   help="time one model's step in parts, cProfile it (ours, torch, MultiVae), "
                        "and exit")
    p.add_argument("--sort", default="tottime", help="cProfile sort key for --profile")
    p.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    p.add_argument("--output", help="write the markdown report here")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(child_main(json.loads(args._child))))
        return ""
    if args.quick:
        args.epochs, args.train, args.test = 3, 512, 100
        args.nll_particles, args.scaling_ms, args.scaling_steps = 100, "2,5", 2
        args.ll_points, args.ll_particles, args.max_seconds = 200, 200, 10.0
        args.memory_models, args.check_draws, args.nll_seeds = "MVAE", 10, 2
        args.stratified_m = 5
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # also turns off torch.distributions' checks, for both
    models = [m for m in args.models.split(",") if m]
    tables = set(args.tables.split(","))
    train = make_data(args.modalities, args.dim, args.latent_dim, args.train + args.test,
                      args.seed)
    test = {m: x[args.train:] for m, x in train.items()}
    train = {m: x[:args.train] for m, x in train.items()}

    if args.profile:
        text = profile_steps(args.profile, args, train)
        print(text)
        return text

    started = datetime.datetime.now(datetime.timezone.utc)
    cli_args = list(argv if argv is not None else sys.argv[1:])
    header = [
        "# pyro_mmvae vs MultiVae",
        "",
        f"Command: `python {shlex.join(['benchmarks/bench_vs_multivae.py'] + cli_args)}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}; "
        f"torch {torch.__version__}, pyro {pyro.__version__}, multivae {MULTIVAE_VERSION}.",
        "",
        f"Problem: M = {args.modalities} modalities x {args.dim} dims, {args.train} train / "
        f"{args.test} test points, latent {args.latent_dim}, MLPs {args.hidden}x2, Gaussian "
        f"likelihood scale {NOISE}, beta 1, Adam lr {args.lr}, batch {args.batch}, "
        f"{args.epochs} epochs (first one warm-up), {args.threads} torch thread(s), seed "
        f"{args.seed}, validation off.",
        "",
    ]
    lines = list(header)
    print("\n".join(lines), flush=True)

    if "check" in tables:
        mark = len(lines)
        gen = torch.Generator().manual_seed(args.seed)
        batch = next(batches(train, args.batch, gen))
        lines += [f"## Objectives at the shared initial weights (loss per data point, mean ± s.e. "
                  f"over {args.check_draws} draws, one batch of {args.batch})", "",
                  "| model | ours | torch | MultiVae | plain Pyro |", "|---|---|---|---|---|"]
        for kind in models:
            c = objective_check(kind, args, batch, args.check_draws)
            cells = [f"{c[k][0]:.1f} ± {c[k][1]:.1f}" if k in c else "–"
                     for k in ("ours", "torch", "MultiVae", "plain Pyro")]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
        print("\n".join(lines[mark:]), flush=True)

    if "train" in tables:
        with tempfile.TemporaryDirectory() as out_dir:
            rows = []
            for kind in models:
                t0 = time.perf_counter()
                runners = train_interleaved(kind, args, train, out_dir,
                                            variants=variants_of(kind))
                nll = {}
                for name in VARIANTS:
                    v = runners[name].variant
                    nll[name] = stratified_nll(v.posterior, v.decode, test,
                                               args.nll_particles, args.seed).mean().item()
                seeds = {n: [nll[n]] for n in ("ours", "mv-trainer")}
                for extra in range(1, args.nll_seeds):  # more trainings, for the NLL's spread
                    more = train_interleaved(kind, args, train, out_dir, args.seed + extra,
                                             ("ours", "mv-trainer"))
                    for n, r in more.items():
                        seeds[n].append(stratified_nll(
                            r.variant.posterior, r.variant.decode, test, args.nll_particles,
                            args.seed).mean().item())
                rows.append((kind, runners, nll, seeds))
                print(f"  {kind}: {time.perf_counter() - t0:.0f} s", flush=True)

        def med(xs):
            return statistics.median(xs[1:]) if len(xs) > 1 else xs[0]

        lines += [
            "## Training: s/epoch (median after a warm-up epoch), interleaved",
            "",
            "| model | ours | torch | mv-trainer | mv-loop | ours / mv-trainer | ours / mv-loop "
            "| ours / torch | CPU s/epoch ours | CPU mv-trainer | CPU ours / mv-trainer "
            "| plain Pyro | plain Pyro / torch | ours / plain Pyro |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, r, _, _ in rows:
            w = {n: med(x.wall) for n, x in r.items()}
            c = {n: med(x.cpu) for n, x in r.items()}
            pyro_cells = (f"{w['pyro']:.3f} | {w['pyro'] / w['torch']:.2f} | "
                          f"{w['ours'] / w['pyro']:.2f}" if "pyro" in w else "– | – | –")
            lines.append(
                f"| {kind} | {w['ours']:.3f} | {w['torch']:.3f} | {w['mv-trainer']:.3f} | "
                f"{w['mv-loop']:.3f} | {w['ours'] / w['mv-trainer']:.2f} | "
                f"{w['ours'] / w['mv-loop']:.2f} | {w['ours'] / w['torch']:.2f} | "
                f"{c['ours']:.3f} | {c['mv-trainer']:.3f} | {c['ours'] / c['mv-trainer']:.2f} | "
                f"{pyro_cells} |")
        lines += [
            "",
            f"## Test NLL (nats per data point, {args.test} test points, shared stratified "
            f"estimator, {args.nll_particles} particles)",
            "",
            "| model | ours | torch | mv-trainer | mv-loop | ours − mv-trainer | "
            "ours − mv-loop |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, _, nll, _ in rows:
            lines.append(f"| {kind} | " + " | ".join(f"{nll[v]:.2f}" for v in VARIANTS)
                         + f" | {nll['ours'] - nll['mv-trainer']:+.2f} | "
                         f"{nll['ours'] - nll['mv-loop']:+.2f} |")
        lines += [
            "",
            "`ours`, `torch` and `mv-loop` see the same mini-batches in the same order (and, "
            "where they draw alike, the same noise); `mv-trainer` has its own `DataLoader` "
            f"order. Their spread is the run-to-run noise of {args.epochs} short epochs.",
            ""]
        if args.nll_seeds > 1:
            lines += [f"Test NLL over {args.nll_seeds} trainings (seeds {args.seed}.."
                      f"{args.seed + args.nll_seeds - 1}: initial networks, batch order and "
                      "noise; the same data): mean ± sd, and each run", "",
                      "| model | ours | MultiVae (trainer) | ours runs | MultiVae runs |",
                      "|---|---|---|---|---|"]
            for kind, _, _, seeds in rows:
                o, t = seeds["ours"], seeds["mv-trainer"]
                lines.append(
                    f"| {kind} | {statistics.mean(o):.2f} ± {statistics.stdev(o):.2f} | "
                    f"{statistics.mean(t):.2f} ± {statistics.stdev(t):.2f} | "
                    f"{', '.join(f'{x:.1f}' for x in o)} | {', '.join(f'{x:.1f}' for x in t)} |")
            lines.append("")
        print("\n".join(lines[len(header):]), flush=True)

    if "memory" in tables:
        mark = len(lines)
        lines += ["## Peak RSS while training (fresh subprocess each, 2 epochs)", "",
                  "| model | ours: peak − start (MiB) | MultiVae trainer (MiB) | ours / MultiVae "
                  "| ours peak | MultiVae peak |", "|---|---|---|---|---|---|"]
        spec_args = vars(args).copy()
        spec_args.pop("_child", None)
        for kind in [m for m in args.memory_models.split(",") if m in models]:
            res = {v: run_child({"what": "train", "kind": kind, "variant": v, "epochs": 2,
                                 "args": spec_args}) for v in ("ours", "mv-trainer")}
            if any("error" in x for x in res.values()):
                lines.append(f"| {kind} | {res['ours']} | {res['mv-trainer']} | | | |")
                continue
            o, t = res["ours"], res["mv-trainer"]
            lines.append(f"| {kind} | {o['extra_mb']:.1f} | {t['extra_mb']:.1f} | "
                         f"{o['extra_mb'] / max(t['extra_mb'], 1e-9):.2f} | {o['peak_mb']:.0f} | "
                         f"{t['peak_mb']:.0f} |")
        lines.append("")
        print("\n".join(lines[mark:]), flush=True)

    if "stratified" in tables and "MoPoE" in models:
        mark = len(lines)
        m = args.stratified_m
        lines += [f"## Stratified MoPoE at M = {m}, batch {args.batch}: decoder activations kept "
                  "or recomputed (fresh subprocess each)", "",
                  "`MixtureMultimodalELBO(form=\"stratified\", recompute_decoders=...)`: every "
                  f"one of the {2 ** m - 1} subset components is decoded for every data point. "
                  "Peak RSS over the RSS before the first step, with the default glibc (which "
                  "keeps freed memory) and with `MALLOC_MMAP_THRESHOLD_=65536` (freed blocks "
                  "returned: close to the live tensors; slower, one step).", "",
                  "| decoders | s per step | extra MiB | extra MiB, freed blocks returned | "
                  "process peak MiB, freed blocks returned |", "|---|---|---|---|---|"]
        spec_args = vars(args).copy()
        spec_args.pop("_child", None)
        for recompute in (False, True):
            spec = {"what": "stratified", "m": m, "recompute": recompute, "steps": 2,
                    "args": spec_args}
            a = run_child(spec, timeout=1200)
            b = run_child({**spec, "steps": 1}, timeout=1200, MALLOC_MMAP_THRESHOLD_="65536")
            name = "recomputed" if recompute else "kept"
            if "error" in a or "error" in b:
                lines.append(f"| {name} | {a} | {b} | | |")
                continue
            lines.append(f"| {name} | {a['seconds']:.1f} | {a['extra_mb']:.0f} | "
                         f"{b['extra_mb']:.0f} | {b['peak_mb']:.0f} |")
        lines.append("")
        print("\n".join(lines[mark:]), flush=True)

    if "scaling" in tables:
        mark = len(lines)
        ms = [int(m) for m in args.scaling_ms.split(",")]
        rows = mopoe_scaling(args, ms)
        lines += [f"## MoPoE step time (ms, forward + backward + Adam, batch {args.batch}, median "
                  f"of {args.scaling_steps} steps after one warm-up)", "",
                  "| M | subsets | ours, 1 drawn subset | ours, all subsets | MultiVae | "
                  "ours k=1 / MultiVae | peak MiB: ours k=1 | ours all | MultiVae |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            a, b = r.get("ours k=1"), r.get("MultiVae")
            ratio = f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else ""
            mem = " | ".join(fmt(r.get(n + " MiB", ""), ".0f")
                             for n in ("ours k=1", "ours all", "MultiVae"))
            lines.append(f"| {r['M']} | {r['K']} | {fmt(a, '.1f')} | "
                         f"{fmt(r.get('ours all'), '.1f')} | {fmt(b, '.1f')} | {ratio} | "
                         f"{mem} |")
        lines += ["", "Peak MiB: peak RSS (`VmHWM`, reset before each case) minus the RSS "
                  "before it, in this process (memory freed by an earlier case and kept by the "
                  f"allocator is not counted again). Each case runs under an address-space cap "
                  f"of {args.max_gb:.0f} GB over the process's size (`--max-gb`).", ""]
        print("\n".join(lines[mark:]), flush=True)

    if "ll" in tables:
        mark = len(lines)
        spec_args = vars(args).copy()
        spec_args.pop("_child", None)
        lines += [f"## Joint log-likelihood, {args.ll_points} points x {args.ll_particles} "
                  "particles (fresh subprocess each, untrained MVAE networks)", "",
                  "| | seconds | CPU s | peak RSS − RSS before the call (MiB) | NLL / point |",
                  "|---|---|---|---|---|"]
        for variant, budget, label in (
                ("ours", None, "ours `log_likelihood` (default `memory_budget`, 256 MiB)"),
                ("ours", 64 * 2 ** 20, "ours `log_likelihood(memory_budget=64 MiB)`"),
                ("mv", None, "MultiVae `MVAE.compute_joint_nll(K, batch_size_K=100)`")):
            r = run_child({"what": "ll", "kind": "MVAE", "variant": variant,
                           "points": args.ll_points, "particles": args.ll_particles,
                           "memory_budget": budget, "args": spec_args})
            if "error" in r:
                lines.append(f"| {label} | {r['error']} | | | |")
            else:
                lines.append(f"| {label} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
                             f"{r['extra_mb']:.1f} | {r['nll_mean']:.2f} |")
        lines.append("")
        print("\n".join(lines[mark:]), flush=True)

    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    lines.append(f"Run time {elapsed:.0f} s; load average at the end "
                 f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    text = "\n".join(lines) + "\n"
    print(lines[-1])
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
