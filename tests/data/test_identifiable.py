import numpy as np
import pytest
import torch

from pyro_mmvae.data import bimodal_label_study, missingness_mask, multimodal_missing_study


def test_bimodal_label_study_is_deterministic_and_labels_agree():
    a, b = bimodal_label_study(per_label=50, seed=3), bimodal_label_study(per_label=50, seed=3)
    assert torch.equal(a.data["x"], b.data["x"]) and torch.equal(a.latents, b.latents)
    assert torch.equal(a.data["label"].argmax(-1), a.labels)
    assert a.data["x"].shape == (250, 2) and torch.bincount(a.labels).tolist() == [50] * 5
    assert not torch.equal(a.data["x"], bimodal_label_study(per_label=50, seed=4).data["x"])


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.8])
def test_missingness_mask_rate_and_at_least_one_view(rate):
    mask = missingness_mask(4000, 5, rate, np.random.default_rng(0))
    assert mask.shape == (4000, 5) and mask.any(1).all()
    expected = max(1 - rate, 1 / 5)
    assert abs(mask.mean() - expected) < 0.006


def test_multimodal_missing_study_masks_zero_missing_entries():
    train, test = multimodal_missing_study(num_modalities=3, per_label=40, latent_dim=4,
                                           modality_dim=6, missing_rate=0.5, seed=0)
    assert train.latents.shape == (100, 4) and test.labels.shape == (100,)
    for split in (train, test):
        for m, x in split.data.items():
            assert x.shape == (100, 6)
            assert (x[~split.mask[m]] == 0).all()
        assert torch.stack(list(split.mask.values()), 1).any(1).all()
    again, _ = multimodal_missing_study(num_modalities=3, per_label=40, latent_dim=4,
                                        modality_dim=6, missing_rate=0.5, seed=0)
    assert all(torch.equal(again.data[m], train.data[m]) for m in train.data)


def test_authors_split_keeps_labels_apart():
    train, test = multimodal_missing_study(num_modalities=2, per_label=20, latent_dim=3,
                                           modality_dim=4, seed=1, authors_split=True)
    assert train.labels.max() <= 2 and test.labels.min() >= 2
