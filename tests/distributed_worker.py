"""Data-parallel runs for the tests: ``run_processes(world, spec)`` trains (or evaluates)
:func:`problem`'s model on ``world`` gloo processes spawned here and returns every process's
result; ``train(spec)`` and ``evaluate(spec)`` are the same on this process alone."""

import os
import tempfile
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.nn import PyroModule
from torch import nn

from pyro_mmvae import observe
from pyro_mmvae.guides import MoE, MoPoE, MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import (MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO)
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.protocol import num_points
from pyro_mmvae.train import TrainingDiverged, fit
from pyro_mmvae.train.distributed import Distributed

BOUNDS = {"masked": lambda: MaskedMultimodalELBO(num_particles=2),
          "mixture": lambda: MixtureMultimodalELBO(form="stratified"),
          "mixture-average": lambda: MixtureMultimodalELBO(form="average", num_subsets=1),
          # random subsets leave some components unweighted in a shard but not in the batch
          "mixture-iid": lambda: MixtureMultimodalELBO(form="stratified", masking="iid_half"),
          "subsampled": lambda: SubsampledMultimodalELBO(num_subsets=1)}
AGGREGATORS = {"poe": PoE, "moe": MoE, "mopoe": MoPoE}


def image_problem(spec):
    """Two 1 x 8 x 8 image modalities and the command line's image model and guide
    (convolutional encoders and decoders, Laplace likelihood, SumPooling) in float64."""
    from pyro_mmvae.config import RunConfig
    from pyro_mmvae.registry import PreparedData
    from pyro_mmvae.runs import build_guide, build_model

    torch.manual_seed(0)
    data = {m: torch.rand(48, 1, 8, 8, dtype=torch.float64) for m in ("left", "right")}
    prepared = PreparedData(data, {m: x[:4] for m, x in data.items()},
                            {m: "image" for m in data})
    config = RunConfig(dataset="polydigits", latent_dim=2, aggregator="sumpooling",
                       aggregator_width=8, channels=(4,), image_size=8)
    torch.manual_seed(spec.get("init_seed", 1))
    model = build_model(config, prepared).double()
    guide = build_guide(config, prepared).double()
    return data, None, model, guide, BOUNDS[spec["bound"]]()


class HandWrittenModel(PyroModule):
    """A user's model as the README writes one: plain ``(N,)`` masks (the bounds call it per
    subset and particle), ``observe`` sites, linear decoders."""

    def __init__(self, dims, latent):
        super().__init__()
        self.latent = latent
        self.decoders = nn.ModuleDict({m: nn.Linear(latent, d) for m, d in dims.items()})

    def forward(self, data, mask):
        with pyro.plate("data", num_points(data, mask)):
            loc = torch.zeros(self.latent, dtype=torch.float64)
            z = pyro.sample("z", pyro.distributions.Normal(loc, 1.0).to_event(1))
            for m, decoder in self.decoders.items():
                observe(m, pyro.distributions.Normal(decoder(z), 1.0).to_event(1), data, mask)


def problem(spec):
    """Data, mask, model, guide and bound of ``spec``: a 3-modality linear-Gaussian problem
    in float64, the default dtype of the suite (``spec["missing"]``: about a third of the
    entries unobserved; ``spec["hand_written"]``: :class:`HandWrittenModel` for the model;
    ``spec["image"]``: :func:`image_problem`)."""
    if spec.get("image"):
        return image_problem(spec)
    torch.manual_seed(0)
    dims = {"a": 3, "b": 4, "c": 2}
    data = {m: torch.randn(48, d, dtype=torch.float64) for m, d in dims.items()}
    mask = None
    if spec.get("missing"):
        keep = torch.rand(48, 3) > 0.35
        keep[torch.arange(48), torch.randint(3, (48,))] = True  # every point observes one
        mask = {m: keep[:, i] for i, m in enumerate(dims)}
    torch.manual_seed(spec.get("init_seed", 1))
    model = (HandWrittenModel(dims, 2) if spec.get("hand_written")
             else LinearGaussianModel(dims, 2)).double()
    guide = MultimodalGuide({m: expert_encoder(d, 2, (8,)) for m, d in dims.items()},
                            AGGREGATORS[spec.get("aggregator", "poe")]()).double()
    return data, mask, model, guide, BOUNDS[spec["bound"]]()


def train(spec, place=None):
    """``fit`` of :func:`problem` (``spec``: ``bound``, ``epochs``, ``batch_size``,
    ``run_dir``, ``resume``, ``nan_at`` and ``nan_rank``: a non-finite loss on that process
    after ``nan_at`` evaluations); returns ``{"state", "history"}`` or the
    divergence's ``{"diverged": message, "checkpoint", "history"}``, and ``"grads"``: every
    step's gradients by parameter name."""
    data, mask, model, guide, loss = problem(spec)
    rank = 0 if place is None else place.rank
    if spec.get("nan_at") is not None and spec.get("nan_rank", rank) == rank:
        # a non-finite loss from this step on (counting the registration pass as step 0)
        original, counter = loss.differentiable_loss, [0]

        def poisoned(*args):
            value = original(*args)
            counter[0] += 1
            return value * float("nan") if counter[0] > spec["nan_at"] else value
        loss.differentiable_loss = poisoned
    grads = []  # every step's gradients, by parameter name, as the optimiser sees them

    def record(params):
        names = pyro.get_param_store().param_name
        grads.append({names(p): p.grad.clone() for p in params if p.grad is not None})
    kwargs = dict(mask=mask, gradient_transform=record, epochs=spec.get("epochs", 3),
                  batch_size=spec.get("batch_size", 12), lr=spec.get("lr", 0.02),
                  seed=spec.get("seed", 0), progress=False, run_dir=spec.get("run_dir"),
                  resume_from=spec.get("resume"), val_fraction=spec.get("val_fraction"),
                  early_stopping=spec.get("early_stopping"),
                  distributed=False if place is None else place)
    try:
        history = fit(model, guide, loss, data, **kwargs)
    except TrainingDiverged as err:
        return {"diverged": str(err), "checkpoint": str(err.checkpoint),
                "history": err.history, "grads": grads}
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update({f"guide.{k}": v.clone() for k, v in guide.state_dict().items()})
    return {"state": state, "history": history, "grads": grads}


def evaluate(spec, place=None):
    """Per-point log-likelihoods of :func:`problem`'s (untrained) model, the joint and
    ``log p(x_b | x_a)`` with 16 particles in chunks of 4, gathered over the processes; and
    its conditional coherence, counts summed over the processes."""
    from pyro_mmvae.eval import log_likelihood
    from pyro_mmvae.train.distributed import gather_rows

    data, mask, model, guide, _ = problem(spec)
    pyro.set_rng_seed(5)
    joint = gather_rows(lambda d, m: log_likelihood(model, guide, d, m, num_samples=16,
                                                    chunk_size=4), data, mask, place)
    given = gather_rows(lambda d, m: log_likelihood(model, guide, d, m, given="a",
                                                    targets="b", num_samples=16,
                                                    chunk_size=4), data, mask, place)
    from pyro_mmvae.eval import conditional_coherence
    from pyro_mmvae.train.distributed import all_reduce_sum, local_shard

    labels = (data["a"].sum(-1) > 0).long()  # a label each point's modalities can tell
    classifiers = {m: (lambda x: (x.sum(-1) > 0).long()) for m in data}
    with local_shard(data, mask, place) as (x, x_mask, rows):
        coherence = conditional_coherence(
            model, guide, x, labels[rows], classifiers, mask=x_mask, batch_size=48,
            reduce=None if place is None else all_reduce_sum)
    return {"joint": joint, "conditional": given, "coherence": coherence}


def _worker(rank, world, init_file, spec, out):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # as the suite's processes (conftest.py)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        pyro.clear_param_store()
        task = evaluate if spec.get("task") == "evaluate" else train
        result = task(spec, Distributed(rank, world))
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()  # every process is done before any leaves the group
    finally:
        dist.destroy_process_group()


def run_processes(world, spec):
    """Rank 0's and every rank's results of ``train(spec)`` on ``world`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_worker, args=(world, init_file, spec, tmp), nprocs=world,
                           start_method="spawn")
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False)
                for r in range(world)]
