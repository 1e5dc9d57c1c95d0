"""Argument checks shared by the library: counts, positive reals and per-modality weights,
each an error naming the argument (``TypeError`` for the wrong kind of value, ``ValueError`` for
a value out of range) before any computation."""

from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_positive_int(value, name: str, *, allow_none: bool = False):
    """``value`` as a Python ``int`` if it is a positive integer; else an error naming ``name``.

    Counts (``num_particles``, ``num_samples``, ``chunk_size``, ``batch_size``, ...) are
    checked with it before any computation. Accepted: Python ints and integer scalars of numpy
    and torch (0-d integer tensors). Rejected with ``TypeError``: bools (``True`` is not a
    count), floats — integral ones such as ``2.0`` too, so that a count never comes from a
    computation that silently rounded (pass ``int(x)``) — and anything else; with
    ``ValueError``: zero and negative integers. With ``allow_none``, None passes through (an
    automatic choice, e.g. ``chunk_size=None``).
    """
    if value is None and allow_none:
        return None
    kind = "a positive integer" + (" or None" if allow_none else "")
    if torch.is_tensor(value):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_floating_point() or \
                value.is_complex():
            raise TypeError(f"{name} must be {kind}, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        value = int(value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # int, numpy integers
    else:
        hint = ""
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and \
                math.isfinite(value) and float(value).is_integer():
            hint = f"; pass int({value!r})"
        raise TypeError(f"{name} must be {kind}, got {_describe(value)}{hint}")
    if value < 1:
        raise ValueError(f"{name} must be {kind}, got {value}")
    return value


def _real(value, name: str, kind: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be {kind}, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {kind}, got {_describe(value)}")
    return float(value)


def check_positive_float(value, name: str) -> float:
    """``value`` as a Python ``float`` if it is a finite number ``> 0``; else an error naming
    ``name``: ``TypeError`` for a non-number (a bool, a string, a list or a callable),
    ``ValueError`` for NaN, infinity, zero or a negative value. Used for a constant ``beta``
    (the bounds take a schedule as a callable, :mod:`pyro_mmvae.infer.schedules`, before
    calling this)."""
    kind = "a finite positive number"
    if callable(value) or isinstance(value, (list, tuple, range)):
        raise TypeError(f"{name} must be {kind}, got {_describe(value)}; a list of values is "
                        "not a schedule: pass a callable step -> value (e.g. "
                        "pyro_mmvae.infer.linear_warmup)")
    x = _real(value, name, kind)
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be positive and finite, got {x}")
    return x


def check_weights(weights, name: str = "likelihood_weights") -> dict:
    """``{modality: float}`` if ``weights`` is None (``{}``) or a mapping of finite numbers
    ``>= 0``; else an error naming ``name`` and the modality: ``TypeError`` for a non-mapping or
    a non-number weight, ``ValueError`` for a NaN, infinite or negative weight. (Whether each
    modality exists is checked against the data, when the bound first sees a batch.)"""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise TypeError(f"{name} must be a dict {{modality: weight}}, got "
                        f"{type(weights).__name__}")
    out = {}
    for m, w in weights.items():
        x = _real(w, f"{name}: modality '{m}' weight", "a finite number >= 0")
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"{name}: modality '{m}' has weight {x}; weights must be finite "
                             "and >= 0")
        out[m] = x
    return out
