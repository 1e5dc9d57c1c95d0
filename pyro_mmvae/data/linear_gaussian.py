r"""Linear-Gaussian multimodal data (Hirt et al., arXiv:2309.00380, §5.1 and App. J).

:math:`z\sim\mathcal N(0, I_D)`, :math:`x_m = W_m z + b_m + \sigma_m\epsilon_m`. Every
function returns a :class:`LinearGaussianData`, the library's
:class:`~pyro_mmvae.data.MultimodalDataset` with the latents and the generating parameters.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from .dataset import MultimodalDataset


class LinearGaussianData(MultimodalDataset):
    """A :class:`~pyro_mmvae.data.MultimodalDataset` simulated from the linear-Gaussian model:
    ``data`` ``{m: (N, D_m)}`` (every modality observed), ``latents`` ``(N, D)`` and the
    generating parameters in ``info``, also readable as attributes:

    :ivar weights: ``info["weights"]``, ``{m: (D_m, D)}``.
    :ivar biases: ``info["biases"]``, ``{m: (D_m,)}``.
    :ivar noise_scales: ``info["noise_scales"]``, ``{m: float}``.
    """

    @property
    def weights(self) -> Dict[str, torch.Tensor]:
        return self.info["weights"]

    @property
    def biases(self) -> Dict[str, torch.Tensor]:
        return self.info["biases"]

    @property
    def noise_scales(self) -> Dict[str, float]:
        return self.info["noise_scales"]


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.rand(rows, cols, generator=gen) * 2 - 1
    q, _ = torch.linalg.qr(a)
    return q


def simulate(num_points: int, weights: Mapping[str, torch.Tensor],
             biases: Mapping[str, torch.Tensor], noise_scales: Mapping[str, float],
             gen: torch.Generator, name: str = "linear_gaussian") -> LinearGaussianData:
    """Draw ``num_points`` from the linear-Gaussian model with the given parameters."""
    d = next(iter(weights.values())).shape[1]
    z = torch.randn(num_points, d, generator=gen)
    data = {m: z @ w.T + biases[m] + noise_scales[m] * torch.randn(num_points, w.shape[0],
                                                                   generator=gen)
            for m, w in weights.items()}
    info = {"weights": dict(weights), "biases": dict(biases),
            "noise_scales": dict(noise_scales)}
    return LinearGaussianData(data, latents=z, info=info, name=name)


def shared_latent_study(num_points: int = 5000, num_modalities: int = 5, latent_dim: int = 5,
                        dim_range=(30, 60), noise_scale: float = 1.0, seed: int = 0,
                        dtype: Optional[torch.dtype] = None) -> LinearGaussianData:
    """Table 2 ("invariant") data: ``D_m ~ randint(30, 60)``, ``W_m`` with orthonormal columns
    (Q of a QR of a uniform(-1, 1) matrix), ``b_m ~ N(0, I)``, unit noise."""
    gen = torch.Generator().manual_seed(seed)
    names = [f"m{i}" for i in range(num_modalities)]
    dims = torch.randint(dim_range[0], dim_range[1], (num_modalities,), generator=gen).tolist()
    weights = {m: _orthonormal(dm, latent_dim, gen) for m, dm in zip(names, dims)}
    biases = {m: torch.randn(dm, generator=gen) for m, dm in zip(names, dims)}
    out = simulate(num_points, weights, biases, {m: noise_scale for m in names}, gen,
                   "shared_latent_study")
    return _cast(out, dtype)


def private_latent_study(num_points: int = 5000, num_modalities: int = 5, shared_dim: int = 5,
                         private_dim: int = 5, dim_range=(30, 60), noise_scale: float = 1.0,
                         seed: int = 0, dtype: Optional[torch.dtype] = None
                         ) -> LinearGaussianData:
    r"""Table 2 "equivariant" data of Hirt et al. (§5.1, App. J): sparse loadings with private
    latents.

    Per modality the Q factor of a reduced QR of a ``D_m x (private + shared)`` uniform(-1, 1)
    matrix gives :math:`[V_m \mid W_m]`; :math:`x_m = W_m z + V_m w_m + b_m + \epsilon_m`, so
    :math:`x_m` depends only on the shared :math:`z` and its own :math:`w_m`. ``latents`` and
    ``weights`` refer to the stacked latent :math:`u=(z, w_1, \dots, w_M)` (the order of
    :class:`pyro_mmvae.models.LinearGaussianModel` with ``private_dim``).
    """
    gen = torch.Generator().manual_seed(seed)
    names = [f"m{i}" for i in range(num_modalities)]
    dims = torch.randint(dim_range[0], dim_range[1], (num_modalities,), generator=gen).tolist()
    weights, biases = {}, {}
    for i, (m, dm) in enumerate(zip(names, dims)):
        q = _orthonormal(dm, private_dim + shared_dim, gen)
        v, w = q[:, :private_dim], q[:, private_dim:]
        blocks = [w, torch.zeros(dm, i * private_dim), v,
                  torch.zeros(dm, (num_modalities - i - 1) * private_dim)]
        weights[m] = torch.cat(blocks, dim=1)
        biases[m] = torch.randn(dm, generator=gen)
    out = simulate(num_points, weights, biases, {m: noise_scale for m in names}, gen,
                   "private_latent_study")
    return _cast(out, dtype)


def illustrative_bimodal(num_points: int = 5000, noise_scales=(0.1, 10.0), latent_dim: int = 1,
                         seed: int = 0, dtype: Optional[torch.dtype] = None
                         ) -> LinearGaussianData:
    """Table 1 data of Hirt et al. (§5.1): a less noisy and a more noisy modality,
    ``x_m = z + sigma_m eps``.

    The paper's exact setting is lost; ``D = 1`` with ``sigma = (0.1, 10)`` reproduces its
    full reconstruction of ``-(log 2 pi + 1)``.
    """
    gen = torch.Generator().manual_seed(seed)
    names = ("less_noisy", "more_noisy")
    weights = {m: torch.eye(latent_dim) for m in names}
    biases = {m: torch.zeros(latent_dim) for m in names}
    out = simulate(num_points, weights, biases, dict(zip(names, noise_scales)), gen,
                   "illustrative_bimodal")
    return _cast(out, dtype)


def _cast(out: LinearGaussianData, dtype) -> LinearGaussianData:
    """Data, latents, weights and biases in ``dtype`` (default: torch's default dtype)."""
    return out.to(dtype=dtype or torch.get_default_dtype())
