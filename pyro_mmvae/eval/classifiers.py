r"""Per-modality label classifiers for coherence evaluation (MoPoE App. B; Hirt et al. App. I).

Coherence (:mod:`pyro_mmvae.eval.coherence`) labels *generated* modalities with a classifier
trained beforehand on the *real* training data of that modality. MoPoE ships pretrained
classifiers and gives no training details ("same as the encoder except the last layer"); here
one classifier per modality is trained with cross-entropy and Adam on the training split:

- images ``(N, C, H, W)``: :class:`pyro_mmvae.nn.ConvImageEncoder` with
  ``out_dim = K``;
- one-hot text ``(N, L, A)``: :class:`pyro_mmvae.nn.TextEncoder` with ``out_dim = K``;
- flat vectors ``(N, D)``: an :class:`~pyro_mmvae.nn.MLP`.

A classifier maps ``(..., *in_shape)`` to logits ``(..., K)``; the predicted label is their
argmax. :func:`save_classifiers` / :func:`load_classifiers` keep them with a run (the file
stores each network's kind, shapes and options, so it is rebuilt without code), and
:func:`classifier_accuracy` reports their own test accuracy, the ceiling of any coherence
measured with them.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_mmvae.io import atomic_write
from pyro_mmvae.nn import MLP, ConvImageEncoder, TextEncoder
from pyro_mmvae.protocol import check_positive_int
from pyro_mmvae.train import fit

KINDS = ("image", "text", "flat")
_FORMAT = "pyro_mmvae.classifiers"
_VERSION = 1


def infer_kind(x: torch.Tensor) -> str:
    """The classifier kind of a modality tensor with a leading batch dim: 4-D ``(N, C, H, W)``
    is ``"image"``, 3-D ``(N, L, A)`` is ``"text"``, 2-D ``(N, D)`` is ``"flat"``."""
    kinds = {4: "image", 3: "text", 2: "flat"}
    if x.dim() not in kinds:
        raise ValueError(f"cannot pick a classifier for data of shape {tuple(x.shape)}: expected "
                         "(N, C, H, W) images, (N, L, A) one-hot text or (N, D) vectors")
    return kinds[x.dim()]


class ModalityClassifier(nn.Module):
    r"""Classifier ``(..., *in_shape) -> logits (..., num_classes)`` for one modality.

    :param kind: ``"image"`` (:class:`~pyro_mmvae.nn.ConvImageEncoder`), ``"text"``
        (:class:`~pyro_mmvae.nn.TextEncoder`) or ``"flat"``
        (:class:`~pyro_mmvae.nn.MLP`).
    :param in_shape: shape of one data point: ``(C, H, W)``, ``(L, A)`` or ``(D,)``.
    :param num_classes: number of labels ``K``.
    :param options: keyword arguments of the network (plain values only, so that they can be
        saved): e.g. ``channels``, ``hidden_dim`` for images and text; ``hidden`` (a tuple of
        widths, default ``(128,)``) for flat data.
    """

    def __init__(self, kind: str, in_shape, num_classes: int, **options):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown classifier kind {kind!r}; expected one of {KINDS}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.kind = kind
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_classes = int(num_classes)
        self.options = dict(options)
        if kind == "image":
            if len(self.in_shape) != 3:
                raise ValueError(f"an image classifier needs in_shape (C, H, W), got "
                                 f"{self.in_shape}")
            self.net = ConvImageEncoder(self.in_shape, self.num_classes, **self.options)
        elif kind == "text":
            if len(self.in_shape) != 2:
                raise ValueError(f"a text classifier needs in_shape (L, A), got {self.in_shape}")
            length, alphabet = self.in_shape
            self.net = TextEncoder(length, self.num_classes, alphabet_size=alphabet,
                                   **self.options)
        else:
            if len(self.in_shape) != 1:
                raise ValueError(f"a flat classifier needs in_shape (D,), got {self.in_shape}")
            options = dict(self.options)
            hidden = tuple(options.pop("hidden", (128,)))
            self.net = MLP(self.in_shape[0], hidden, self.num_classes, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def config(self) -> dict:
        """What :func:`load_classifiers` needs to rebuild the network (plain values)."""
        return {"kind": self.kind, "in_shape": list(self.in_shape),
                "num_classes": self.num_classes, "options": _plain(self.options)}


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"classifier option {value!r} is not a plain value (int, float, str, list) "
                     "and cannot be saved")


def _from_config(config: Mapping) -> ModalityClassifier:
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config["options"].items()}
    return ModalityClassifier(config["kind"], config["in_shape"], config["num_classes"], **options)


@torch.no_grad()
def predict(classifier, x: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Predicted labels ``(N,)`` for ``x (N, ...)``: the argmax of the classifier's scores
    ``(N, K)``; a classifier that returns integer labels ``(N,)`` is taken at its word."""
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    if isinstance(classifier, nn.Module):
        classifier.eval()
    chunks = [x] if batch_size is None else x.split(batch_size)
    out = []
    for chunk in chunks:
        scores = classifier(chunk)
        out.append(scores.argmax(-1) if scores.is_floating_point() else scores.long())
    return torch.cat(out)


class _Supervised(nn.Module):
    """The Pyro model of a classifier ``f``: ``y ~ Categorical(logits=f(x))`` per data point,
    for :func:`~pyro_mmvae.train.fit` (with :class:`_NoLatents` as the guide)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, data, mask=None):
        pyro.module("classifier", self.classifier)
        with pyro.plate("data", data["y"].shape[0]):
            pyro.sample("y", dist.Categorical(logits=self.classifier(data["x"])),
                        obs=data["y"])


class _NoLatents(nn.Module):
    """The guide of a model without latent variables."""

    def forward(self, data, mask=None):
        return None


def train_modality_classifiers(data: Mapping[str, torch.Tensor], labels: torch.Tensor,
                               num_classes: int, epochs: int = 10, batch_size: int = 128,
                               lr: float = 1e-3, seed: int = 0,
                               device: Optional[str] = None, progress: bool = False,
                               mask: Optional[Mapping[str, torch.Tensor]] = None,
                               architectures: Optional[Mapping[str, Mapping]] = None,
                               kinds: Optional[Mapping[str, str]] = None) -> dict:
    r"""Train one :class:`ModalityClassifier` per modality on (training) data.

    Cross-entropy, Adam (``lr``), ``epochs`` passes in shuffled mini-batches of ``batch_size``
    (the last incomplete one dropped): the library's one training loop,
    :func:`pyro_mmvae.train.fit`, on the Pyro model
    :math:`y \sim \mathrm{Categorical}(\mathrm{logits}=f(x))` with no latent, whose ELBO is
    minus the summed cross-entropy, in a param store of its own (``isolate_params``: a
    model's ``pyro.param`` values are left alone). Each classifier's initialisation and
    shuffling depend only on ``seed`` and its own data (not on the other modalities; the
    global RNG is not re-seeded).

    :param data: ``{modality: (N, ...)}``; the kind of each classifier follows the tensor's
        rank (:func:`infer_kind`) unless ``kinds`` names it.
    :param labels: integer labels ``(N,)`` in ``[0, num_classes)``.
    :param mask: optional ``{modality: (N,) bool}``: a modality's classifier trains only on
        the data points where it is observed.
    :param architectures: optional ``{modality: options}`` passed to :class:`ModalityClassifier`
        (e.g. ``{"text": {"channels": 64}}``).
    :param device: where to train (default: the data's device).
    :returns: ``{modality: classifier}`` in eval mode, on ``device``.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    batch_size = check_positive_int(batch_size, "batch_size")
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    architectures = architectures or {}
    kinds = kinds or {}
    classifiers = {}
    for m, x in data.items():
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"modality '{m}': {x.shape[0]} data points but {labels.shape[0]} "
                             "labels")
        dev = torch.device(device) if device is not None else x.device
        keep = torch.ones(x.shape[0], dtype=torch.bool) if mask is None else mask[m].cpu()
        x_m = x[keep.to(x.device)].to(dev)
        if not x_m.is_floating_point():
            x_m = x_m.to(torch.get_default_dtype())
        y_m = labels[keep.to(labels.device)].to(dev)
        if len(x_m) == 0:
            raise ValueError(f"modality '{m}': no observed data points to train a classifier on")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = ModalityClassifier(kinds.get(m) or infer_kind(x), x.shape[1:], num_classes,
                                     **architectures.get(m, {}))
        clf.to(device=dev, dtype=x_m.dtype)
        fit(_Supervised(clf), _NoLatents(), Trace_ELBO(), {"x": x_m, "y": y_m}, epochs=epochs,
            batch_size=min(batch_size, len(x_m)), lr=lr, seed=None,
            generator=torch.Generator().manual_seed(seed), device=dev, progress=progress,
            isolate_params=True, distributed=False)  # on this process alone, in any group
        clf.eval()
        classifiers[m] = clf
    return classifiers


@torch.no_grad()
def classifier_accuracy(classifiers: Mapping[str, nn.Module], data: Mapping[str, torch.Tensor],
                        labels: torch.Tensor, mask: Optional[Mapping[str, torch.Tensor]] = None,
                        batch_size: int = 1024) -> dict:
    """Test accuracy of each classifier on real data: ``{modality: float}`` (modalities of
    ``data`` that have a classifier; with ``mask``, only observed data points count)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    out = {}
    for m, clf in classifiers.items():
        if m not in data:
            continue
        x = data[m]
        y = torch.as_tensor(labels, device=x.device).long()
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device) if mask is None else \
            mask[m].to(x.device)
        if not keep.any():
            continue
        pred = predict(clf, x[keep], batch_size)
        out[m] = float((pred == y[keep]).double().mean())
    return out


def save_classifiers(path, classifiers: Mapping[str, ModalityClassifier]) -> None:
    """Save ``{modality: ModalityClassifier}`` to ``path`` atomically (temp file + rename).

    The file holds each classifier's :meth:`~ModalityClassifier.config` and CPU state dict.
    """
    payload = {"format": _FORMAT, "version": _VERSION, "classifiers": {}}
    for m, clf in classifiers.items():
        if not isinstance(clf, ModalityClassifier):
            raise ValueError(f"modality '{m}': only ModalityClassifier instances can be saved, "
                             f"got {type(clf).__name__} (save its state_dict yourself)")
        payload["classifiers"][m] = {
            "config": clf.config(),
            "state_dict": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
        }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_classifiers(path, device=None) -> dict:
    """Rebuild the classifiers saved by :func:`save_classifiers`: ``{modality: classifier}``
    in eval mode (on ``device`` if given, with the saved dtype)."""
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a classifier file written by save_classifiers")
    out = {}
    for m, entry in payload["classifiers"].items():
        clf = _from_config(entry["config"])
        state = entry["state_dict"]
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        if dtype is not None:
            clf.to(dtype=dtype)
        clf.load_state_dict(state)
        if device is not None:
            clf.to(device)
        out[m] = clf.eval()
    return out
