"""Posterior inspection with ArviZ: a trained guide's q(z | x_S) as an ``arviz.InferenceData``,
checked against the exact posterior of the trained linear-Gaussian model.

Run from the repository root::

    python docs/tutorials/arviz_posterior.py --output-dir arviz-demo

:func:`pyro_mmvae.diagnostics.to_inference_data` draws latents from the guide for every data
point, replays the model at them, and returns the groups ``posterior`` (``z``),
``posterior_predictive`` (reconstructions where a modality is observed, cross-generations
where it is not), ``log_likelihood``, ``observed_data``, ``constant_data`` (the masks) and
``sample_stats`` (``lp``, ``log_q`` and the importance weight ``log_weight``). Everything runs
offline.
"""

import argparse
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.diagnostics import to_inference_data
from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import MaskedMultimodalELBO
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.train import fit

LATENT_DIM = 2


def main(argv=None):
    """Train briefly, convert to ArviZ, compare with the exact posterior; return a summary."""
    import arviz as az  # imported here: it takes seconds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--num-points", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=500, help="draws per data point")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where to write posterior.png (default: no figure)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    pyro.set_rng_seed(args.seed)  # the networks' initialisation

    ds = shared_latent_study(num_points=args.num_points, num_modalities=3,
                             latent_dim=LATENT_DIM, dim_range=(5, 10), seed=args.seed)
    # the linear-Gaussian model has a closed-form posterior p(z | x_S) for its (learned)
    # parameters: the reference for the guide's q(z | x_S) below
    model = LinearGaussianModel(ds.modality_dims, latent_dim=LATENT_DIM)
    guide = MultimodalGuide({m: expert_encoder(d, LATENT_DIM, hidden=(32,))
                             for m, d in ds.modality_dims.items()}, PoE())
    history = fit(model, guide, MaskedMultimodalELBO(), ds.data, epochs=args.epochs,
                  batch_size=100, lr=1e-2, seed=args.seed, progress=False)
    print(f"trained: loss per data point {history['loss'][0]:.3f} -> "
          f"{history['loss'][-1]:.3f}")

    # ten test points; m2 is not observed for the first five (it is then cross-generated)
    n = 10
    batch = {m: x[:n] for m, x in ds.data.items()}
    mask = {m: torch.ones(n, dtype=torch.bool) for m in batch}
    mask["m2"][:5] = False
    with torch.no_grad():
        idata = to_inference_data(model, guide, batch, mask, num_samples=args.num_samples)
    print(idata)
    summary = az.summary(idata, var_names=["z"], kind="stats")
    print(summary.head(6))

    # the guide's posterior means against the exact posterior p(z | x_S)
    with torch.no_grad():
        exact = model.exact_posterior(batch, mask).mean.numpy()
    guide_mean = idata.posterior["z"].mean(("chain", "draw")).values
    error = float(np.abs(guide_mean - exact).max())
    print(f"largest |E_q[z] - E_p[z | x_S]| over the {n} points: {error:.3f}")

    # Pareto k-hat of the importance weights p/q: a check of the guide as a proposal
    log_weight = idata.sample_stats["log_weight"].stack(__sample__=("chain", "draw"))
    _, khat = az.psislw(log_weight)
    print("Pareto k-hat per data point:", np.round(khat.values, 2))

    if args.output_dir is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        args.output_dir.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(8, 3))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        for j, ax in enumerate(axes):
            az.plot_posterior(idata, var_names=["z"], coords={"datapoint": [0], "z_dim": [j]},
                              ax=ax, hdi_prob=0.9, textsize=8)
            ax.axvline(exact[0, j], color="k", ls="--", label="exact mean")
            ax.set_title(f"z[{j}] of data point 0 (m2 missing)")
        fig.tight_layout()
        fig.savefig(args.output_dir / "posterior.png")
        print("wrote", args.output_dir / "posterior.png")
    return {"loss": history["loss"], "max_mean_error": error, "khat": khat.values,
            "groups": list(idata.groups())}


if __name__ == "__main__":
    main()
