"""A custom model and guide, end to end: hand-written Pyro programs that follow the protocol,
trained with :func:`pyro_mmvae.train.fit` under the masked bound of Hirt et al.

Run from the repository root::

    python docs/tutorials/custom_model.py --epochs 10

The data are the linear-Gaussian shared-latent study: three modalities ``m0, m1, m2``, each
``x_m = W_m z + b_m + noise`` with a 2-dimensional shared latent ``z``.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_mmvae import observe
from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.infer import MaskedMultimodalELBO
from pyro_mmvae.protocol import num_points
from pyro_mmvae.train import fit


class Model(PyroModule):
    """p(z) p(x_m | z) for each modality: one linear decoder per modality, unit noise."""

    def __init__(self, modality_dims, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim
        self.decoders = nn.ModuleDict({m: nn.Linear(latent_dim, d)
                                       for m, d in modality_dims.items()})

    def forward(self, data, mask=None):
        n = num_points(data, mask)
        with pyro.plate("data", n):
            loc = torch.zeros(self.latent_dim)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            for m, decoder in self.decoders.items():
                # observed where mask[m] is True, generated elsewhere
                observe(m, dist.Normal(decoder(z), 1.0).to_event(1), data, mask)


class Guide(PyroModule):
    """q(z | x_S): a product of the prior and one Gaussian expert per *observed* modality."""

    def __init__(self, modality_dims, latent_dim, hidden=32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
            for m, d in modality_dims.items()})

    def forward(self, data, mask=None):
        n = num_points(data, mask)
        precision = torch.ones(n, self.latent_dim)  # the prior expert N(0, I)
        weighted = torch.zeros(n, self.latent_dim)
        for m, encoder in self.encoders.items():
            if m not in data:
                continue  # not observed at all
            observed = torch.ones(n) if mask is None or m not in mask else mask[m].float()
            loc, raw = encoder(data[m]).chunk(2, dim=-1)
            expert_precision = softplus(raw).add(1e-3).pow(-2) * observed.unsqueeze(-1)
            precision = precision + expert_precision
            weighted = weighted + expert_precision * loc
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(weighted / precision, precision.rsqrt()).to_event(1))


def main(argv=None):
    """Train the hand-written model and guide; return ``fit``'s history."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--num-points", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    pyro.set_rng_seed(args.seed)  # the networks' initialisation
    ds = shared_latent_study(num_points=args.num_points, num_modalities=3, latent_dim=2,
                             dim_range=(5, 10), seed=args.seed)
    model = Model(ds.modality_dims, latent_dim=2)
    guide = Guide(ds.modality_dims, latent_dim=2)
    history = fit(model, guide, MaskedMultimodalELBO(), ds.data, epochs=args.epochs,
                  batch_size=args.batch_size, lr=1e-2, seed=args.seed, progress=False)
    for epoch, loss in zip(history["epoch"], history["loss"]):
        print(f"epoch {epoch:3d}: loss per data point {loss:9.3f}")

    # cross-generation: encode m0 only, generate m1 and m2 from q(z | x_m0)
    mask = {m: torch.zeros(5, dtype=torch.bool) for m in ds.data}
    mask["m0"][:] = True
    batch = {m: x[:5] for m, x in ds.data.items()}
    predictive = pyro.infer.Predictive(model, guide=guide, num_samples=1)
    with torch.no_grad():
        generated = predictive(batch, mask)["x_m1"]
    print("x_m1 generated from x_m0:", tuple(generated.shape))
    return history


if __name__ == "__main__":
    main()
