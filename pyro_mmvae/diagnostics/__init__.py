"""Diagnostics: conversion to ArviZ (:func:`to_inference_data`) and plots (:mod:`.plots`).

``arviz`` is imported on first use of :func:`to_inference_data` (it takes seconds to import).
"""

__all__ = ["to_inference_data"]


def __getattr__(name):
    if name == "to_inference_data":
        from .arviz import to_inference_data
        return to_inference_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
