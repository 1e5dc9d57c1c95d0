"""Subset-specific encoders: one network per non-empty subset, run as one batched computation,
each data point encoded by its own subset's network only."""

import pytest
import torch
from torch import nn

from pyro_mmvae.guides import MultimodalGuide, SubsetEncoders, subset_index

M, E, D = 3, 4, 2


def encoders():
    torch.manual_seed(0)
    return SubsetEncoders(E, D, M, branch_dim=5, hidden=(6,))


def reference(enc, features, k):
    """Subset network k as plain layers: its members' branches, concatenated, then its MLP."""
    members = enc.subsets[k]
    parts = []
    for m in range(M):
        h = torch.relu(features[:, m] @ enc.branch_weight[k, m] + enc.branch_bias[k, m])
        parts.append(h if members[m] else torch.zeros_like(h))
    h = torch.cat(parts, -1)
    for i, (w, b) in enumerate(zip(enc.weights, enc.biases)):
        h = h @ w[k] + b[k]
        if i < len(enc.weights) - 1:
            h = torch.relu(h)
    return h


def test_subset_index_and_members_agree():
    enc = encoders()
    assert enc.subsets.shape == (7, 3)
    for k in range(7):
        assert subset_index(enc.subsets[k].unsqueeze(0)).item() == k
    assert subset_index(torch.zeros(1, 3, dtype=torch.bool)).item() == -1


def test_batched_networks_equal_the_networks_one_by_one():
    enc = encoders()
    features = torch.randn(5, M, E)
    out = enc.outputs(features)
    for k in range(7):
        assert torch.allclose(out[k], reference(enc, features, k), atol=1e-10)


def test_each_point_uses_its_own_subsets_network_only():
    enc = encoders()
    features = torch.randn(6, M, E)
    mask = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]],
                        dtype=torch.bool)
    q = enc(features, mask)
    for n in range(6):
        k = subset_index(mask[n:n + 1]).item()
        if k < 0:
            assert torch.equal(q.base_dist.loc[n], torch.zeros(D))
            assert torch.equal(q.base_dist.scale[n], torch.ones(D))
            continue
        loc, raw = reference(enc, features[n:n + 1], k).chunk(2, -1)
        assert torch.allclose(q.base_dist.loc[n], loc[0], atol=1e-10)
    # changing another subset's weights changes nothing for point 0 (subset {0}, index 0)
    with torch.no_grad():
        enc.weights[-1][1:].normal_()
        enc.branch_weight[1:].normal_()
    again = enc(features, mask)
    assert torch.equal(again.base_dist.loc[0], q.base_dist.loc[0])
    assert not torch.equal(again.base_dist.loc[1], q.base_dist.loc[1])
    # a modality outside the subset changes nothing, and gets no gradient
    other = features.clone()
    other[0, 1:] = 100.0
    assert torch.equal(enc(other, mask).base_dist.loc[0], q.base_dist.loc[0])
    f = features.clone().requires_grad_()
    enc(f, mask).base_dist.loc[0].sum().backward()
    assert (f.grad[0, 1:] == 0).all() and (f.grad[0, 0] != 0).any()


def test_stacked_masks_and_a_guide():
    enc = encoders()
    guide = MultimodalGuide({m: nn.Identity() for m in "abc"}, enc)
    data = {m: torch.randn(4, E) for m in "abc"}
    stacked = {m: torch.rand(3, 1, 4) < 0.6 for m in "abc"}
    q = guide.distribution(data, stacked)
    assert q.batch_shape == (3, 1, 4) and q.event_shape == (D,)
    one = guide.distribution(data, {m: v[1, 0] for m, v in stacked.items()})
    assert torch.allclose(q.base_dist.loc[1, 0], one.base_dist.loc)


def test_bad_features_and_sizes_are_clear_errors():
    enc = encoders()
    with pytest.raises(ValueError, match=r"expects features \(B, 3, 4\)"):
        enc(torch.randn(5, 2, E), torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="subset-specific encoders suit a few modalities"):
        SubsetEncoders(E, D, 12)


def test_joint_encoder_reads_the_subset_zero_filled():
    from pyro_mmvae.guides import JointEncoder

    torch.manual_seed(0)
    enc = JointEncoder(E, D, M, hidden=(6,))
    features = torch.randn(4, M, E)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    q = enc(features, mask)
    filled = features * mask.unsqueeze(-1)
    loc, _ = enc.net(filled.flatten(-2)).chunk(2, -1)
    assert torch.allclose(q.base_dist.loc[:3], loc[:3])
    assert torch.equal(q.base_dist.loc[3], torch.zeros(D))  # nothing observed: the prior
    other = features.clone()
    other[0, 1:] = 7.0  # outside point 0's subset
    assert torch.equal(enc(other, mask).base_dist.loc[0], q.base_dist.loc[0])


def test_zero_augmented_masking_is_the_full_set_or_one_modality_uniformly():
    from pyro_mmvae.infer import get_masking

    rho = get_masking("zero_augmented")
    observed = torch.tensor([[True, True, False]]).expand(30000, 3)
    draws = rho(observed)
    assert (draws <= observed).all()
    full = (draws == observed).all(-1).float().mean()
    single_a = (draws == torch.tensor([True, False, False])).all(-1).float().mean()
    assert abs(full.item() - 1 / 3) < 0.015 and abs(single_a.item() - 1 / 3) < 0.015


def test_jmvae_zero_trains():
    from pyro_mmvae import MixtureMultimodalELBO
    from pyro_mmvae.guides import JointEncoder
    from pyro_mmvae.train import fit
    from tests.helpers import linear_problem

    model, data = linear_problem(n=64, dims={"a": 4, "b": 4})
    guide = MultimodalGuide({m: nn.Identity() for m in "ab"}, JointEncoder(4, 2, 2, (16,)))
    history = fit(model, guide, MixtureMultimodalELBO(masking="zero_augmented"), data,
                  epochs=15, batch_size=32, lr=1e-2, progress=False)
    assert history["loss"][-1] < history["loss"][0]
