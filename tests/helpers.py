"""Shared fixtures-as-functions for the test suite."""

import importlib.util
import sys
from pathlib import Path

import torch

from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import ExactPosteriorGuide, LinearGaussianModel
from pyro_mmvae.protocol import num_points

DIMS = {"a": 3, "b": 4, "c": 2}
ROOT = Path(__file__).resolve().parents[1]


def linear_problem(n=8, dims=DIMS, latent_dim=2, seed=0, noise=1.0):
    """A random linear-Gaussian model and data drawn from it."""
    torch.manual_seed(seed)
    model = LinearGaussianModel(dims, latent_dim, noise_scale=noise)
    z = torch.randn(n, latent_dim)
    data = {}
    for m in dims:
        w, b, s = model.linear_parameters(m)
        data[m] = (z @ w.T + b + s * torch.randn(n, dims[m])).detach()
    return model, data


def make_guide(aggregator=None, dims=DIMS, latent_dim=2, hidden=(8,)):
    return MultimodalGuide({m: expert_encoder(d, latent_dim, hidden) for m, d in dims.items()},
                           aggregator if aggregator is not None else PoE())


class RowCounter(torch.nn.Module):
    """A network that counts the rows (entries of its input's leading dims) it is called on."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, z):
        self.rows += z[..., 0].numel()
        return self.net(z)


def counted(model):
    """``model`` with every decoder's network wrapped in a :class:`RowCounter`."""
    for dec in model.decoders.values():
        dec.net = RowCounter(dec.net)
    return model


def rows_decoded(model):
    return {m: dec.net.rows for m, dec in model.decoders.items()}


def reset(model):
    for dec in model.decoders.values():
        dec.net.rows = 0


def random_mask(data, p=0.6, seed=1, at_least_one=True):
    g = torch.Generator().manual_seed(seed)
    n = num_points(data)
    mask = {m: torch.rand(n, generator=g) < p for m in data}
    if at_least_one:
        first = next(iter(data))
        none = ~torch.stack(list(mask.values())).any(0)
        mask[first] = mask[first] | none
    return mask


ExactPrivatePosteriorGuide = ExactPosteriorGuide  # the library's handles private latents


def private_problem(n=8, dims=DIMS, latent_dim=2, private_dim=2, seed=0):
    """A random linear-Gaussian model with private latents and data drawn from it."""
    torch.manual_seed(seed)
    model = LinearGaussianModel(dims, latent_dim, private_dim=private_dim)
    u = torch.randn(n, model.stacked_dim)
    data = {}
    for m in dims:
        a, b, s = model.linear_parameters(m)
        data[m] = (u @ a.T + b + s * torch.randn(n, dims[m])).detach()
    return model, data


def load_script(name, folder="experiments"):
    """Import ``<folder>/<name>.py`` (``experiments`` or ``benchmarks``, not packages) as a
    module, with its folder on ``sys.path`` as when it runs as a script (``python
    experiments/<name>.py``), so that its sibling imports (``_multimodal_common``) resolve."""
    path = ROOT / folder
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    added = str(path) not in sys.path
    if added:
        sys.path.insert(0, str(path))
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(str(path))
    return module


def clamped_adam_loop(loss, model, guide, data, mask=None, *, epochs, batch_size, lr, limit,
                      generator, eval_fn=None):
    """The hand-written loop of the aggregation experiments before they used ``fit`` (the
    reference that ``fit(seed=None, generator=g, gradient_transform=clamp_gradients(limit))``
    must reproduce): Adam over every trainable parameter on the summed loss, NaN gradients set
    to 0 and each element clipped to ``[-limit, limit]``, batches shuffled by ``generator``
    with the incomplete last one dropped, the global RNG as the caller left it. Returns
    ``fit``'s history keys ``epoch``, ``loss`` (per data point), ``eval``, ``steps_per_epoch``."""
    params = [p for p in list(model.parameters()) + list(guide.parameters()) if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
    n = len(next(iter(data.values())))
    steps = n // batch_size
    history = {"epoch": [], "loss": [], "eval": [], "steps_per_epoch": steps}
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            optim.zero_grad(set_to_none=True)
            batch_mask = None if mask is None else {m: o[idx] for m, o in mask.items()}
            value = loss.differentiable_loss(model, guide, {m: x[idx] for m, x in data.items()},
                                             batch_mask)
            value.backward()
            for p in params:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0).clamp_(-limit, limit)
            optim.step()
            total += value.item()
        history["epoch"].append(epoch)
        history["loss"].append(total / (steps * batch_size))
        if eval_fn is not None:
            history["eval"].append(eval_fn(epoch))
    return history


def linear_model_and_guide(data, latent_dim=2, hidden=(16,), seed=0):
    """A :class:`LinearGaussianModel` and a PoE guide of MLP experts for ``data``, initialised
    from ``seed``."""
    torch.manual_seed(seed)
    dims = {m: x.shape[1] for m, x in data.items()}
    return (LinearGaussianModel(dims, latent_dim),
            MultimodalGuide({m: expert_encoder(d, latent_dim, hidden) for m, d in dims.items()},
                            PoE()))


def module_state(module):
    """A detached copy of ``module.state_dict()``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def with_width(argv, width):
    """``train`` options ``argv`` and ``--aggregator-width width`` where it applies: to the
    learnable aggregator they name (or their dataset's default one), not to PoE / MoE / MoPoE,
    for which it is an error."""
    from pyro_mmvae import cli

    argv = list(argv)
    config = cli.config_from_argv(argv)
    return argv + ([] if "aggregator_width" in config.not_applying()
                   else ["--aggregator-width", str(width)])
