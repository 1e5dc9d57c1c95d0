r"""The data of multi-source neural variational inference (Kurle, Günnemann and van der Smagt,
*Multi-Source Neural Variational Inference*, AAAI 2019, arXiv:1811.04451, §5) and of the
M2VAE's toy (:func:`ambiguous_gaussians`), offline.

- :func:`eight_gaussians`: the 2-D toy (§5.1), a mixture of eight isotropic Gaussians
  (standard deviation 0.1) with means on the unit circle; source ``"x1"`` sees the first
  coordinate, ``"x2"`` the second. :func:`eight_gaussians_test_points` are the means rotated
  by 2 degrees, as in the paper's figure.
- :func:`digit_sources`: the MNIST variants of §5.2 on scikit-learn's bundled 8x8 digits
  (the library's fixed stratified split, 1,438 train / 359 test): ``"tb"`` top (rows 0-3) and
  bottom (rows 4-7) halves, ``"qu"`` four 4x4 quarters, ``"no"`` four noisy copies as the
  sources and the clean digit as the one observation, ``"tb_labels"`` the halves plus a one-hot
  ``"label"`` source. Values are intensities in [0, 1]; :func:`binarization` is the dynamic
  binarisation (a fresh Bernoulli draw every step, and for ``"no"`` bit flips with
  probability 0.05 of that draw, independently per copy), for ``fit(..., transform=)``.
- :func:`pendulum`: the three-camera pendulum of §5.3, rendered here: a bob on a circle of
  radius ``r`` in the x-y plane, seen by three pinhole cameras at distance ``2r`` aimed at the
  centre — on the z-axis, and rotated from there by 45 degrees about the x- and the y-axis —
  as a Gaussian blob in ``image_size``-square images with additive noise (0.1), the
  observation being the bob's ``(x, y)``; ``failed=(sensor, first_index)`` replaces that
  camera's images from ``first_index`` on by noise (the paper's failure after two rotations).

All return :class:`~pyro_mmvae.data.MultimodalDataset` (every modality observed; ``labels``
the mixture component, the digit class, or the 8-sector index of the pendulum angle) and are
deterministic given their seed.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .dataset import MultimodalDataset
from .sklearn_images import _sk_digits, split_indices

DIGIT_VARIANTS = ("tb", "qu", "no", "tb_labels")
FLIP_PROBABILITY = 0.05  # MNIST-NO's bit-flip noise


def _dataset(data: Mapping[str, np.ndarray], labels: np.ndarray, name: str, split: str,
             dtype: torch.dtype, info: Optional[Dict[str, np.ndarray]] = None
             ) -> MultimodalDataset:
    tensors = {m: torch.as_tensor(np.ascontiguousarray(x), dtype=dtype) for m, x in data.items()}
    info = {k: torch.as_tensor(v) for k, v in (info or {}).items()}
    return MultimodalDataset.fully_observed(tensors, labels, name, split, info=info,
                                            item_info=tuple(info))


# --- the 2-D toy ---------------------------------------------------------------------------

def eight_gaussians(num_points: int = 2000, *, std: float = 0.1, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    r"""Points ``u`` of the mixture :math:`\frac18\sum_j\mathcal N(u; (\cos\theta_j,
    \sin\theta_j), 0.1^2 I)`, :math:`\theta_j = 2\pi j/8`: ``data["x1"] = u[:, :1]``,
    ``data["x2"] = u[:, 1:]``, ``labels`` the component ``j``."""
    rng = np.random.default_rng([seed, 8])
    j = rng.integers(0, 8, size=num_points)
    theta = 2 * np.pi * j / 8
    u = np.stack([np.cos(theta), np.sin(theta)], -1) + std * rng.standard_normal((num_points, 2))
    return _dataset({"x1": u[:, :1], "x2": u[:, 1:]}, j, "eight_gaussians", "train", dtype)


def eight_gaussians_test_points(rotation_degrees: float = 2.0,
                                dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    """The eight component means rotated by ``rotation_degrees`` (so that means sharing one
    coordinate become distinguishable), one point per component."""
    theta = 2 * np.pi * np.arange(8) / 8 + np.deg2rad(rotation_degrees)
    u = np.stack([np.cos(theta), np.sin(theta)], -1)
    return _dataset({"x1": u[:, :1], "x2": u[:, 1:]}, np.arange(8), "eight_gaussians", "test",
                    dtype)


# --- the M2VAE's bimodal mixture ----------------------------------------------------------

# modality a: a 3x3 grid, classes (5, 6, 7) and (0, 8) sharing a point; b: 9 points on a circle,
# classes 0 and 9 sharing one (the M2VAE paper's Fig. 3 pattern)
_GRID_POINT = {1: 0, 2: 1, 3: 2, 4: 3, 9: 4, 5: 5, 6: 5, 7: 5, 0: 6, 8: 6}
_CIRCLE_POINT = {0: 0, 9: 0, **{c: c for c in range(1, 9)}}


def ambiguous_gaussians(per_class: int = 1000, *, std: float = 0.07, spread: float = 0.6,
                        seed: int = 0, dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    r"""The M2VAE's bimodal mixture of Gaussians (ICLR 2019 submission, §4.2, Fig. 3): ten
    classes, each a 2-D point in modality ``"a"`` and in ``"b"`` around class-specific means.
    In ``a`` the means lie on a 3x3 grid over :math:`[-0.6, 0.6]^2` (7 points used) with
    classes 5, 6, 7 sharing one and 0, 8 another; in ``b`` on a circle of radius 0.6 (9
    points) with 0 and 9 sharing one — so class 0 is ambiguous in each modality and resolved
    only by both. The paper gives no spacing, radius or spread; these are the research
    note's choice (coordinates inside (-1, 1), for tanh outputs). ``labels`` the class."""
    rng = np.random.default_rng([seed, 11])
    grid = np.array([(x, y) for y in (spread, 0.0, -spread) for x in (-spread, 0.0, spread)])
    angles = 2 * np.pi * np.arange(9) / 9
    circle = spread * np.stack([np.cos(angles), np.sin(angles)], -1)
    labels = np.repeat(np.arange(10), per_class)
    a = grid[[_GRID_POINT[c] for c in labels]] + std * rng.standard_normal((len(labels), 2))
    b = circle[[_CIRCLE_POINT[c] for c in labels]] + std * rng.standard_normal((len(labels), 2))
    order = rng.permutation(len(labels))
    return _dataset({"a": a[order], "b": b[order]}, labels[order], "ambiguous_gaussians",
                    "train", dtype)


# --- the digits variants -------------------------------------------------------------------

def digit_sources(variant: str = "tb", split: str = "train", *,
                  dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    """A digits variant of MSNVI's MNIST experiments (module docstring), intensities in
    [0, 1] flattened per part: ``"tb"`` ``{"top", "bottom"}`` (32 each), ``"qu"``
    ``{"q0" (top left), "q1" (top right), "q2" (bottom left), "q3" (bottom right)}`` (16
    each), ``"no"`` ``{"clean", "noisy0", ..., "noisy3"}`` (64 each; the copies hold the clean
    intensities until :func:`binarization` draws them), ``"tb_labels"`` the halves and
    ``"label"`` (one-hot, 10)."""
    if variant not in DIGIT_VARIANTS:
        raise ValueError(f"variant must be one of {DIGIT_VARIANTS}, got {variant!r}")
    images, labels = _sk_digits()
    idx = split_indices(split)
    x = images[idx] / 16.0  # (N, 8, 8) in [0, 1]
    y = labels[idx]
    n = len(idx)
    if variant in ("tb", "tb_labels"):
        data = {"top": x[:, :4].reshape(n, -1), "bottom": x[:, 4:].reshape(n, -1)}
        if variant == "tb_labels":
            data["label"] = np.eye(10)[y]
    elif variant == "qu":
        data = {f"q{2 * r + c}": x[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(n, -1)
                for r in range(2) for c in range(2)}
    else:
        flat = x.reshape(n, -1)
        data = {"clean": flat, **{f"noisy{i}": flat for i in range(4)}}
    return _dataset(data, y, f"digits_{variant}", split, dtype)


def binarization(variant: str = "tb", flip_probability: float = FLIP_PROBABILITY):
    """The dynamic binarisation of :func:`digit_sources` ``variant``, as a ``fit``
    ``transform``: ``transform(batch, mask, generator) -> (batch, mask)`` draws every image
    part as ``Bernoulli(intensity)``; for ``"no"`` the clean digit is drawn once and each
    noisy copy is that draw with every pixel flipped independently with
    ``flip_probability``. A ``"label"`` stays as it is."""
    if variant not in DIGIT_VARIANTS:
        raise ValueError(f"variant must be one of {DIGIT_VARIANTS}, got {variant!r}")
    if not 0 <= flip_probability < 1:
        raise ValueError(f"flip_probability must be in [0, 1), got {flip_probability!r}")

    def transform(batch, mask, generator: Optional[torch.Generator] = None):
        out = dict(batch)

        def draw(p):
            u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
            return (u.to(p.device) < p).to(p.dtype)

        for m, x in batch.items():
            if m != "label" and not m.startswith("noisy"):
                out[m] = draw(x)
        if variant == "no":
            clean = out["clean"]
            for m in batch:
                if m.startswith("noisy"):
                    flips = draw(torch.full_like(clean, flip_probability))
                    out[m] = (clean + flips) % 2
        return out, mask

    return transform


# --- the pendulum --------------------------------------------------------------------------

CAMERA_ROTATIONS = (("z-axis", None), ("x", 45.0), ("y", 45.0))


def _rotation(axis: Optional[str], degrees: Optional[float]) -> np.ndarray:
    if axis not in ("x", "y"):
        return np.eye(3)
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def project(points: np.ndarray, camera: int, radius: float = 1.0,
            focal: float = 1.0) -> np.ndarray:
    """Image-plane coordinates ``(N, 2)`` in about [-1, 1] of world points ``(N, 3)`` seen by
    pendulum camera ``camera`` (0: on the z-axis at distance ``2 radius`` looking at the
    origin, image axes along x and y; 1 and 2: that camera rotated by 45 degrees about the x-
    and the y-axis): a pinhole projection ``focal * (x, y) / depth``."""
    rot = _rotation(*CAMERA_ROTATIONS[camera])
    local = points @ rot  # R^T p: the point in the frame of the unrotated camera
    depth = 2 * radius - local[:, 2]
    return focal * local[:, :2] / depth[:, None]


def pendulum(angles: Optional[Sequence[float]] = None, *, num_points: int = 2000,
             image_size: int = 32, radius: float = 1.0, noise: float = 0.1,
             blob: float = 0.08, failed: Optional[Tuple[int, int]] = None, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> MultimodalDataset:
    r"""Three noisy camera images of a pendulum bob and its position (module docstring).

    :param angles: bob angles :math:`\varphi` in radians (default: ``num_points`` uniform
        draws from :math:`[0, 2\pi)`); the bob is at :math:`(r\cos\varphi, r\sin\varphi, 0)`.
    :param image_size: pixels per side (the paper's 32).
    :param noise: standard deviation of the additive Gaussian noise of every image (0.1).
    :param blob: the bob's radius in image-plane units (the Gaussian's standard deviation).
    :param failed: ``(camera, first_index)``: from that data point on, that camera's image is
        pure noise, uniform in [0, 1] (sensor failure).
    :returns: ``data`` ``{"camera0", "camera1", "camera2": (N, image_size ** 2), "xy": (N, 2)}``,
        ``labels`` the 8-sector index of the angle, ``info["angle"]``.
    """
    rng = np.random.default_rng([seed, 3])
    phi = (np.asarray(angles, dtype=np.float64) if angles is not None
           else rng.uniform(0, 2 * np.pi, size=num_points))
    n = len(phi)
    bob = np.stack([radius * np.cos(phi), radius * np.sin(phi), np.zeros(n)], -1)
    grid = np.linspace(-1, 1, image_size)
    gx, gy = np.meshgrid(grid, grid[::-1])  # row 0 at the top (image y up)
    data = {}
    for k in range(3):  # one noise stream per camera, another for a failure
        uv = project(bob, k, radius)
        d2 = (gx[None] - uv[:, :1, None]) ** 2 + (gy[None] - uv[:, 1:, None]) ** 2
        cam = np.random.default_rng([seed, 3, k])
        img = np.exp(-0.5 * d2 / blob ** 2) + noise * cam.standard_normal((n,) + gx.shape)
        if failed is not None and failed[0] == k:
            broken = np.random.default_rng([seed, 4, k])
            img[failed[1]:] = broken.uniform(0, 1, size=img[failed[1]:].shape)
        data[f"camera{k}"] = img.reshape(n, -1)
    data["xy"] = bob[:, :2]
    sector = np.floor(np.mod(phi, 2 * np.pi) / (2 * np.pi) * 8).astype(np.int64) % 8
    return _dataset(data, sector, "pendulum", "train" if angles is None else "sweep", dtype,
                    {"angle": phi})


def pendulum_sweep(rotations: int = 3, steps_per_rotation: int = 60, *,
                   fail_after: Optional[int] = 2, failed_camera: int = 0,
                   **kwargs) -> MultimodalDataset:
    """The evaluation sweep of the paper's Fig. 5: the angle through ``rotations`` full turns
    in ``steps_per_rotation`` steps each, camera ``failed_camera`` failing after
    ``fail_after`` rotations (None: never)."""
    angles = np.arange(rotations * steps_per_rotation) * 2 * np.pi / steps_per_rotation
    failed = None if fail_after is None else (failed_camera, fail_after * steps_per_rotation)
    return pendulum(angles, failed=failed, **kwargs)


__all__ = ["DIGIT_VARIANTS", "FLIP_PROBABILITY", "ambiguous_gaussians", "binarization",
           "digit_sources",
           "eight_gaussians", "eight_gaussians_test_points", "pendulum", "pendulum_sweep",
           "project"]
