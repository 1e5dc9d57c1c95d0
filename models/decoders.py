"""Decoders: ``z (..., B, D) -> p(x_m | z)`` with batch ``(..., B)`` and the modality's event.

Each decoder wraps a network ``net: z -> parameters`` whose output has the modality's shape
after the batch dims, e.g. ``(..., B, D_m)`` or ``(..., B, C, H, W)``; all trailing output
dimensions beyond ``z``'s batch dims are treated as event dimensions. The network sees one
batch dim: the leading dims of ``z`` (particles, subsets, data points) are flattened into one for
the call and restored on its output (:func:`~pyro_mmvae.decoding.run_network`), so any network
taking ``(R, D)`` codes works, and ``nn.Linear`` layers run without the reshapes they would
otherwise make on every call (and their backward nodes); inside
:func:`~pyro_mmvae.decoding.recomputed_decoders` its activations are recomputed in the backward
pass instead of kept.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from pyro.distributions import Bernoulli, Laplace, Normal, OneHotCategorical
from torch import nn

from pyro_mmvae.decoding import run_network
from pyro_mmvae.nn import inverse_positive_scale, positive_scale


def _event_dims(z: torch.Tensor, out: torch.Tensor) -> int:
    return out.dim() - (z.dim() - 1)


class _LocScaleDecoder(nn.Module):
    family = None

    def __init__(self, net: nn.Module, scale: Union[float, Sequence[float], torch.Tensor] = 1.0,
                 learn_scale: bool = False, min_scale: float = 1e-3):
        super().__init__()
        self.net = net
        self.min_scale = min_scale
        raw = inverse_positive_scale(torch.as_tensor(scale, dtype=torch.get_default_dtype()),
                                     min_scale)
        if learn_scale:
            self.raw_scale = nn.Parameter(raw)
        else:
            self.register_buffer("raw_scale", raw)

    @property
    def scale(self) -> torch.Tensor:
        raw = self.raw_scale
        if raw.requires_grad:
            return positive_scale(raw, self.min_scale)
        # a fixed scale is computed once (again when the buffer is replaced or written to)
        key = (raw, raw._version, self.min_scale)
        cached = self.__dict__.get("_fixed_scale")
        if cached is None or cached[0][0] is not raw or cached[0][1:] != key[1:]:
            cached = (key, positive_scale(raw, self.min_scale))
            self.__dict__["_fixed_scale"] = cached
        return cached[1]

    def forward(self, z):
        return self.likelihood(run_network(self.net, z), z)

    def likelihood(self, loc, z):
        """The distribution from the network's output ``loc`` at ``z`` (``forward`` is
        ``likelihood(net(z), z)``; :class:`~pyro_mmvae.models.MultimodalModel` runs the
        networks of several modalities as one batched call and then this)."""
        return self.family(loc, self.scale.expand(loc.shape)).to_event(_event_dims(z, loc))


class GaussianDecoder(_LocScaleDecoder):
    """``p(x|z) = Normal(net(z), scale)``; ``scale`` fixed or learned (scalar or per feature)."""

    family = Normal


class LaplaceDecoder(_LocScaleDecoder):
    """``p(x|z) = Laplace(net(z), scale)`` (MoPoE's image likelihood)."""

    family = Laplace


class BernoulliDecoder(nn.Module):
    """``p(x|z) = Bernoulli(logits=net(z))`` for binary (or [0, 1]-valued) data.

    Arguments are not validated, so [0, 1]-valued data (image intensities) are scored by the
    continuous relaxation of the log-likelihood. A placeholder at masked-out entries never
    reaches ``log_prob`` anyway: :func:`~pyro_mmvae.protocol.observe` puts a draw there.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.likelihood(run_network(self.net, z), z)

    def likelihood(self, logits, z):
        """The distribution from the network's output at ``z`` (see ``GaussianDecoder``)."""
        return Bernoulli(logits=logits, validate_args=False).to_event(_event_dims(z, logits))


class CategoricalDecoder(nn.Module):
    """``p(x|z) = OneHotCategorical(logits=net(z))`` for one-hot data, e.g. text ``(B, L, A)``.

    The last output dim is the category (the distribution's own event); the dims between the
    batch and it are further event dims: logits ``(..., B, L, A)`` give event ``(L, A)`` (one
    categorical per character, summed), logits ``(..., B, A)`` a single categorical, event
    ``(A,)``. ``log p(x|z)`` is the sum of ``log_softmax(logits)`` at the one-hot indices.
    Any placeholder of a missing modality (all zeros, say) is fine inside a model:
    :func:`~pyro_mmvae.protocol.observe` replaces masked-out entries by a draw (a valid
    one-hot) before they are scored. Arguments are still not validated, so code that scores
    the decoder's distribution at the raw data itself (an all-zero row scores category 0) or
    at soft one-hot vectors does not raise.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.likelihood(run_network(self.net, z), z)

    def likelihood(self, logits, z):
        """The distribution from the network's output at ``z`` (see ``GaussianDecoder``)."""
        return OneHotCategorical(logits=logits, validate_args=False).to_event(
            _event_dims(z, logits) - 1)
