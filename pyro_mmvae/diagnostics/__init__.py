"""Diagnostics: conversion to ArviZ (:func:`to_inference_data`)."""

from .arviz import to_inference_data

__all__ = ["to_inference_data"]
