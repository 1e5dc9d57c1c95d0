r"""Decode only what is scored: run a decoder on the rows whose mask scores its modality.

The library's bounds call the model once with masks stacked on plates: MVAE's objective scores
modality :math:`m` in the joint term and in its own unimodal term only, yet the model is called
with latents ``(T, S, N, D)`` for all :math:`T = 1 + M + k` terms; the masked bound scores each
modality under either :math:`z_S` or :math:`z_O`, never both. Decoding every row and masking
afterwards does :math:`T` decoder passes per data point and modality where two are read.

:func:`decode_scored` gathers the rows of the latent code whose mask is True, decodes those
(one call on ``(R, D)``), and returns a :class:`ScoredRows` distribution with the site's batch
shape: the decoder's distribution at those rows, log-density 0 elsewhere (rows
:func:`~pyro_mmvae.protocol.observe` masks out anyway), so values and gradients equal decoding
everything (``tests/models/test_decode_scored.py``) while the decoder, its log-density and
their backward pass run on the scored rows only. It only does so inside
:func:`pyro_mmvae.protocol.scoring` — the bounds, ``log_likelihood`` and ``rate_distortion``,
which read nothing but the log-densities of observed entries — and only when fewer rows are
scored than the code has; everywhere else (``Predictive``, coherence, generation) it is the
plain ``decoder(code)``, so cross-generations are real decoder draws.

A model written by hand uses it the same way::

    from pyro_mmvae.decoding import decode_scored
    observe(m, decode_scored(decoder, z, mask, m), data, mask)

Any distribution family works (its ``log_prob``, ``sample`` and ``support`` are all that is
used); the decoder must accept a 2-D code ``(R, D)``.

**Recomputed decoder activations.** A bound that decodes every mixture component for every data
point (``MixtureMultimodalELBO``'s stratified and all-components average forms: ``2^M - 1``
codes per point for MoPoE) keeps ``rows x width x layers`` activations of every decoder for the
backward pass: a step of MoPoE at ``M = 10``, batch 128, with 128-wide two-layer MLP decoders
peaks at +2.4 GiB of live memory, +1.1 GiB with them recomputed.
Inside :func:`recomputed_decoders` the library's decoders run their networks through
:func:`run_network`, under activation checkpointing (``torch.utils.checkpoint``, non-reentrant,
random state preserved): only each network's input and output are kept, and its intermediate
activations are recomputed during the backward pass, for about one more forward pass of the
decoder networks and the same values and gradients. A hand-written model gets the same by
calling its networks as ``run_network(net, z)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Mapping, NamedTuple, Optional

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.util import broadcast_shape
from torch.distributions import Distribution
from torch.utils.checkpoint import checkpoint

from pyro_mmvae.nn import apply_batched
from pyro_mmvae.protocol import enclosing_plate_shape, is_scoring

_RECOMPUTE = [False]  # inside recomputed_decoders()


@contextmanager
def recomputed_decoders(enabled: bool = True):
    """Inside (with ``enabled``), :func:`run_network` keeps no intermediate activations of the
    networks it runs: they are recomputed in the backward pass (module docstring)."""
    previous = _RECOMPUTE[0]
    _RECOMPUTE[0] = bool(enabled)
    try:
        yield
    finally:
        _RECOMPUTE[0] = previous


def run_network(net: Callable, code: torch.Tensor) -> torch.Tensor:
    """``net`` on ``code (..., D)``, its leading dims flattened into one for the call and
    restored on the output (:func:`~pyro_mmvae.nn.apply_batched`); inside
    :func:`recomputed_decoders`, while gradients are recorded, under activation checkpointing.
    The library's decoders call their networks through it."""
    if _RECOMPUTE[0] and torch.is_grad_enabled():
        return checkpoint(apply_batched, net, code, 1, use_reentrant=False)
    return apply_batched(net, code, 1)


class Rows(NamedTuple):
    """The rows a modality's site scores: ``shape``, the site's leading batch shape (the
    latent's batch dims broadcast with its mask and the enclosing plates), and ``index``, the
    positions ``(R,)`` in the flattened ``shape`` where the mask is True."""

    shape: torch.Size
    index: torch.Tensor


def scored_rows(mask: Optional[Mapping], modality: str, batch_shape,
                plate_shape: Optional[torch.Size] = None) -> Optional[Rows]:
    """The :class:`Rows` to decode for ``modality``, or None (decode all).

    None outside :func:`~pyro_mmvae.protocol.scoring`, when ``mask`` has no tensor entry for
    the modality, or when every row of ``batch_shape`` would be decoded anyway. The mask
    ``(..., N)`` is broadcast against ``batch_shape`` (the latent's batch dims, e.g.
    ``(T, S, N)``) and the enclosing plates, right-aligned as ``poutine.mask`` and Pyro's
    broadcasting do, so the rows have the site's batch shape. ``plate_shape``: the enclosing
    plates' :func:`~pyro_mmvae.protocol.enclosing_plate_shape` when the caller has it (one
    look-up for all modalities); None looks it up.
    """
    if not is_scoring() or not mask:
        return None
    on = mask.get(modality)
    if not torch.is_tensor(on) or on.dim() == 0 or bool(on.all()):
        return None  # (every row scored: no fewer rows than decoding the code once)
    if plate_shape is None:
        plate_shape = enclosing_plate_shape()
    shape = torch.Size(broadcast_shape(tuple(batch_shape), on.shape, plate_shape))
    index = on.expand(shape).reshape(-1).nonzero().squeeze(-1)
    if index.numel() >= math.prod(batch_shape):
        return None  # no fewer rows than decoding the code once
    return Rows(shape, index)


class ScoredRows(TorchDistribution):
    r"""The distribution of a site whose decoder ran on its scored rows only.

    ``fn`` is the decoder's distribution at the ``R`` rows of ``rows`` (a :class:`Rows`: the
    site's leading batch dims and the flat positions of the scored rows), batch
    ``(R, *rest)``; the site's distribution has batch ``(*rows.shape, *rest)`` and ``fn``'s
    event. :meth:`log_prob` evaluates ``fn`` at those rows and is 0 elsewhere — rows the
    site's mask does not score, so ``poutine.mask`` zeroes them anyway; :meth:`sample` is
    ``fn``'s draw at the scored rows and its first row's draw elsewhere (values in the
    support, as :func:`~pyro_mmvae.protocol.observe` needs for a constrained likelihood).
    Nothing but log-densities (and a support) is read while scoring.
    """

    arg_constraints = {}

    def __init__(self, fn: Distribution, rows: Rows):
        self.fn, self.rows = fn, rows
        batch = rows.shape + fn.batch_shape[1:]
        super().__init__(batch, fn.event_shape, validate_args=False)

    @property
    def support(self):
        return self.fn.support

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError("ScoredRows cannot be expanded to another batch shape")

    def _scatter(self, rowwise: torch.Tensor, fill: Optional[torch.Tensor] = None):
        """``(R, *tail)`` values of the scored rows into ``(*rows.shape, *tail)``, ``fill``
        (broadcast to the tail; zeros if None) elsewhere."""
        tail = rowwise.shape[1:]
        size = (math.prod(self.rows.shape),) + tail
        full = rowwise.new_zeros(size) if fill is None else fill.expand(size).clone()
        return full.index_copy_(0, self.rows.index, rowwise).reshape(self.rows.shape + tail)

    def log_prob(self, value):
        lp = self.fn.log_prob(_gather(value, self.rows, self.batch_shape + self.event_shape))
        return self._scatter(lp)  # (R, *rest) -> the site's batch shape

    def sample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise NotImplementedError("ScoredRows draws one sample at a time")
        x = self.fn.sample()
        return self._scatter(x, x[:1])

    @property
    def mean(self):
        mean = self.fn.mean
        return self._scatter(mean, mean[:1].detach())


def _gather(value: torch.Tensor, rows: Rows, shape: torch.Size) -> torch.Tensor:
    """The scored rows ``(R, *shape[lead:])`` of ``value`` broadcast to ``shape`` (whose
    leading dims are ``rows.shape``), without materialising the broadcast: a value that
    varies only along its trailing leading dims (the data, ``(N, ...)``, against rows
    ``(T, S, N)``) is indexed at ``index mod`` its own rows."""
    lead = len(rows.shape)
    dims = value.shape[:max(value.dim() - (len(shape) - lead), 0)]  # the value's leading dims
    dims = (1,) * (lead - len(dims)) + tuple(dims)
    own = lead
    while own > 0 and dims[own - 1] == rows.shape[own - 1]:
        own -= 1
    if all(d == 1 for d in dims[:own]):  # constant along the first `own` leading dims
        inner = math.prod(rows.shape[own:])
        kept = len(shape) - own
        if value.dim() > kept:  # drop the value's leading size-1 dims
            value = value.reshape(value.shape[value.dim() - kept:])
        flat = value.expand(shape[own:]).reshape((inner,) + tuple(shape[lead:]))
        index = rows.index if own == 0 else rows.index.remainder(inner)
        return flat.index_select(0, index)
    flat = value.expand(shape).reshape((math.prod(rows.shape),) + tuple(shape[lead:]))
    return flat.index_select(0, rows.index)


def decode_scored(decoder: Callable, code: torch.Tensor, mask: Optional[Mapping],
                  modality: str) -> Distribution:
    r"""``decoder(code)``, decoding only the rows whose ``mask[modality]`` is True while scoring.

    :param decoder: ``code (..., D) -> p(x_m | z)`` with batch ``code.shape[:-1]``; it must
        accept a 2-D code ``(R, D)`` (every network that broadcasts over leading dims does).
    :param code: the latent code ``(..., N, D)`` (leading particle / subset dims allowed).
    :param mask: the model's mask ``{modality: (..., N) bool}`` as the bound passed it.
    :param modality: the modality whose site the distribution is for.
    :returns: a :class:`ScoredRows` with batch ``broadcast(code.shape[:-1],
        mask[modality].shape)`` where rows were gathered, else ``decoder(code)``.
    """
    rows = scored_rows(mask, modality, code.shape[:-1])
    return decoder(code) if rows is None else decode_rows(decoder, code, rows)


def decode_rows(decoder: Callable, code: torch.Tensor, rows: Rows) -> ScoredRows:
    """``decoder`` on the rows of ``code`` (``(..., D)``) that ``rows`` (from
    :func:`scored_rows`) scores, as a :class:`ScoredRows` of ``rows.shape``."""
    if not rows.index.numel():  # nothing scored: one row gives valid parameters for all
        rows = Rows(rows.shape, rows.index.new_zeros(1))
    flat = code.expand(rows.shape + code.shape[-1:]).reshape(-1, code.shape[-1])
    return ScoredRows(decoder(flat.index_select(0, rows.index)), rows)
