r"""The linear-Gaussian multimodal model and its closed forms (Hirt et al., §5.1, App. J).

.. math:: z\sim\mathcal N(0, I_D),\qquad x_m = W_m z + b_m + \sigma_m\epsilon_m .

For any observed set :math:`O`, with :math:`\Lambda_O = I + \sum_{m\in O}\sigma_m^{-2}W_m^\top
W_m` and :math:`\eta_O = \sum_{m\in O}\sigma_m^{-2}W_m^\top(x_m-b_m)`,

.. math::
    p(z\mid x_O) = \mathcal N(\Lambda_O^{-1}\eta_O, \Lambda_O^{-1}),\qquad
    \log p(x_O) = \sum_{m\in O}\log\mathcal N(x_m; b_m, \sigma_m^2 I)
        - \tfrac12\log\det\Lambda_O + \tfrac12\eta_O^\top\Lambda_O^{-1}\eta_O

(matrix determinant lemma and Woodbury), computed for a whole batch with per-datapoint
observed sets at once.
"""

from __future__ import annotations


from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import MultivariateNormal, Normal
from torch import nn

from pyro_mmvae.protocol import (DATA_PLATE, LATENT_SITE, full_mask, num_points,
                                 private_site)

from .decoders import GaussianDecoder
from .multimodal import MultimodalModel
from .priors import StandardNormalPrior


class LinearGaussianModel(MultimodalModel):
    r"""Linear decoders with Gaussian noise and a standard-normal prior.

    With ``private_dim`` each modality also has a private latent ``w_m`` (Hirt et al. eq. 8):
    :math:`x_m = W_m z + V_m w_m + b_m + \sigma_m\epsilon_m`, i.e. a linear-Gaussian model in
    the stacked latent :math:`u=(z, w_1, \dots, w_M)` with block-sparse loadings, so the
    closed forms below apply to ``u``.

    :param modality_dims: ``{modality: D_m}``.
    :param latent_dim: ``D`` (the shared latent).
    :param noise_scale: initial (or fixed) noise standard deviation, shared or per modality.
    :param learn_noise: learn the noise scale (one scalar per modality).
    :param private_dim: size of each private latent (0: none).
    :param name: root of the model's parameter names in Pyro's param store (keyword only;
        see :class:`~pyro_mmvae.models.MultimodalModel`). None (default): the first free of
        ``""``, ``"LinearGaussianModel_1"``, ... at the first call.
    """

    def __init__(self, modality_dims: Mapping[str, int], latent_dim: int,
                 noise_scale=1.0, learn_noise: bool = False, private_dim: int = 0, *,
                 name: Optional[str] = None):
        scales = noise_scale if isinstance(noise_scale, Mapping) else {
            m: noise_scale for m in modality_dims}
        decoders = {m: GaussianDecoder(nn.Linear(latent_dim + private_dim, d),
                                       scale=float(scales[m]), learn_scale=learn_noise)
                    for m, d in modality_dims.items()}
        super().__init__(StandardNormalPrior(latent_dim), decoders,
                         private_dim=private_dim or None, name=name)
        self.latent_dim = latent_dim
        self.modality_dims = dict(modality_dims)

    @property
    def stacked_dim(self) -> int:
        """Size of the stacked latent ``u = (z, w_1, ..., w_M)``."""
        return self.latent_dim + len(self.modalities) * (self.private_dim or 0)

    def linear_parameters(self, modality: str):
        """``(A_m (D_m, stacked_dim), b_m (D_m,), sigma_m)``: the loading of ``x_m`` on the
        stacked latent ``u`` (just ``W_m`` without private latents)."""
        dec = self.decoders[modality]
        w = dec.net.weight
        if not self.private_dim:
            return w, dec.net.bias, dec.scale
        d, p = self.latent_dim, self.private_dim
        i = self.modalities.index(modality)
        blocks = [w[:, :d], w.new_zeros(w.shape[0], i * p), w[:, d:],
                  w.new_zeros(w.shape[0], (len(self.modalities) - i - 1) * p)]
        return torch.cat(blocks, dim=1), dec.net.bias, dec.scale

    def _natural_posterior(self, data, mask):
        # masks (..., B) may carry leading (stacked-subset) dims; everything broadcasts. A
        # modality absent from data (its mask all False, if given) contributes nothing; one in
        # data without a mask entry is observed everywhere.
        mask = full_mask(data) if mask is None else mask
        d = self.stacked_dim
        ref = next(iter(data.values()), None)
        if ref is None:
            ref = self.decoders[self.modalities[0]].net.weight
        n = num_points(data, mask)
        lam = torch.eye(d, dtype=ref.dtype, device=ref.device)  # (D, D)
        eta, log_noise = ref.new_zeros(n, d), ref.new_zeros(n)
        for m in self.modalities:
            if m not in data:
                if m in mask and mask[m].any():
                    raise ValueError(f"modality '{m}' is marked observed but has no data")
                continue
            w, b, s = self.linear_parameters(m)
            on = (mask[m] if m in mask else torch.ones(n, dtype=torch.bool)).to(
                dtype=ref.dtype, device=ref.device)  # (..., B)
            prec = s.pow(-2)  # scalar
            r = data[m] - b  # (B, D_m)
            lam = lam + on[..., None, None] * prec * (w.T @ w)
            eta = eta + on[..., None] * prec * (r @ w)
            log_noise = log_noise + on * Normal(b, s).log_prob(data[m]).sum(-1)
        return lam, eta, log_noise

    def exact_posterior(self, data, mask: Optional[Mapping] = None) -> MultivariateNormal:
        """``p(u | x_O)`` for each data point (``u = z``, or ``(z, w_1, ..., w_M)`` with private
        latents), a full-covariance Gaussian with batch ``(B,)``."""
        lam, eta, _ = self._natural_posterior(data, mask)
        chol = torch.linalg.cholesky(lam)
        mean = torch.cholesky_solve(eta.unsqueeze(-1), chol).squeeze(-1)
        return MultivariateNormal(mean, precision_matrix=lam)

    def exact_log_likelihood(self, data, mask: Optional[Mapping] = None) -> torch.Tensor:
        """Per-datapoint ``log p(x_O)`` (``(B,)``) under the current decoder parameters."""
        lam, eta, log_noise = self._natural_posterior(data, mask)
        chol = torch.linalg.cholesky(lam)
        half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        sol = torch.cholesky_solve(eta.unsqueeze(-1), chol).squeeze(-1)
        return log_noise - half_logdet + 0.5 * (eta * sol).sum(-1)


class ExactPosteriorGuide:
    r"""The exact posterior of a :class:`LinearGaussianModel` as a Pyro guide: the reference
    every bound and estimator is tested against (with it, every ELBO of the model is exact).

    Without private latents it draws :math:`z\sim p(z\mid x_S)` (``model.exact_posterior``)
    at the latent site. With private latents it draws :math:`z` from the marginal of
    :math:`p(z, w_{1:M}\mid x_S)`, then each :math:`w_m\sim p(w_m\mid z, x_m)` for observed
    :math:`m` (Gaussian: precision :math:`I + W_m^{p\top}W_m^p/\sigma_m^2`, mean that precision
    solving :math:`W_m^{p\top}(x_m - b_m - W_m^{s}z)/\sigma_m^2`) and :math:`\mathcal N(0, I)`
    otherwise, so :math:`p(z\mid x_S)\prod_m p(w_m\mid z, x_S)` is the joint posterior.
    ``mask`` entries may carry leading (stacked-subset) dimensions. No parameters; call it as
    ``guide(data, mask)``.
    """

    vectorized = True

    def __init__(self, model: LinearGaussianModel, latent_site: str = LATENT_SITE):
        self.model, self.latent_site = model, latent_site

    def __call__(self, data, mask=None):
        mask = full_mask(data) if mask is None else mask
        model, d = self.model, self.model.latent_dim
        post = model.exact_posterior(data, mask)
        with pyro.plate(DATA_PLATE, num_points(data)):
            if not model.private_dim:
                return pyro.sample(self.latent_site, post)
            z = pyro.sample(self.latent_site,
                            MultivariateNormal(post.loc[..., :d],
                                               post.covariance_matrix[..., :d, :d]))
            for m in model.modalities:
                dec = model.decoders[m]
                w_sh, w_p = dec.net.weight[:, :d], dec.net.weight[:, d:]
                eye = torch.eye(w_p.shape[1], dtype=w_p.dtype, device=w_p.device)
                prec = eye + w_p.T @ w_p / dec.scale ** 2
                resid = data[m] - dec.net.bias - z @ w_sh.T  # (..., B, D_m)
                mean = torch.linalg.solve(prec, (resid @ w_p / dec.scale ** 2).unsqueeze(-1))
                on = mask[m].unsqueeze(-1)
                loc = torch.where(on, mean.squeeze(-1), torch.zeros_like(mean.squeeze(-1)))
                precision = torch.where(on.unsqueeze(-1), prec, eye)
                pyro.sample(private_site(m), MultivariateNormal(loc, precision_matrix=precision))
            return z


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """Per-row ``log N(x; mean, cov)`` for ``x (N, Dx)``."""
    return MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def pca_maximum_likelihood(x: torch.Tensor, latent_dim: int):
    r"""Maximum-likelihood probabilistic PCA (Tipping & Bishop 1999); Hirt et al. App. J.

    :math:`\hat b=\bar x`; with the eigen-decomposition of the sample covariance,
    :math:`\hat\sigma^2` is the mean of the discarded eigenvalues and
    :math:`\hat W = U_D(\Lambda_D-\hat\sigma^2 I)^{1/2}`.

    :param x: ``(N, Dx)`` concatenated modalities.
    :returns: ``(W (Dx, D), b (Dx,), sigma2, log_likelihood)`` with the summed log-likelihood.
    """
    n, dx = x.shape
    b = x.mean(0)
    xc = x - b
    cov = xc.T @ xc / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[latent_dim:].mean()
    w = evecs[:, :latent_dim] * (evals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    model_cov = w @ w.T + sigma2 * torch.eye(dx, dtype=x.dtype, device=x.device)
    return w, b, sigma2, gaussian_log_likelihood(x, b, model_cov).sum()


def relative_llh_gap(mle_log_likelihood: float, model_log_likelihood: float) -> float:
    r"""The relative LLH gap of Hirt et al. :math:`(\ell_{\rm MLE}-\ell)/|\ell_{\rm MLE}|`."""
    mle, ours = (float(torch.as_tensor(v).detach()) for v in (mle_log_likelihood,
                                                              model_log_likelihood))
    return (mle - ours) / abs(mle)
