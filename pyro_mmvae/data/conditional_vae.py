r"""A label-conditional VAE (CVAE; Sohn, Lee and Yan, *Learning Structured Output
Representation using Deep Conditional Generative Models*, NeurIPS 2015), the generator of the
correlated data of :mod:`pyro_mmvae.data.correlated`:

.. math::
    p(z)=\mathcal N(0, I),\qquad p_\theta(x\mid z, c)=\mathrm{Bernoulli}\big(
    \sigma(f_\theta(z, c))\big),\qquad q_\phi(z\mid x, c)=\mathcal N\big(
    \mu_\phi(x, c), \mathrm{diag}\,\sigma^2_\phi(x, c)\big),

trained by its ELBO :math:`\mathbb E_q\log p(x\mid z, c) - \beta\,\mathrm{KL}(q\,\|\,p(z))`
(binary cross-entropy on [0, 1] intensities) with :func:`train_conditional_vae`. The model and
guide follow the library's model/guide contract on ``{"image": (N, D_x), "label": (N, C)}``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import Bernoulli, Normal
from torch import nn

from pyro_mmvae.nn import MLP, positive_scale
from pyro_mmvae.params import NamedPyroModule
from pyro_mmvae.protocol import DATA_PLATE, LATENT_SITE, observe

IMAGE = "image"
"""The modality name of a unimodal image dataset here (model site ``"x_image"``)."""

LABEL = "label"
"""The data key of the one-hot class label a CVAE conditions on (never observed)."""

NUM_CLASSES = 10


def _one_hot(labels: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() == 2:  # already one-hot
        return labels.to(dtype)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}")
    return nn.functional.one_hot(labels.to(torch.long), num_classes).to(dtype)


def _label(data) -> torch.Tensor:
    if LABEL not in data:
        raise ValueError(f"a conditional VAE needs the one-hot class label in data[{LABEL!r}] "
                         "(ConditionalVAE.batch(images, labels) builds the dict)")
    return data[LABEL]


class ConditionalVAEModel(NamedPyroModule):
    r"""``model(data, mask)``: :math:`z\sim\mathcal N(0, I)` and
    :math:`x\sim\mathrm{Bernoulli}(\mathrm{logits}=f_\theta(z, c))` at ``"x_image"``, inside
    ``pyro.plate("data", N)``, with :math:`c` = ``data["label"]`` (one-hot, conditioned on,
    never observed; its mask entry is ignored). The image is observed where ``mask["image"]``
    is True and generated elsewhere (:func:`~pyro_mmvae.protocol.observe`), so
    ``pyro.infer.Predictive`` draws class-conditional images. The Bernoulli is not validated:
    [0, 1] intensities are scored by the binary cross-entropy. ``beta`` scales the latent's
    log-density (model and guide alike, so the ELBO's KL term is :math:`\beta`-weighted)."""

    def __init__(self, data_dim: int, num_classes: int, latent_dim: int,
                 hidden: Sequence[int], beta: float = 1.0, *, name: Optional[str] = None):
        super().__init__(name=name)
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.beta = float(beta)
        self.decoder = MLP(latent_dim + num_classes, tuple(hidden), data_dim)

    def logits(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """:math:`f_\theta(z, c)`, ``z`` ``(..., N, D)`` and one-hot ``label`` ``(N, C)``."""
        return self.decoder(torch.cat([z, label.to(z.dtype).expand(z.shape[:-1]
                                                                   + label.shape[-1:])], -1))

    def forward(self, data, mask=None):
        label = _label(data)
        with pyro.plate(DATA_PLATE, label.shape[0]):
            prior = Normal(label.new_zeros(self.latent_dim), 1.0).to_event(1)
            with poutine.scale(scale=self.beta):
                z = pyro.sample(LATENT_SITE, prior)
            fn = Bernoulli(logits=self.logits(z, label), validate_args=False).to_event(1)
            observe(IMAGE, fn, data, mask)
        return z


class ConditionalVAEGuide(NamedPyroModule):
    r"""``guide(data, mask)``: :math:`q(z\mid x, c)=\mathcal N(\mu, \mathrm{diag}\,\sigma^2)`
    from an MLP on ``[x, c]`` (:math:`\sigma` = ``min_scale`` + softplus), the prior
    :math:`\mathcal N(0, I)` where the image is not observed; ``beta`` as the model's."""

    def __init__(self, data_dim: int, num_classes: int, latent_dim: int,
                 hidden: Sequence[int], beta: float = 1.0, min_scale: float = 1e-3, *,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.beta, self.min_scale = float(beta), min_scale
        self.encoder = MLP(data_dim + num_classes, tuple(hidden), 2 * latent_dim)

    def distribution(self, data, mask=None):
        r""":math:`q(z\mid x, c)` (batch ``(N,)``, event ``(D,)``) without sampling."""
        label = _label(data)
        x = data.get(IMAGE)
        n = label.shape[0]
        seen = None if mask is None or IMAGE not in mask else mask[IMAGE]
        if x is None:
            x = label.new_zeros(n, self.data_dim)
            seen = torch.zeros(n, dtype=torch.bool, device=label.device)
        if seen is not None:
            x = torch.where(seen[:, None], x, x.new_zeros(()))
        loc, raw = self.encoder(torch.cat([x, label.to(x.dtype)], -1)).chunk(2, -1)
        scale = positive_scale(raw, self.min_scale)
        if seen is not None:
            loc = torch.where(seen[:, None], loc, torch.zeros_like(loc))
            scale = torch.where(seen[:, None], scale, torch.ones_like(scale))
        return Normal(loc, scale).to_event(1)

    def forward(self, data, mask=None):
        q = self.distribution(data, mask)
        with pyro.plate(DATA_PLATE, q.batch_shape[0]):
            with poutine.scale(scale=self.beta):
                return {LATENT_SITE: pyro.sample(LATENT_SITE, q)}


class ConditionalVAE(nn.Module):
    r"""A label-conditional VAE for one unimodal dataset (Sohn et al. 2015; the M2VAE paper's
    Table 3 with MLPs): ``.model`` (:class:`ConditionalVAEModel`) and ``.guide``
    (:class:`ConditionalVAEGuide`) follow the library's model/guide contract on
    ``data = {"image": (N, D_x), "label": (N, C) one-hot}`` (:meth:`batch`), so
    :func:`pyro_mmvae.train.fit` trains them with any Pyro ELBO — e.g.
    ``fit(cvae.model, cvae.guide, pyro.infer.TraceMeanField_ELBO(), cvae.batch(x, y), ...)``
    for :math:`\mathbb E_q\log p(x\mid z, c) - \beta\,\mathrm{KL}(q(z\mid x, c)\,\|\,
    \mathcal N(0, I))` with the KL in closed form.

    :param data_dim: ``D_x`` (64 for 8x8 images). ``num_classes``: ``C``. ``latent_dim``: ``D``.
    :param hidden: hidden widths of the encoder ``D_x + C -> hidden -> 2 D`` and the decoder
        ``D + C -> hidden -> D_x``.
    :param beta: the KL weight (both programs scale the latent site by it).
    """

    def __init__(self, data_dim: int = 64, num_classes: int = NUM_CLASSES, latent_dim: int = 2,
                 hidden: Sequence[int] = (128,), *, beta: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.model = ConditionalVAEModel(data_dim, num_classes, latent_dim, hidden, beta)
        self.guide = ConditionalVAEGuide(data_dim, num_classes, latent_dim, hidden, beta,
                                         min_scale)
        self.history: Optional[dict] = None  # what train_conditional_vae's fit returned

    def _dtype(self):
        return next(self.parameters()).dtype

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"image": images, "label": one_hot(labels)}`` in the CVAE's dtype (``labels``
        ``(N,)`` class indices or ``(N, C)`` one-hot)."""
        images = torch.as_tensor(images).to(self._dtype())
        if images.dim() != 2 or images.shape[1] != self.data_dim:
            raise ValueError(f"images must have shape (N, {self.data_dim}), got "
                             f"{tuple(images.shape)}")
        label = _one_hot(labels, self.num_classes, images.dtype)
        if label.shape != (images.shape[0], self.num_classes):
            raise ValueError(f"labels must give one class per image ({images.shape[0]}), got "
                             f"shape {tuple(torch.as_tensor(labels).shape)}")
        return {IMAGE: images, LABEL: label}

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        r"""The decoder mean :math:`\sigma(f_\theta(z, c))` ``(N, D_x)``, in [0, 1]."""
        z = torch.as_tensor(z).to(self._dtype())
        label = _one_hot(labels, self.num_classes, z.dtype)
        return torch.sigmoid(self.model.logits(z, label))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> Normal:
        r""":math:`q(z\mid x, c)` of every image (``.mean`` the encoder mean)."""
        return self.guide.distribution(self.batch(images, labels))


def train_conditional_vae(images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                          seed: int = 0, latent_dim: int = 2, hidden: Sequence[int] = (128,),
                          beta: float = 1.0, batch_size: int = 128, lr: float = 3e-3,
                          num_classes: int = NUM_CLASSES, dtype: Optional[torch.dtype] = None,
                          num_threads: Optional[int] = 1, progress: bool = False
                          ) -> ConditionalVAE:
    r"""A :class:`ConditionalVAE` on ``images`` ``(N, D_x)`` in [0, 1] and their ``labels``,
    trained by :func:`pyro_mmvae.train.fit` with ``pyro.infer.TraceMeanField_ELBO`` (the ELBO
    with the Gaussian KL in closed form) for ``epochs`` epochs of Adam at ``lr``.

    Deterministic given ``seed`` (it seeds the initialisation and :func:`fit`). It trains in a
    param-store scope of its own and restores the global RNG states afterwards, so the caller's
    Pyro param store and random streams are as they were. ``cvae.history`` holds what
    :func:`fit` returned. ``dtype``: the CVAE's (default ``torch.get_default_dtype()``).

    ``num_threads``: torch's intra-op threads while it trains (restored afterwards; None
    leaves the setting alone). The networks are tiny, so one thread loses nothing, and on a
    busy machine more can cost a lot: at :func:`e_digits`' defaults 13 s with one thread
    against 500 s with two on two CPU cores shared with another process.
    """
    from pyro.infer import TraceMeanField_ELBO

    from pyro_mmvae.train import fit, rng_state, set_rng_state

    dtype = dtype or torch.get_default_dtype()
    images = torch.as_tensor(images)
    state = rng_state()
    threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        cvae = ConditionalVAE(images.shape[-1], num_classes, latent_dim, hidden,
                              beta=beta).to(dtype)
        data = cvae.batch(images, labels)
        with pyro.get_param_store().scope():
            cvae.history = fit(cvae.model, cvae.guide, TraceMeanField_ELBO(), data,
                               epochs=epochs, batch_size=min(batch_size, len(images)), lr=lr,
                               seed=seed, progress=progress, distributed=False)
    finally:
        set_rng_state(state)
        torch.set_num_threads(threads)
    cvae.eval()
    return cvae
