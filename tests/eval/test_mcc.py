import numpy as np
import pytest
import torch

from pyro_mmvae.eval import CCA, mcc, mean_corr_coef


def test_weak_mcc_is_one_after_any_invertible_affine_map():
    z = torch.randn(4000, 4)
    a = torch.randn(4, 4) + 3 * torch.eye(4)
    out = mcc(z, z @ a + torch.randn(4))
    assert out["weak_out"] == pytest.approx(1.0, abs=1e-6)
    assert out["weak_in"] == pytest.approx(1.0, abs=1e-6)


def test_strong_mcc_is_one_for_permuted_scaled_and_flipped_coordinates():
    z = torch.randn(3000, 3)
    y = z[:, [2, 0, 1]] * torch.tensor([-2.0, 0.5, 3.0]) + 1.0
    out = mcc(z, y)
    assert out["strong_out"] == pytest.approx(1.0, abs=1e-9)
    assert mean_corr_coef(z, y) == pytest.approx(1.0, abs=1e-9)


def test_independent_noise_has_mcc_near_zero():
    out = mcc(torch.randn(6000, 3), torch.randn(6000, 3))
    assert out["strong_out"] < 0.05 and out["weak_out"] < 0.06


def test_cca_finds_known_canonical_correlations():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((20000, 2))
    x = np.c_[s[:, 0], rng.standard_normal(20000)]
    y = np.c_[0.6 * s[:, 0] + 0.8 * rng.standard_normal(20000), rng.standard_normal(20000)]
    cca = CCA(1).fit(x, y)
    assert cca.correlations[0] == pytest.approx(0.6, abs=0.02)


def test_mcc_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in number"):
        mcc(torch.randn(10, 2), torch.randn(9, 2))


def test_clustering_accuracy_is_invariant_to_relabelling():
    from pyro_mmvae.eval import clustering_accuracy
    labels = torch.randint(0, 4, (500,))
    relabel = torch.tensor([2, 0, 3, 1])
    assert clustering_accuracy(labels, relabel[labels]) == 1.0
    noisy = relabel[labels].clone()
    noisy[:50] = (noisy[:50] + 1) % 4
    assert clustering_accuracy(labels, noisy) == pytest.approx(0.9)  # 50 of 500 moved
    assert clustering_accuracy(labels, torch.randint(0, 4, (500,))) < 0.4
