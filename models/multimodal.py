"""``MultimodalModel``: a prior over ``z`` and one decoder per modality, as a Pyro model."""

from __future__ import annotations

import warnings
from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import Normal
from pyro.distributions.util import broadcast_shape
from torch import nn

from pyro_mmvae.batching import call_grouped, check_batch_setting, should_batch
from pyro_mmvae.decoding import decode_rows, run_network, scored_rows
from pyro_mmvae.params import NamedPyroModule
from pyro_mmvae.protocol import (DATA_PLATE, LATENT_SITE, enclosing_plate_shape, full_mask,
                                 is_scoring, num_points, observe, private_site)


def concat_latents(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate latents ``(..., D_i)`` along the last dim, broadcasting leading dims."""
    shape = torch.Size(broadcast_shape(*(p.shape[:-1] for p in parts)))
    return torch.cat([p.expand(shape + p.shape[-1:]) for p in parts], dim=-1)


class MultimodalModel(NamedPyroModule):
    r"""Generative model :math:`p(z)\prod_m p(x_m\mid z)` following the multimodal protocol.

    ``model(data, mask)`` samples ``"z"`` from ``prior()`` inside ``pyro.plate("data", N)``,
    ``N = num_points(data, mask)`` (the mask's last dim), and observes every modality at
    ``"x_<m>"`` with :func:`~pyro_mmvae.protocol.observe`: under ``poutine.mask(mask[m])``,
    the site's value being the data where ``mask[m]`` is True and a draw from the decoder
    elsewhere; a modality absent from ``data`` is generated everywhere. So
    ``pyro.infer.Predictive(model, guide=guide, num_samples=k)(data, mask)`` cross-generates
    the unobserved modalities, and ``model({}, {m: torch.zeros(n, dtype=torch.bool) for m in
    model.modalities})`` draws ``n`` joint samples from the prior (``poutine.uncondition``
    also re-samples the observed ones). ``mask=None`` observes every modality in ``data``.
    ``model({}, num_samples=n)`` (deprecated, with a ``DeprecationWarning``) still draws ``n``
    joint samples: without a mask, ``num_samples`` observes what ``data`` holds and generates
    the rest.

    With ``private_dim`` the model has private latents (Hirt et al. eq. 8):
    :math:`p(z)\prod_m p(w_m)\,p(x_m\mid z, w_m)` with :math:`w_m\sim\mathcal N(0, I)` at
    site ``"w_<m>"`` and each decoder fed the concatenation ``[z, w_m]``.

    :param prior: module returning the distribution of ``z`` (event ``(D,)``), e.g.
        :class:`~pyro_mmvae.models.StandardNormalPrior`.
    :param decoders: ``{modality: decoder}``, each ``decoder(z)`` (or ``decoder([z, w_m])``)
        returning ``p(x_m | z)``.
    :param private_dim: size of every private latent (None: shared latent only).
    :param enumerate_clusters: with a :class:`~pyro_mmvae.models.GaussianMixturePrior`, write the
        cluster ``"c"`` explicitly and enumerate it (for ``TraceEnum_ELBO``); equivalent to the
        default marginal form, which every bound accepts.
    :param batch_modalities: run the decoder networks of one architecture (inputs of one
        shape) as one batched call (:mod:`pyro_mmvae.batching`; decoders exposing ``net`` and
        ``likelihood(out, z)``, as the library's do): ``"auto"`` (default) on CUDA only, True
        wherever possible, False never; values and gradients are the same. Modalities decoded
        on their scored rows only (:mod:`pyro_mmvae.decoding`) run on their own.
    :param name: root of the model's parameter names in Pyro's param store
        (``"<name>.decoders$$$<modality>...."``; keyword only). None (default): the first of
        ``""``, ``"<ClassName>_1"``, ... not holding another module's parameters, chosen at
        the first call, so models trained side by side in one store get their own parameters
        (:mod:`pyro_mmvae.params`).
    """

    vectorized = True  # broadcasts stacked masks and latents (pyro_mmvae.protocol.vectorized)

    def __init__(self, prior: nn.Module, decoders: Mapping[str, nn.Module],
                 latent_site: str = LATENT_SITE, private_dim: Optional[int] = None,
                 enumerate_clusters: bool = False, *, name: Optional[str] = None,
                 batch_modalities="auto"):
        super().__init__(name=name)
        self.modalities = list(decoders)
        self.prior = prior
        self.decoders = nn.ModuleDict(dict(decoders))
        self.latent_site = latent_site
        self.private_dim = private_dim
        self.enumerate_clusters = enumerate_clusters
        self.batch_modalities = check_batch_setting(batch_modalities)

    def forward(self, data, mask: Optional[Mapping] = None, num_samples: Optional[int] = None):
        unknown = sorted((set(data) | set(mask or {})) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the model has decoders for "
                             f"{self.modalities}")
        if num_samples is not None:
            warnings.warn("model({}, num_samples=n) is deprecated: pass a mask naming the "
                          "modalities, all False to generate them: model({}, {m: "
                          "torch.zeros(n, dtype=torch.bool) for m in model.modalities})",
                          DeprecationWarning, stacklevel=2)
            if mask is None:  # as before: what data holds is observed, the rest generated
                ref = next(iter(data.values()), None)
                if ref is None:
                    ref = next(iter(self.buffers()), next(iter(self.parameters()), None))
                n = ref.shape[0] if data else num_samples
                mask = {m: torch.full((n,), m in data, dtype=torch.bool,
                                      device=None if ref is None else ref.device)
                        for m in self.modalities}
        if mask is None:
            if not data:
                raise ValueError("pass a mask naming the modalities (all False to generate "
                                 "them from the prior), or data to observe")
            mask = full_mask(data)
        n = num_points(data, mask)
        with pyro.plate(DATA_PLATE, n):
            if self.enumerate_clusters:
                z = self.prior.enumerated_sample(self.latent_site)
            else:
                z = pyro.sample(self.latent_site, self.prior())
            decoders = self.decoders
            plates = enclosing_plate_shape() if is_scoring() else None  # the same for all
            if not should_batch(self.batch_modalities, z):
                for m, decoder in decoders.items():
                    code = self._code(m, z)
                    rows = scored_rows(mask, m, code.shape[:-1], plates)
                    observe(m, decoder(code) if rows is None else
                            decode_rows(decoder, code, rows), data, mask)
                return z
            codes = {m: self._code(m, z) for m in decoders}
            rows = {m: scored_rows(mask, m, code.shape[:-1], plates) for m, code in codes.items()}
            # networks of the modalities decoded whole, batched by architecture
            whole = {m: code for m, code in codes.items()
                     if rows[m] is None and hasattr(decoders[m], "likelihood")}
            outs = call_grouped({m: decoders[m].net for m in whole}, whole,
                                self.batch_modalities,
                                call=lambda m, net, code: run_network(net, code))
            for m, decoder in decoders.items():
                if m in outs:
                    fn = decoder.likelihood(outs[m], codes[m])
                elif rows[m] is None:
                    fn = decoder(codes[m])
                else:
                    fn = decode_rows(decoder, codes[m], rows[m])
                observe(m, fn, data, mask)
        return z

    def _code(self, modality, z):
        """The decoder input of a modality: ``z``, or ``[z, w_m]`` with its private latent
        (sampled here)."""
        if not self.private_dim:
            return z
        prior = Normal(z.new_zeros(self.private_dim), 1.0).to_event(1)
        w = pyro.sample(private_site(modality), prior)
        return concat_latents(z, w)
