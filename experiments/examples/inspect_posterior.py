r"""Inspect a trained multimodal VAE's posterior with ArviZ.

Trains a linear-Gaussian multimodal VAE (:class:`pyro_mmvae.models.LinearGaussianModel`, a
product-of-experts :class:`pyro_mmvae.guides.MultimodalGuide`) with the masked bound
(:class:`pyro_mmvae.MaskedMultimodalELBO`) on the library's shared-latent simulation
(:func:`pyro_mmvae.data.shared_latent_study`), then converts the guide's posterior on a few held-out
data points to an :class:`arviz.InferenceData` with :func:`pyro_mmvae.diagnostics.to_inference_data`
and

- prints ``az.summary`` of the latent ``z`` for those points, next to the exact posterior
  :math:`p(z\mid x_S)` of the trained linear model (which a perfect guide would match),
- hides the modalities named by ``--hide`` for those points, so the ``posterior_predictive``
  group holds cross-modal generations for them (their RMSE to the held-out truth is printed),
- writes into ``--output``: ``summary.csv``, ``pair_plot.png`` (``az.plot_pair`` of ``z`` for
  the first point) and ``posterior.png`` (``az.plot_posterior`` of ``z`` for the first point).

Run from the repository root::

    python experiments/examples/inspect_posterior.py --epochs 70 --output runs/inspect

``--epochs 1`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.filterwarnings("ignore", message=".*ArviZ is undergoing", category=FutureWarning)
    import arviz as az  # noqa: E402

from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder  # noqa: E402
from pyro_mmvae.models import LinearGaussianModel  # noqa: E402
from pyro_mmvae import MaskedMultimodalELBO  # noqa: E402
from pyro_mmvae.data import shared_latent_study  # noqa: E402
from pyro_mmvae.diagnostics import to_inference_data  # noqa: E402
from pyro_mmvae.train import fit  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=70,
                   help="training epochs (pyro_mmvae.train.fit)")
    p.add_argument("--output", type=Path, default=Path("runs/inspect_posterior"),
                   help="folder for summary.csv and the PNGs")
    p.add_argument("--num-points", type=int, default=1000, help="simulated data points")
    p.add_argument("--num-modalities", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--num-samples", type=int, default=1000, help="guide draws per data point")
    p.add_argument("--datapoints", type=int, default=3, help="held-out points to inspect")
    p.add_argument("--hide", nargs="*", default=None, metavar="MODALITY",
                   help="modalities masked out for the inspected points (default: the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sim = shared_latent_study(num_points=args.num_points, num_modalities=args.num_modalities,
                              latent_dim=args.latent_dim, seed=args.seed)
    modalities = list(sim.data)
    hide = [modalities[-1]] if args.hide is None else args.hide
    unknown = sorted(set(hide) - set(modalities))
    if unknown:
        raise SystemExit(f"--hide: unknown modality '{unknown[0]}'; the modalities are "
                         f"{modalities}")
    k = args.datapoints
    train_data = {m: x[:-k].to(device) for m, x in sim.data.items()}
    test = {m: x[-k:].to(device) for m, x in sim.data.items()}

    dims = {m: x.shape[-1] for m, x in sim.data.items()}
    model = LinearGaussianModel(dims, args.latent_dim).to(device)
    guide = MultimodalGuide({m: expert_encoder(d, args.latent_dim, hidden=(64,))
                             for m, d in dims.items()}, PoE()).to(device)
    history = fit(model, guide, MaskedMultimodalELBO(), train_data, epochs=args.epochs,
                  batch_size=min(args.batch_size, len(train_data[modalities[0]])), lr=args.lr,
                  seed=args.seed, device=device, progress=False)
    print(f"trained {args.epochs} epochs of the masked bound; last epoch's loss per point "
          f"{history['loss'][-1]:.2f}" if history["loss"] else "trained nothing (0 epochs)")

    # the inspected points: hide some modalities (their data stays, for the RMSE below)
    mask = {m: torch.full((k,), m not in hide, dtype=torch.bool, device=device)
            for m in modalities}
    model.eval()
    guide.eval()
    latent_names = [f"z{i}" for i in range(args.latent_dim)]
    idata = to_inference_data(model, guide, test, mask, num_samples=args.num_samples,
                              coords={"z_dim": latent_names})
    print(idata)

    datapoints = list(range(k))
    summary = az.summary(idata, var_names=["z"], kind="stats", coords={"datapoint": datapoints})
    with torch.no_grad():
        exact = model.exact_posterior(test, mask)
    summary["exact_mean"] = exact.mean.cpu().numpy().reshape(-1)
    summary["exact_sd"] = exact.variance.sqrt().cpu().numpy().reshape(-1)
    print(f"\nq(z | x_S) with {hide} hidden, against the exact posterior of the trained model:")
    print(summary.to_string())
    args.output.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.output / "summary.csv")

    for m in hide:  # cross-modal generations of the hidden modalities
        pred = idata.posterior_predictive[f"x_{m}"].mean(("chain", "draw")).values
        rmse = float(np.sqrt(np.mean((pred - test[m].cpu().numpy()) ** 2)))
        print(f"cross-generated x_{m} (hidden): RMSE of the predictive mean to the truth "
              f"{rmse:.3f} (noise sd 1)")

    with warnings.catch_warnings():  # arviz 0.23 calls a deprecated matplotlib 3.11 helper
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        axes = az.plot_pair(idata, var_names=["z"], coords={"datapoint": 0}, kind="kde",
                            marginals=True)
        np.ravel(axes)[0].figure.savefig(args.output / "pair_plot.png", dpi=100,
                                         bbox_inches="tight")
        axes = az.plot_posterior(idata, var_names=["z"], coords={"datapoint": [0]})
        np.ravel(axes)[0].figure.savefig(args.output / "posterior.png", dpi=100,
                                         bbox_inches="tight")
    plt.close("all")
    print(f"wrote {args.output}/summary.csv, pair_plot.png and posterior.png")
    return idata


if __name__ == "__main__":
    main()
