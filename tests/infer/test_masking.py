import itertools

import torch

from pyro_mmvae.infer.masking import MASKINGS, get_masking


def observed_rows(m=4, n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, m, generator=g) < 0.7
    obs[:, 0] = True
    return obs


def test_every_masking_returns_a_subset_of_the_observed_set():
    obs = observed_rows()
    for name, fn in MASKINGS.items():
        s = fn(obs)
        assert s.shape == obs.shape and s.dtype == torch.bool, name
        assert not (s & ~obs).any(), name


def test_iid_half_is_uniform_over_all_subsets():
    obs = torch.ones(40000, 3, dtype=torch.bool)
    s = get_masking("iid_half")(obs)
    codes = (s.long() * torch.tensor([1, 2, 4])).sum(-1)
    freq = torch.bincount(codes, minlength=8).double() / len(codes)
    assert torch.allclose(freq, torch.full((8,), 1 / 8), atol=0.01)


def test_hierarchical_is_uniform_over_cardinalities():
    obs = torch.ones(40000, 4, dtype=torch.bool)
    sizes = get_masking("hierarchical")(obs).sum(-1)
    freq = torch.bincount(sizes, minlength=5).double() / len(sizes)
    assert torch.allclose(freq, torch.full((5,), 1 / 5), atol=0.01)


def test_singletons_nonempty_and_mvae():
    obs = observed_rows()
    assert (get_masking("singletons")(obs).sum(-1) == 1).all()
    assert get_masking("nonempty")(obs).any(-1).all()
    sizes, count = get_masking("mvae")(obs).sum(-1), obs.sum(-1)
    big = count >= 3
    assert ((sizes[big] >= 2) & (sizes[big] <= count[big] - 1)).all()
    assert (sizes[~big] == 0).all()
    # uniform among the 2^3 - 1 non-empty subsets of three observed modalities
    full = torch.ones(70000, 3, dtype=torch.bool)
    codes = (get_masking("nonempty")(full).long() * torch.tensor([1, 2, 4])).sum(-1)
    freq = torch.bincount(codes, minlength=8).double()[1:] / len(codes)
    assert torch.allclose(freq, torch.full((7,), 1 / 7), atol=0.01)


def test_singletons_are_uniform_over_observed():
    obs = torch.tensor([[True, False, True, True]]).expand(30000, 4)
    s = get_masking("singletons")(obs).double().mean(0)
    assert torch.allclose(s, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]), atol=0.01)


def test_maskings_accept_leading_dims():
    obs = observed_rows(n=10).expand(3, 10, 4)
    for name, fn in MASKINGS.items():
        assert fn(obs).shape == (3, 10, 4), name


def test_all_subsets_reachable_by_iid_half():
    obs = torch.ones(5000, 3, dtype=torch.bool)
    seen = {tuple(r.tolist()) for r in get_masking("iid_half")(obs)}
    assert seen == set(itertools.product([False, True], repeat=3))
