"""Missing modalities: train on data where each modality is missing for some data points,
then score the conditional log-likelihood of one modality given another.

Run from the repository root::

    python docs/tutorials/missing_modalities.py --epochs 20

Missing entries come as NaN, the usual numpy / pandas form;
:func:`pyro_mmvae.protocol.from_nan` turns them into the protocol's ``(data, mask)``: finite
placeholders and a boolean mask per modality, True where observed. The bounds, ``fit`` and the
evaluation functions then use only what the mask marks as observed.
"""

import argparse

import numpy as np
import pyro
import torch

from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import MaskedMultimodalELBO
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.protocol import from_nan
from pyro_mmvae.train import fit

LATENT_DIM = 2
NOISE = 0.5  # the noise scale of every modality, simulated and modelled


def with_missing(arrays, fraction, rng):
    """NaN out ``fraction`` of the data points of every modality, keeping at least one
    modality per data point."""
    names = list(arrays)
    n = len(next(iter(arrays.values())))
    missing = rng.random((n, len(names))) < fraction
    missing[missing.all(axis=1), 0] = False  # every data point keeps something
    out = {}
    for j, m in enumerate(names):
        x = np.array(arrays[m], dtype=float)
        x[missing[:, j]] = np.nan
        out[m] = x
    return out


def main(argv=None):
    """Train on partly observed data; return a summary dict."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--num-points", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--missing", type=float, default=0.4, help="fraction missing per modality")
    p.add_argument("--num-samples", type=int, default=200, help="importance samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    pyro.set_rng_seed(args.seed)  # the networks' initialisation

    ds = shared_latent_study(num_points=args.num_points, num_modalities=3,
                             latent_dim=LATENT_DIM, dim_range=(5, 10), noise_scale=NOISE,
                             seed=args.seed)
    rng = np.random.default_rng(args.seed)
    arrays = with_missing({m: x.numpy() for m, x in ds.data.items()}, args.missing, rng)
    data, mask = from_nan(arrays)
    for m in data:
        print(f"{m}: observed for {int(mask[m].sum())} of {len(mask[m])} data points")

    model = LinearGaussianModel(ds.modality_dims, latent_dim=LATENT_DIM, noise_scale=NOISE)
    guide = MultimodalGuide({m: expert_encoder(d, LATENT_DIM, hidden=(32,))
                             for m, d in ds.modality_dims.items()}, PoE())
    history = fit(model, guide, MaskedMultimodalELBO(), data, mask=mask, epochs=args.epochs,
                  batch_size=args.batch_size, lr=1e-2, seed=args.seed, progress=False)
    print(f"loss per data point: epoch 1 {history['loss'][0]:.3f}, "
          f"epoch {history['epoch'][-1]} {history['loss'][-1]:.3f}")

    # log p(x_m1 | x_m0) and log p(x_m1), importance sampled, where both are observed
    with torch.no_grad():
        conditional = log_likelihood(model, guide, data, mask, given="m0", targets="m1",
                                     num_samples=args.num_samples)
        marginal = log_likelihood(model, guide, data, mask, targets="m1",
                                  num_samples=args.num_samples)
        # the linear-Gaussian model has them in closed form: a check of the estimates
        both = mask["m0"] & mask["m1"]
        none = torch.zeros_like(both)
        exact_pair = model.exact_log_likelihood(data, {"m0": both, "m1": both, "m2": none})
        exact_m0 = model.exact_log_likelihood(data, {"m0": both, "m1": none, "m2": none})
        exact_m1 = model.exact_log_likelihood(data, {"m0": none, "m1": both, "m2": none})
    both = both.numpy()
    summary = {"loss": history["loss"], "scored": int(both.sum()),
               "conditional": float(np.mean(conditional.numpy()[both])),
               "marginal": float(np.mean(marginal.numpy()[both])),
               "exact_conditional": float(np.mean((exact_pair - exact_m0).numpy()[both])),
               "exact_marginal": float(np.mean(exact_m1.numpy()[both]))}
    print(f"over the {summary['scored']} points with m0 and m1 observed (exact in brackets):")
    print(f"  log p(x_m1 | x_m0) = {summary['conditional']:.3f} "
          f"({summary['exact_conditional']:.3f})")
    print(f"  log p(x_m1)        = {summary['marginal']:.3f} ({summary['exact_marginal']:.3f})")
    return summary


if __name__ == "__main__":
    main()
