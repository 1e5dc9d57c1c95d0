r"""Schedules for the bounds' ``beta``: a callable ``step -> beta``.

Every bound (:class:`~pyro_mmvae.infer.MultimodalELBO` and its subclasses) accepts for
``beta`` either one finite number ``> 0`` or a *schedule*: any callable taking the step (an
``int >= 0``, the number of optimisation steps already taken) and returning a finite number
``>= 0``. The bound does not count steps itself; whoever drives the optimisation tells it the
step with :meth:`~pyro_mmvae.infer.MultimodalELBO.set_step` before each step
(:func:`pyro_mmvae.train.fit` does, and stores the step in its checkpoints so a resumed run
continues the schedule). ``bound.beta`` is then the schedule's value at that step.

A schedule may return 0 (e.g. the first step of :func:`linear_warmup`): the rate terms are then
weighted by 0 and that step trains the reconstruction alone, as in MVAE's annealing. A constant
``beta`` must still be ``> 0``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable

import torch

Schedule = Callable[[int], float]


def schedule_value(schedule: Schedule, step: int, name: str = "beta") -> float:
    """``schedule(step)`` as a Python float, or a ``ValueError`` naming ``name`` and the step if
    it is not a finite number ``>= 0`` (``TypeError`` if it is not a number at all)."""
    value = schedule(step)
    if torch.is_tensor(value):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} schedule returned a tensor of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype} at step {step}; it must return a number")
        value = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} schedule returned {type(value).__name__} {value!r} at step "
                        f"{step}; it must return a number")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} schedule returned {value} at step {step}; {name} must be "
                         "finite and >= 0")
    return value


def check_schedule(schedule: Schedule, steps: Iterable[int], name: str = "beta") -> None:
    """Evaluate ``schedule`` at every step of ``steps``; raise as :func:`schedule_value` does
    at the first bad value."""
    for step in steps:
        schedule_value(schedule, step, name)


class LinearWarmup:
    r"""The schedule :math:`\beta(k) = \mathrm{start} + (\mathrm{end}-\mathrm{start})
    \min(k, \mathrm{steps}) / \mathrm{steps}`: linear from ``start`` at step 0 to ``end`` at
    step ``steps``, constant after. Picklable, with a readable ``repr``."""

    def __init__(self, steps: int, start: float = 0.0, end: float = 1.0):
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"linear_warmup: steps must be an integer >= 1, got {steps!r}")
        for label, x in (("start", start), ("end", end)):
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or \
                    not math.isfinite(x) or x < 0:
                raise ValueError(f"linear_warmup: {label} must be a finite number >= 0, got "
                                 f"{x!r}")
        if end <= 0:
            raise ValueError(f"linear_warmup: end must be > 0, got {end!r}")
        self.steps, self.start, self.end = int(steps), float(start), float(end)

    def __call__(self, step: int) -> float:
        frac = min(max(int(step), 0), self.steps) / self.steps
        return self.start + (self.end - self.start) * frac

    def __repr__(self) -> str:
        return f"linear_warmup(steps={self.steps}, start={self.start}, end={self.end})"


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> LinearWarmup:
    r"""KL warm-up (MVAE's annealing factor, MultiVae's ``warmup``): ``beta`` rises linearly
    from ``start`` (default 0) at step 0 to ``end`` (default 1) at step ``steps`` and stays
    there. Steps count optimisation steps (mini-batches), not epochs: for a warm-up over
    ``E`` epochs pass ``E * steps_per_epoch``.

    Example::

        elbo = MaskedMultimodalELBO(beta=linear_warmup(10 * steps_per_epoch))
        fit(model, guide, elbo, data, epochs=30, batch_size=128)   # fit advances the step
    """
    return LinearWarmup(steps, start, end)
