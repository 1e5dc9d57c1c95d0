"""MSNVI's data, offline: the eight-Gaussian toy, the digits variants with dynamic
binarisation and the three-camera pendulum renderer."""

import numpy as np
import pytest
import torch

from pyro_mmvae.data import (binarization, digit_sources, eight_gaussians,
                             eight_gaussians_test_points, pendulum, pendulum_sweep)
from pyro_mmvae.data.digits import _sk_digits, split_indices
from pyro_mmvae.data.multisource import project


def test_eight_gaussians_are_deterministic_and_label_consistent():
    a, b = eight_gaussians(500, seed=3), eight_gaussians(500, seed=3)
    assert torch.equal(a.data["x1"], b.data["x1"]) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.data["x1"], eight_gaussians(500, seed=4).data["x1"])
    u = torch.cat([a.data["x1"], a.data["x2"]], -1)
    theta = 2 * np.pi * a.labels.double() / 8
    means = torch.stack([theta.cos(), theta.sin()], -1).float()
    assert (u - means).norm(dim=-1).max() < 0.6  # within 6 std of its own component
    assert torch.allclose((u - means).std(0).double(), torch.full((2,), 0.1), atol=0.015)
    t = eight_gaussians_test_points()
    angle = torch.atan2(t.data["x2"], t.data["x1"]).squeeze(-1)
    expected = torch.tensor(2 * np.pi * np.arange(8) / 8 + np.deg2rad(2.0), dtype=angle.dtype)
    assert torch.allclose(torch.remainder(angle - expected + np.pi, 2 * np.pi) - np.pi,
                          torch.zeros(8, dtype=angle.dtype), atol=1e-6)


@pytest.mark.parametrize("variant", ["tb", "qu", "no", "tb_labels"])
def test_digit_variants_cut_the_bundled_digits(variant):
    images, labels = _sk_digits()
    idx = split_indices("test")
    d = digit_sources(variant, "test")
    assert len(d) == len(idx) == 359 and torch.equal(d.labels, torch.as_tensor(labels[idx]))
    x = torch.as_tensor(images[idx] / 16.0, dtype=torch.float32)
    if variant in ("tb", "tb_labels"):
        whole = torch.cat([d.data["top"], d.data["bottom"]], -1).reshape(-1, 8, 8)
        assert torch.equal(whole, x)
    if variant == "tb_labels":
        assert torch.equal(d.data["label"].argmax(-1), d.labels)
    if variant == "qu":
        q = {k: v.reshape(-1, 4, 4) for k, v in d.data.items()}
        top = torch.cat([q["q0"], q["q1"]], -1)
        bottom = torch.cat([q["q2"], q["q3"]], -1)
        assert torch.equal(torch.cat([top, bottom], -2), x)
    if variant == "no":
        assert set(d.data) == {"clean", "noisy0", "noisy1", "noisy2", "noisy3"}
    assert len(digit_sources(variant, "train")) == 1438


def test_dynamic_binarisation_and_bit_flips():
    d = digit_sources("no", "train")
    transform = binarization("no")
    g = torch.Generator().manual_seed(0)
    out, mask = transform(d.data, d.mask, g)
    assert mask is d.mask
    for m, x in out.items():
        assert set(x.unique().tolist()) <= {0.0, 1.0}, m
    clean = d.data["clean"]
    draws = torch.stack([transform(d.data, d.mask, g)[0]["clean"] for _ in range(40)])
    assert (draws.mean(0) - clean).abs().mean() < 0.05  # E[draw] = intensity
    flips = torch.stack([(out["noisy%d" % i] != out["clean"]).float().mean() for i in range(4)])
    assert torch.allclose(flips.double(), torch.full((4,), 0.05), atol=0.005)
    assert not torch.equal(out["noisy0"], out["noisy1"])  # independent per copy
    again = binarization("no")(d.data, d.mask, torch.Generator().manual_seed(0))[0]
    assert all(torch.equal(again[m], out[m]) for m in out)  # reproducible from the generator
    labels = digit_sources("tb_labels")
    assert torch.equal(binarization("tb_labels")(labels.data, None, g)[0]["label"],
                       labels.data["label"])
    with pytest.raises(ValueError, match="variant must be one of"):
        digit_sources("halves")
    with pytest.raises(ValueError, match="flip_probability must be in"):
        binarization("no", 1.5)


def test_pendulum_targets_are_the_bob_and_the_cameras_see_it():
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    d = pendulum(angles, image_size=32, noise=0.0)
    assert torch.allclose(d.data["xy"], torch.tensor(
        np.stack([np.cos(angles), np.sin(angles)], -1), dtype=torch.float32), atol=1e-6)
    grid = np.linspace(-1, 1, 32)
    bob = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], -1)
    for k in range(3):
        img = d.data[f"camera{k}"].reshape(-1, 32, 32).numpy()
        row, col = np.unravel_index(img.reshape(len(angles), -1).argmax(-1), (32, 32))
        uv = project(bob, k)
        assert np.abs(grid[col] - uv[:, 0]).max() <= 2 / 31  # the brightest pixel is the bob
        assert np.abs(grid[::-1][row] - uv[:, 1]).max() <= 2 / 31
    # camera 0 looks down on the circle: every bob projects at radius r / 2r
    assert np.allclose(np.linalg.norm(project(bob, 0), axis=-1), 0.5)
    # cameras 1 and 2 are tilted: the projected circle is not round
    assert np.ptp(np.linalg.norm(project(bob, 1), axis=-1)) > 0.05
    noisy = pendulum(angles, seed=1)
    assert torch.equal(noisy.data["camera1"], pendulum(angles, seed=1).data["camera1"])
    resid = noisy.data["camera1"] - d.data["camera1"]
    assert abs(resid.std().item() - 0.1) < 0.01


def test_pendulum_sweep_fails_a_camera_after_two_rotations():
    d = pendulum_sweep(3, 20, image_size=16)
    assert len(d) == 60 and torch.allclose(d.info["angle"][20].double(),
                                           torch.tensor(2 * np.pi, dtype=torch.float64))
    before, after = d.data["camera0"][:40], d.data["camera0"][40:]
    assert after.min() >= 0 and after.max() <= 1 and abs(after.mean().item() - 0.5) < 0.02
    assert before.max() > 0.8  # the bob is visible before the failure
    assert torch.equal(d.data["camera1"][40:],
                       pendulum_sweep(3, 20, image_size=16, fail_after=None).data["camera1"][40:])


def test_ambiguous_gaussians_have_the_papers_ambiguity_pattern():
    from pyro_mmvae.data import ambiguous_gaussians

    d = ambiguous_gaussians(200, std=0.02, seed=1)
    again = ambiguous_gaussians(200, std=0.02, seed=1)
    assert len(d) == 2000 and torch.equal(d.data["a"], again.data["a"])
    means = {m: torch.stack([d.data[m][d.labels == c].mean(0) for c in range(10)]).double()
             for m in ("a", "b")}

    def same(m, c1, c2):
        return bool((means[m][c1] - means[m][c2]).norm() < 0.05)

    assert same("a", 5, 6) and same("a", 6, 7) and same("a", 0, 8)
    assert same("b", 0, 9)
    distinct_a = [c for c in range(10) if c not in (6, 7, 8)]  # one class per shared point
    assert all(not same("a", i, j) for i in distinct_a for j in distinct_a if i < j)
    assert all(not same("b", i, j) for i in range(9) for j in range(9) if i < j)
    # class 0 is resolved jointly: no other class shares both of its means
    assert not any(same("a", 0, c) and same("b", 0, c) for c in range(1, 10))
    assert d.data["a"].abs().max() < 1 and d.data["b"].abs().max() < 1
