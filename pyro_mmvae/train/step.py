"""One optimisation step: :class:`SVIStep` (``SVI.step`` without re-finding the parameters),
the optimiser, and gradient transforms."""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import pyro
import pyro.optim
import torch
from pyro import poutine

from pyro_mmvae.optim import SharedOptim
from pyro_mmvae.params import registration_entries, registration_skipped, still_registered


class NonFiniteStep(ArithmeticError):
    """A step produced a non-finite loss or gradient (``what`` says which: ``"loss"`` or
    ``"gradient"``); raised by :class:`SVIStep` before the update."""

    def __init__(self, loss: float, what: str):
        super().__init__(what)
        self.loss = loss
        self.what = what


def make_optimizer(lr: float, clip_norm: Optional[float] = None,
                   betas: Tuple[float, float] = (0.9, 0.999)) -> pyro.optim.PyroOptim:
    """Adam over all parameters as one ``torch.optim.Adam`` with its multi-tensor
    (``foreach``) kernels (:class:`~pyro_mmvae.optim.SharedOptim`: the updates of
    ``pyro.optim.Adam`` bit for bit, one optimiser step instead of one per parameter,
    checkpoints in its format), or
    ``pyro.optim.ClippedAdam`` with gradient-norm clipping at ``clip_norm``."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if clip_norm is None:
        return SharedOptim(torch.optim.Adam, {"lr": lr, "betas": betas, "foreach": True})
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    return pyro.optim.ClippedAdam({"lr": lr, "betas": betas, "clip_norm": clip_norm})


class SVIStep:
    """``SVI(model, guide, optim, loss).step`` — the same parameters, updates, RNG draws and
    returned loss — without the per-step cost of finding the parameters once they are known.

    ``SVI.step`` runs ``loss.loss_and_grads`` under ``poutine.trace(param_only=True)`` to collect
    the parameters at every step, and the library's models and guides send a ``param`` message
    for each of their parameters at every evaluation so that it can. ``SVIStep`` does exactly
    that at its first call and at any call after the param store changed (a parameter
    created, the store cleared, loaded or a value replaced) and records the parameters; the
    other calls run the loss without that trace and step the recorded parameters; under the
    library's bounds (:class:`~pyro_mmvae.infer.MultimodalELBO`) they also skip the
    registration of the top-level library modules
    (:func:`~pyro_mmvae.params.registration_skipped`). (Not under other losses: Pyro's own
    ``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO`` and ``RenyiELBO`` call
    ``backward`` only when their traces hold a ``param`` site, so with a library model and
    guide and the registration skipped they would compute no gradient at all.) A
    non-finite loss or gradient raises :class:`NonFiniteStep` before the update. This is the
    step of :func:`fit`; use it in a loop of your own as ``step = SVIStep(model, guide, loss,
    optim)``, ``value = step(data, mask)``.

    One difference from ``SVI``: a parameter that a program registers only at some steps
    (``pyro.param`` or ``pyro.module`` inside a branch) is stepped, with its zeroed gradient,
    at the others too once it has been found; with Adam its momentum keeps moving it there.

    :param model, guide: Pyro programs taking the same arguments.
    :param loss: a ``pyro.infer.ELBO`` (anything with ``loss_and_grads``).
    :param optim: a :class:`pyro.optim.PyroOptim`
        (e.g. :class:`~pyro_mmvae.optim.SharedOptim`, :func:`make_optimizer`).
    :param gradient_transform: called as ``gradient_transform(params)`` after the backward
        pass and before the gradients are checked and the update is made, to change the
        gradients in place (e.g. :func:`clamp_gradients`); None leaves them as they are.
    """

    def __init__(self, model, guide, loss, optim,
                 gradient_transform: Optional[Callable[[list], None]] = None):
        from pyro_mmvae.infer.base import MultimodalELBO

        self.model, self.guide, self.loss, self.optim = model, guide, loss, optim
        self.gradient_transform = gradient_transform
        # the library's bounds backpropagate whether or not their traces hold param sites
        self.skip_registration = isinstance(loss, MultimodalELBO)
        self.params: Optional[list] = None
        self.entries: tuple = ()
        self.store_size = -1
        self.grads = _FlatGradients()

    def _known(self) -> bool:
        return (self.params is not None and len(pyro.get_param_store()) == self.store_size
                and still_registered(self.entries))

    def __call__(self, *args) -> float:
        """One step on ``args`` (the model's and guide's arguments); returns the loss."""
        known = self._known()
        if known and self.skip_registration:
            with registration_skipped(self.model, self.guide):
                loss = self._loss_and_grads(*args)
        elif known:
            loss = self._loss_and_grads(*args)
        else:
            with poutine.trace(param_only=True) as capture:
                loss = self._loss_and_grads(*args)
            self.params = list({site["value"].unconstrained()
                                for site in capture.trace.nodes.values()})
            self.entries = registration_entries(self.model, self.guide)
            self.store_size = len(pyro.get_param_store())
        value = float(loss)
        if not math.isfinite(value):
            raise NonFiniteStep(value, "loss")
        if self.gradient_transform is not None:
            self.gradient_transform(self.params)
        self.grads.gather(self.params)
        if not self.grads.finite():
            raise NonFiniteStep(value, "gradient")
        self.optim(self.params)
        self.grads.zero()  # SVI's zero_grads: every gradient that exists becomes zeros
        return value

    def _loss_and_grads(self, *args) -> float:
        """The loss, its gradients accumulated into the parameters."""
        return self.loss.loss_and_grads(self.model, self.guide, *args)


def clamp_gradients(limit: float, nan_to_zero: bool = True) -> Callable[[list], None]:
    """A ``gradient_transform`` for :func:`fit` and :class:`SVIStep`: every gradient element
    clamped to ``[-limit, limit]``, NaNs first replaced by 0 (with ``nan_to_zero``) — the
    gradient chain of the authors' code of Hirt et al., "Learning multi-modal generative models
    with permutation-invariant encoders and tighter variational bounds" (TMLR 2024,
    arXiv:2309.00380): NaN → 0, element-wise clip, Adam; unlike ``clip_norm``
    (``ClippedAdam``'s per-parameter norm clipping). Gradients stay in place (the
    views :func:`fit` keeps of them remain valid)."""
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit}")

    def transform(params) -> None:
        for p in params:
            if p.grad is not None:
                if nan_to_zero:
                    torch.nan_to_num_(p.grad, nan=0.0)
                p.grad.clamp_(-limit, limit)
    return transform


class _FlatGradients:
    """The parameters' gradients as views of one flat buffer per (device, dtype), so that
    checking them all for non-finite values and zeroing them are one operation each rather
    than two per parameter (70 parameters: 0.85 ms against 0.05 ms per step on one CPU
    thread).

    Autograd accumulates into an existing ``.grad`` in place, so once a gradient is a view of
    the buffer it stays one; a gradient that is not (new, replaced, or set to None and back by
    other code) makes :meth:`gather` rebuild the buffer, copying the values in. Parameters
    without a gradient are left without one (``torch.optim`` skips them, as after
    ``SVI.step``).
    """

    def __init__(self):
        self.views: dict = {}  # id(param) -> its gradient's view of a buffer
        self.buffers: list = []

    def gather(self, params) -> None:
        views = self.views
        if all(p.grad is None or views.get(id(p)) is p.grad for p in params):
            return
        groups: dict = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        self.views, self.buffers = {}, []
        for (device, dtype), members in groups.items():
            buffer = torch.empty(sum(p.grad.numel() for p in members), device=device,
                                 dtype=dtype)
            offset = 0
            for p in members:
                view = buffer[offset:offset + p.grad.numel()].view_as(p.grad)
                view.copy_(p.grad)
                p.grad = view
                self.views[id(p)] = view
                offset += view.numel()
            self.buffers.append(buffer)

    def finite(self) -> bool:
        """Whether every gradient is finite: the sum of each buffer is (a sum of finite values
        beyond the dtype's range, ~3e38 in float32, counts as non-finite too)."""
        if not self.buffers:
            return True
        return bool(torch.stack([b.sum() for b in self.buffers]).isfinite().all())

    def zero(self) -> None:
        for b in self.buffers:
            b.zero_()


def clear_param_grads() -> None:
    """Drop the gradient of every parameter in the param store."""
    for p in pyro.get_param_store().values():
        p.grad = None
