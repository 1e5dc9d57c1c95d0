r"""Pictures of a trained multimodal VAE: reconstructions, cross-generations, samples, curves.

- :func:`conditional_generations`: every modality generated from :math:`z\sim q(z\mid x_S)`
  for one or several input subsets ``S`` (one guide call and one model call for all subsets,
  as :func:`pyro_mmvae.eval.conditional_coherence` does);
- :func:`unconditional_samples`: ``model({}, mask)`` with every modality masked out, so
  :func:`pyro_mmvae.observe` generates them all from the prior;
- :func:`generation_grid` / :func:`save_generation_grid`: a PNG with one column per data
  point, the inputs on top and one row per generated modality below; images are drawn with
  :func:`torchvision.utils.make_grid`, one-hot text is written out as its decoded string, and
  vector modalities as small line plots;
- :func:`plot_coherence` (coherence vs number of inputs, MoPoE's PolyMNIST figure) and
  :func:`plot_rate_distortion`.

Every ``save_*`` function writes atomically (temporary file, then :func:`os.replace`). Figures
are built with matplotlib's object API (:class:`matplotlib.figure.Figure` on an Agg canvas), not
with ``pyplot``: nothing here changes the backend or registers figures with ``pyplot``, so a
notebook's backend and open figures are left as they are. :func:`generation_grid` returns such a
``Figure`` (Jupyter displays it; ``fig.savefig`` writes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from pyro_mmvae.data.text import ALPHABET, decode_text
from pyro_mmvae.eval.coherence import (_device, _generated, decoded_value, generation_trace,
                                       subset_matrix, unconditional_trace)
from pyro_mmvae.io import atomic_write
from pyro_mmvae.protocol import num_points, validate_batch


def _figure(**kwargs):
    """A ``matplotlib.figure.Figure`` with its own Agg canvas (no pyplot, no backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), mode=None)


def _finish_axes(fig, ax, path, title: str) -> Path:
    """Grid, legend and title of a one-axes figure, then write it as a PNG."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return Path(path)


@torch.no_grad()
def conditional_generations(model, guide, data: Mapping[str, torch.Tensor], subsets,
                            use_mean: bool = True) -> dict:
    r"""Generations of every modality from :math:`q(z\mid x_S)` for each subset ``S``.

    :param subsets: subset specs (``"m0+m2"`` or iterables of names), as in
        :func:`~pyro_mmvae.eval.coherence.subset_matrix`.
    :returns: ``{subset name: {modality: (B, ...)}}`` — likelihood means (text: per-position
        argmax, one-hot) with ``use_mean``, else samples.
    """
    validate_batch(data, None)
    modalities = list(data)
    names, rows = subset_matrix(subsets, modalities, next(iter(data.values())).device)
    b, s = num_points(data), len(names)
    model_tr = generation_trace(model, guide, data, rows,
                                [("subsets", s, -3), ("particles", 1, -2)])
    out = {name: {} for name in names}
    for m in modalities:
        site = _generated(model_tr, m)
        event = tuple(site["fn"].event_shape)
        x = decoded_value(site, use_mean).reshape((s, b) + event)
        for i, name in enumerate(names):
            out[name][m] = x[i]
    return out


@torch.no_grad()
def unconditional_samples(model, num_samples: int, use_mean: bool = True,
                          modalities: Optional[Sequence[str]] = None) -> dict:
    """``{modality: (n, ...)}`` generated from the prior: ``model({}, mask)`` with the mask
    all False for ``modalities`` (default: ``model.modalities``; a plain function must be told
    them, as the mask gives the number of points), every ``"x_<m>"`` site of the trace kept."""
    if modalities is None:
        modalities = getattr(model, "modalities", None)
        if modalities is None:
            raise ValueError("pass modalities=[...]: the model has no 'modalities' attribute "
                             "and the mask must name them")
    trace = unconditional_trace(model, modalities, num_samples, _device(model))
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and name.startswith("x_"):
            out[name[2:]] = decoded_value(site, use_mean)
    return out


def _kind(x: torch.Tensor) -> str:
    if x.dim() == 4:
        return "image"
    if x.dim() == 3 and x.shape[-1] == len(ALPHABET):
        return "text"
    return "vector"


def _image_row(ax, x: torch.Tensor):
    from torchvision.utils import make_grid
    grid = make_grid(x.detach().float().cpu().clamp(0, 1), nrow=x.shape[0], padding=1,
                     pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")


def _text_row(ax, x: torch.Tensor):
    words = decode_text(x.detach().cpu())
    n = len(words)
    for i, w in enumerate(words):
        ax.text((i + 0.5) / n, 0.5, repr(w.rstrip()), ha="center", va="center", fontsize=7,
                family="monospace", transform=ax.transAxes)


def _vector_row(ax, x: torch.Tensor):
    x = x.detach().cpu().reshape(x.shape[0], -1).numpy()
    n, d = x.shape
    for i in range(n):
        span = np.ptp(x[i]) or 1.0
        ax.plot(i + 0.05 + 0.9 * np.arange(d) / max(d - 1, 1), 0.1 + 0.8 * (x[i] - x[i].min())
                / span, lw=0.7)
    ax.set_xlim(0, n)
    ax.set_ylim(0, 1)


def generation_grid(rows: Sequence[tuple], title: Optional[str] = None):
    """A ``matplotlib.figure.Figure`` with one row per ``(label, tensor (n, ...))`` entry (same
    ``n`` for all)."""
    n = rows[0][1].shape[0]
    width = max(4.0, 0.7 * n + 1.5)
    image_height = (width - 1.5) / n + 0.15  # one square image per column
    heights = [image_height if _kind(x) == "image" else 0.4 for _, x in rows]
    fig = _figure(figsize=(width, sum(heights) + 0.5))
    axes = fig.subplots(len(rows), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], rows):
        {"image": _image_row, "text": _text_row, "vector": _vector_row}[_kind(x)](ax, x)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_generation_grid(path, model, guide, data: Mapping[str, torch.Tensor], given,
                         num_columns: int = 8, use_mean: bool = True) -> Path:
    """PNG of the first ``num_columns`` data points: the inputs ``given`` (a subset spec) on
    top, then every modality generated from :math:`q(z\\mid x_{given})` (reconstructions for
    the inputs, cross-generations for the rest)."""
    batch = {m: x[:num_columns] for m, x in data.items()}
    name, = subset_matrix([given], list(data))[0]
    gen = conditional_generations(model, guide, batch, [given], use_mean)[name]
    members = name.split("+")
    rows = [(f"input {m}", batch[m]) for m in members]
    rows += [(f"{'recon.' if m in members else 'generated'} {m}", x) for m, x in gen.items()]
    _save(generation_grid(rows, f"generated from q(z | {name})"), path)
    return Path(path)


def save_samples_grid(path, model, num_samples: int = 8, use_mean: bool = True,
                      modalities: Optional[Sequence[str]] = None) -> Path:
    """PNG of ``num_samples`` unconditional samples, one row per modality
    (:func:`unconditional_samples`)."""
    samples = unconditional_samples(model, num_samples, use_mean, modalities)
    _save(generation_grid([(f"sample {m}", x) for m, x in samples.items()],
                          "unconditional samples, z ~ p(z)"), path)
    return Path(path)


def plot_coherence(path, by_num_inputs: Mapping[str, Mapping], title: str = "") -> Path:
    """Line plot of coherence (or accuracy) against the number of input modalities:
    ``by_num_inputs = {curve label: {num inputs: value}}``."""
    fig = _figure(figsize=(4.2, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in by_num_inputs.items():
        pts = sorted((int(k), v) for k, v in curve.items() if v is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("number of input modalities")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    return _finish_axes(fig, ax, path, title)


def plot_rate_distortion(path, points: Mapping[str, tuple], title: str = "",
                         ylabel: str = "distortion (nats)") -> Path:
    """Scatter of (rate, distortion) pairs: ``points = {label: (rate, distortion)}``, with
    distortion = −reconstruction log-likelihood, both in nats per data point."""
    fig = _figure(figsize=(4.2, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, (rate, distortion) in points.items():
        ax.scatter([rate], [distortion], label=label)
    ax.set_xlabel("rate (nats)")
    ax.set_ylabel(ylabel)
    return _finish_axes(fig, ax, path, title)
