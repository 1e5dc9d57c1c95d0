"""``MultimodalGuide``: modality encoders + an aggregator, as a Pyro guide program."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import Normal
from torch import nn
from torch.func import functional_call

from pyro_mmvae.batching import check_batch_setting, call_grouped
from pyro_mmvae.params import NamedPyroModule
from pyro_mmvae.sharding import sharded
from pyro_mmvae.protocol import (LATENT_SITE, STL_FN, data_plate, full_mask, num_points,
                                 private_site, stack_mask, validate_batch)


class MultimodalGuide(NamedPyroModule):
    r"""Amortised guide ``q(z | x_S)`` for the multimodal protocol.

    Each modality ``m`` has an encoder ``encoders[m]: (B, ...) -> (B, E)``; their outputs are
    stacked in the order of ``encoders`` into ``(B, M, E)`` and handed with the mask to the
    ``aggregator`` (:class:`~pyro_mmvae.guides.PoE`, :class:`~pyro_mmvae.guides.MoE`,
    :class:`~pyro_mmvae.guides.MoPoE`, or any module with the same call signature), which returns
    the distribution of ``z``.

    Inputs of modalities outside the mask are replaced by zeros before encoding, so nothing
    about a masked-out value (not even a NaN) can reach the guide. Masks may carry leading
    dimensions (stacked subsets); the encoders still run once per modality.

    Call it as a Pyro program, ``guide(data, mask)``: it samples site ``"z"`` inside
    ``pyro.plate("data", B)`` and returns ``{site: value}`` of what it sampled, as Pyro's autoguides
    do (so it can be a part of an ``AutoGuideList``; its data plate records no subsample site,
    :func:`~pyro_mmvae.protocol.data_plate`). :meth:`distribution` returns ``q(z | x_S)`` without
    sampling.

    **Private latents.** With a ``private`` head (:class:`~pyro_mmvae.guides.IndependentPrivate`,
    :class:`~pyro_mmvae.guides.PooledPrivate`, :class:`~pyro_mmvae.guides.AttentionPrivate`) the
    guide then samples ``"w_<m>"`` for every modality from ``q(w_m | z, x_S)`` when ``m`` is in S
    and from the prior :math:`\mathcal N(0, I)` otherwise (Hirt et al. eq. 10). ``shared_features``
    feeds only the first that many features to the aggregator (PE-PoE: the shared expert, the rest
    being the private expert). Each private site records in its ``infer`` dict (key
    :data:`~pyro_mmvae.protocol.STL_FN`) how to rebuild ``q(w_m | z, x_S)`` with detached parameters
    at a live ``z`` (:func:`detached_private`), the density the STL and DReG estimators need.

    :param batch_modalities: run encoders of one architecture (inputs of one shape) as one
        batched call (:mod:`pyro_mmvae.batching`): ``"auto"`` (default) on CUDA only, True
        wherever possible, False never; values and gradients are the same.
    :param name: root of the guide's parameter names in Pyro's param store
        (``"<name>.encoders$$$<modality>...."``; keyword only). None (default): the first of
        ``""``, ``"MultimodalGuide_1"``, ... not holding another module's parameters, chosen
        at the first call, so guides trained side by side in one store get their own
        parameters (:mod:`pyro_mmvae.params`).
    """

    vectorized = True  # broadcasts stacked masks and latents (pyro_mmvae.protocol.vectorized)

    def __init__(self, encoders: Mapping[str, nn.Module], aggregator: nn.Module,
                 latent_site: str = LATENT_SITE, private: Optional[nn.Module] = None,
                 shared_features: Optional[int] = None, *, name: Optional[str] = None,
                 batch_modalities="auto"):
        super().__init__(name=name)
        if not encoders:
            raise ValueError("MultimodalGuide needs at least one modality encoder")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.aggregator = aggregator
        self.latent_site = latent_site
        self.private = private
        self.shared_features = shared_features
        self.batch_modalities = check_batch_setting(batch_modalities)
        self._input_shapes = {}  # last input shape (without N) per modality: for absent ones

    def _check(self, data, mask):
        unknown = sorted(set(data) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the guide has encoders for "
                             f"{self.modalities}")
        absent = [m for m in self.modalities if m not in mask]
        if absent:
            raise ValueError(f"modality '{absent[0]}' has no mask entry")
        for m in self.modalities:  # absent from data: not observed (its mask all False)
            if m not in data and torch.is_tensor(mask[m]) and bool(mask[m].any()):
                raise ValueError(f"modality '{m}' is marked observed in the mask but has no "
                                 "data; pass its data, or mask it out")
        # the rest of the protocol (tensors, N, bool masks (..., N), no NaN), so that a bad
        # batch is a clear error under Pyro's own ELBOs too (cheap: shapes, dtypes and one sum
        # per modality)
        if data:
            validate_batch(data, mask, leading_mask_dims=True)

    def features(self, data, mask) -> torch.Tensor:
        """Encoder outputs ``(B, M, E)``; inputs never observed in ``mask`` are zeroed first.

        Every modality's input is first checked against its encoder
        (:func:`check_encoder_input`: dtype, and the width an MLP's first layer reads), and an
        encoder that fails anyway re-raises naming the modality (:func:`run_encoder`).
        """
        encoders = self.encoders  # one PyroModule attribute access: one param registration
        present = [m for m in self.modalities if m in data]
        for m in present:
            check_encoder_input(m, encoders[m], data[m])
        inputs = {}
        for m in present:
            x = data[m]
            seen = mask[m].reshape(-1, x.shape[0]).any(0) if mask[m].dim() > 1 else mask[m]
            seen = seen.reshape(seen.shape + (1,) * (x.dim() - 1))
            inputs[m] = torch.where(seen, x, x.new_zeros(()))
            self._input_shapes[m] = tuple(x.shape[1:])
        feats = call_grouped(encoders, inputs, self.batch_modalities, run_encoder)
        for m in self.modalities:
            if m not in feats:  # absent from data, so never observed: its features are unused
                feats[m] = (torch.zeros_like(next(iter(feats.values()))) if present
                            else self._absent_features(m, num_points(data, mask)))
        return torch.stack([feats[m] for m in self.modalities], dim=-2)

    def _absent_features(self, modality, n):
        """Features of a modality absent from data when no modality is present: the encoder at
        zeros of its input shape (the last one seen, or what a first ``nn.Linear`` reads)."""
        encoder = self.encoders[modality]
        shape = self._input_shapes.get(modality)
        layer = _first_layer(encoder)
        if shape is None and isinstance(layer, nn.Linear):
            shape = (layer.in_features,)
        if shape is None:
            raise ValueError(f"modality '{modality}' is absent from data and the guide cannot "
                             "tell its input shape; pass a placeholder and mask it out")
        param = next(encoder.parameters(), None)
        kwargs = {} if param is None else dict(dtype=param.dtype, device=param.device)
        return run_encoder(modality, encoder, torch.zeros((n,) + tuple(shape), **kwargs))

    def distribution(self, data, mask: Optional[Mapping] = None):
        """``q(z | x_S)`` with batch shape ``mask.shape`` (``(..., B)``) and event ``(D,)``."""
        mask = full_mask(data) if mask is None else mask
        self._check(data, mask)
        return self._shared(self.features(data, mask), stack_mask(mask, self.modalities))

    def _shared(self, features, mask):
        if self.shared_features is not None:
            features = features[..., :self.shared_features]
        return self.aggregator(features, mask)

    def forward(self, data, mask: Optional[Mapping] = None):
        mask = full_mask(data) if mask is None else mask
        self._check(data, mask)
        features = self.features(data, mask)
        stacked = stack_mask(mask, self.modalities)
        with data_plate(num_points(data, mask)):
            z = pyro.sample(self.latent_site, sharded(self._shared(features, stacked)))
            head = self.private
            if head is None:
                return {self.latent_site: z}
            private = private_distributions(*head(features, stacked, z), stacked)
            stl = detached_private(head, features, stacked, z, self.latent_site)
            out = {self.latent_site: z}
            for i, m in enumerate(self.modalities):
                out[private_site(m)] = pyro.sample(
                    private_site(m), sharded(private[i]),
                    infer={STL_FN: lambda values, i=i: stl(values)[i]})
            return out


def private_distributions(loc, scale, stacked):
    r"""``[q(w_m | z, x_S)]`` in modality order from the head's ``loc, scale (..., B, M, D_w)``:
    :math:`\mathcal N(\mu_m, \sigma_m)` where ``stacked (..., B, M)`` is True, the prior
    :math:`\mathcal N(0, I)` elsewhere."""
    on = stacked.unsqueeze(-1)
    loc = torch.where(on, loc, torch.zeros_like(loc))
    scale = torch.where(on, scale, torch.ones_like(scale))
    return [Normal(loc[..., i, :], scale[..., i, :]).to_event(1) for i in range(loc.shape[-2])]


def detached_private(head: nn.Module, features, stacked, z, latent_site: str):
    r"""The private sites' sticking-the-landing densities (the guide's ``infer[STL_FN]``).

    Returns ``values -> [q(w_m | z, x_S)]`` with the head's parameters and the encoder features
    detached but the shared sample live, :math:`\mathcal N(\mu_{\bar\phi}(z),
    \sigma_{\bar\phi}(z))` with :math:`\bar\phi=\mathrm{stop\_grad}(\phi)` and :math:`z` =
    ``values[latent_site]`` (default: the guide's own sample). Detaching :math:`\mu, \sigma`
    as tensors would also cut the path :math:`\partial_z\log q(w\mid z)\,\partial_\phi z`,
    which STL keeps and DReG needs (:func:`pyro_mmvae.infer.traces.stl_distribution`). The
    head is re-run with ``torch.func.functional_call``, once per value of :math:`z`.
    """
    features = features.detach()
    cache = {}

    def distributions(values):
        zv = values.get(latent_site, z)
        if cache.get("z") is not zv:
            params = {name: p.detach() for name, p in head.named_parameters()}
            loc, scale = functional_call(head, params, (features, stacked, zv))
            cache.update(z=zv, dists=private_distributions(loc, scale, stacked))
        return cache["dists"]

    return distributions


# --------------------------------------------------------------------------- encoder inputs

# layers that read the raw input with their own dtype; the first of an nn.Sequential is checked
_INPUT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.GroupNorm,
                 nn.modules.batchnorm._NormBase)
# errors that torch raises for mismatched dtypes ("mat1 and mat2 must have the same dtype",
# "Input type (double) and bias type (float) ...", "expected scalar type Float but found
# Double", "... not implemented for 'Long'")
_DTYPE_ERROR = ("dtype", "scalar type", "type (", "not implemented for '")
_NOT_INPUT_ERRORS = tuple({NotImplementedError,
                           *(getattr(mod, "OutOfMemoryError") for mod in (torch, torch.cuda)
                             if hasattr(mod, "OutOfMemoryError"))})
_DTYPE_FIX = {torch.float32: ".float()", torch.float64: ".double()", torch.float16: ".half()",
              torch.bfloat16: ".bfloat16()"}


def _first_layer(encoder: nn.Module) -> nn.Module:
    """The module reading the input: the first entry of (nested) plain ``nn.Sequential`` modules."""
    layer = encoder
    while isinstance(layer, nn.Sequential) and len(layer) and \
            type(layer).forward is nn.Sequential.forward:
        layer = layer[0]
    return layer


def _autocast(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled()


def _dtype_message(modality: str, x: torch.Tensor, expected: torch.dtype) -> str:
    fix = _DTYPE_FIX.get(expected, f".to({expected})")
    msg = (f"modality '{modality}': data has dtype {x.dtype} but its encoder's parameters are "
           f"{expected}; convert the data, data['{modality}']{fix}")
    if x.dtype == torch.uint8:
        msg += " (8-bit images usually also want scaling to [0, 1]: .float() / 255)"
    elif x.is_floating_point():
        msg += f", or the encoder (and the model) to the data's dtype, module.to({x.dtype})"
    return msg


def check_encoder_input(modality: str, encoder: nn.Module, x: torch.Tensor) -> None:
    """Check ``x``, a modality's input ``(B, ...)``, against what its encoder's first layer reads.

    Where that layer is known — ``encoder`` itself or the first entry of a plain
    ``nn.Sequential`` (an :class:`~pyro_mmvae.guides.MLPEncoder`) being an ``nn.Linear``, a
    convolution or a normalisation layer — raises ``TypeError`` (naming the modality, the data's
    dtype, the parameters' dtype and the fix, e.g. ``.float()``) when the dtypes differ, and
    ``ValueError`` when an ``nn.Linear`` would read another number of features than the data's
    last dim (e.g. an unflattened image ``(N, 1, 8, 8)`` into ``Linear(64, ...)``) or a
    convolution another number of channels. Other encoders are checked by running them
    (:func:`run_encoder`). Under ``torch.autocast`` the dtype is not checked.
    """
    layer = _first_layer(encoder)
    if not isinstance(layer, _INPUT_LAYERS) or (
            isinstance(layer, nn.modules.lazy.LazyModuleMixin)
            and layer.has_uninitialized_params()):
        return
    param = next(layer.parameters(recurse=False), None)
    if param is not None and x.dtype != param.dtype and not _autocast(x):
        raise TypeError(_dtype_message(modality, x, param.dtype))
    shape = tuple(x.shape)
    if isinstance(layer, nn.Linear):
        k = layer.in_features
        if x.dim() < 2 or x.shape[-1] != k:
            hint = f"expected (N, {k})"
            if x.dim() > 2 and x[:1].numel() == k:
                hint += f"; flatten it, data['{modality}'].flatten(1)"
            raise ValueError(f"modality '{modality}': its encoder's first layer, Linear("
                             f"in_features={k}), reads the data's last dim, but the data has "
                             f"shape {shape} ({hint})")
    elif isinstance(layer, nn.modules.conv._ConvNd):
        nd, c = len(layer.kernel_size), layer.in_channels
        if x.dim() != nd + 2 or x.shape[1] != c:
            spatial = ", ".join(["..."] * nd)
            raise ValueError(f"modality '{modality}': its encoder's first layer, "
                             f"{type(layer).__name__}(in_channels={c}), reads (N, {c}, "
                             f"{spatial}), but the data has shape {shape}")


def run_encoder(modality: str, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder(x)``; a ``RuntimeError`` or ``ValueError`` from it (torch's ``mat1 and mat2
    shapes cannot be multiplied``, a reshape, a network's own shape check) re-raises as
    ``ValueError`` naming the modality and the input's shape and dtype, with the original
    message (and as ``TypeError`` when it is a dtype mismatch with the encoder's parameters).
    Out-of-memory and ``NotImplementedError`` pass through unchanged."""
    try:
        return encoder(x)
    except (RuntimeError, ValueError) as err:
        if isinstance(err, _NOT_INPUT_ERRORS):
            raise
        param = next((p for p in encoder.parameters() if p.is_floating_point()), None)
        dtype_error = any(s in str(err) for s in _DTYPE_ERROR)
        if param is not None and x.dtype != param.dtype and dtype_error:
            raise TypeError(f"{_dtype_message(modality, x, param.dtype)} ({err})") from err
        raise ValueError(f"modality '{modality}': its encoder failed on the input of shape "
                         f"{tuple(x.shape)} (dtype {x.dtype}): {err}") from err
