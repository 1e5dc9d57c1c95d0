"""Shard-invariant draws (pyro_mmvae.sharding): the terms of a batch's rows computed on a
shard of it equal the whole batch's, draw for draw, for every bound the data-parallel loop
promises this for."""

import pyro
import pytest
import torch

from pyro_mmvae.guides import MoE, MoPoE, PoE, SumPoolingMixture
from pyro_mmvae.infer import (MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO)
from pyro_mmvae.sharding import Shard, categorical, current_shard, data_shard, pad_rows, sharded
from tests.helpers import DIMS, linear_problem, make_guide, random_mask

BOUNDS = {
    "masked": lambda: MaskedMultimodalELBO(),
    "masked-k3": lambda: MaskedMultimodalELBO(num_particles=3),
    "masked-nonempty": lambda: MaskedMultimodalELBO(masking="nonempty"),
    "mixture-sampled": lambda: MixtureMultimodalELBO(form="sampled"),
    "mixture-stratified": lambda: MixtureMultimodalELBO(form="stratified"),
    "mixture-average-k2": lambda: MixtureMultimodalELBO(form="average", num_subsets=2),
    "subsampled": lambda: SubsampledMultimodalELBO(num_subsets=2),
}
AGGREGATORS = {"PoE": PoE, "MoE": MoE, "MoPoE": MoPoE,
               "SumPoolingMixture": lambda: SumPoolingMixture(6, 2, 3, hidden_dim=8,
                                                              pooling_dim=8)}


def shards(total, world):
    sizes = [len(part) for part in torch.arange(total).tensor_split(world)]
    offsets = [sum(sizes[:r]) for r in range(world)]
    return list(zip(offsets, sizes))


@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
@pytest.mark.parametrize("bound", list(BOUNDS))
@pytest.mark.parametrize("missing", [False, True])
def test_a_shard_draws_what_its_rows_draw_in_the_whole_batch(bound, aggregator, missing):
    if bound.startswith("mixture-average") and aggregator not in ("MoE", "MoPoE"):
        pytest.skip("num_subsets draws the components of a mixture with fixed weights")
    if missing and bound.startswith("mixture") and aggregator != "PoE":
        pytest.skip("a component unobserved in a whole shard is left out there (documented)")
    model, data = linear_problem(n=10)
    guide = make_guide(AGGREGATORS[aggregator]())
    if aggregator == "SumPoolingMixture":
        from pyro_mmvae.guides import MultimodalGuide, expert_encoder
        guide = MultimodalGuide({m: expert_encoder(d, 3, (8,)) for m, d in DIMS.items()},
                                AGGREGATORS[aggregator]())
    mask = random_mask(data) if missing else None
    elbo = BOUNDS[bound]()
    pyro.set_rng_seed(3)
    whole = elbo.terms(model, guide, data, mask)
    full = mask or {m: torch.ones(10, dtype=torch.bool) for m in data}
    for offset, size in shards(10, 3):
        rows = slice(offset, offset + size)
        pyro.set_rng_seed(3)
        with data_shard(offset, size, 10, full):
            part = elbo.terms(model, guide, {m: x[rows] for m, x in data.items()},
                              {m: v[rows] for m, v in full.items()})
        for key in ("elbo", "reconstruction", "rate"):
            assert torch.allclose(part[key], whole[key][rows], rtol=1e-5, atol=1e-5), (
                key, offset)
    assert current_shard() is None


def test_sharded_distributions_draw_the_whole_batch_rows_and_keep_their_class():
    loc, scale = torch.randn(6, 2), torch.rand(6, 2) + 0.5
    q = pyro.distributions.Normal(loc, scale).to_event(1)
    torch.manual_seed(0)
    whole = q.rsample((4,))  # (4, 6, 2)
    torch.manual_seed(0)
    with data_shard(2, 3, 6):
        part = pyro.distributions.Normal(loc[2:5], scale[2:5]).to_event(1)
        drawn = sharded(part)
        assert drawn is part and isinstance(drawn, pyro.distributions.Independent)
        assert type(drawn.expand((5, 3))).__mro__[0] is type(drawn)  # expand keeps the draws
        value = drawn.rsample((4,))
    assert torch.equal(value, whole[:, 2:5])
    torch.manual_seed(0)  # outside a shard the sharded instance draws as before
    after = part.rsample((4,))
    torch.manual_seed(0)
    plain = pyro.distributions.Normal(loc[2:5], scale[2:5]).to_event(1).rsample((4,))
    assert torch.equal(after, plain)
    assert sharded(q) is q and type(q) is pyro.distributions.Independent  # no shard: untouched


def test_pad_rows_and_shard_checks():
    x = torch.arange(6.0).reshape(2, 3)
    shard = Shard(1, 2, 5)
    wide = pad_rows(x, 0, shard, value=-1.0)
    assert wide.shape == (5, 3) and torch.equal(wide[1:3], x) and (wide[0] == -1).all()
    assert pad_rows(torch.ones(1, 3), 0, shard) .shape == (1, 3)  # broadcast dims stay
    with pytest.raises(ValueError, match="does not fit a batch of 4"):
        with data_shard(3, 2, 4):
            pass


@pytest.mark.parametrize("sample_shape", [(), (1,), (3,), (2, 2)])
@pytest.mark.parametrize("batch", [(5,), (2, 5), ()])
def test_categorical_draws_what_torch_categorical_draws(sample_shape, batch):
    """``sharding.categorical`` skips building the distribution but makes its draws: the same
    indices from the same random state, the same shape, also with -inf logits."""
    torch.manual_seed(0)
    logits = torch.randn(batch + (4,), dtype=torch.float64) * 3
    logits[..., 1] = -float("inf")
    torch.manual_seed(7)
    expected = torch.distributions.Categorical(logits=logits).sample(torch.Size(sample_shape))
    torch.manual_seed(7)
    drawn = categorical(logits, sample_shape)
    assert drawn.shape == expected.shape and torch.equal(drawn, expected)
    assert not (drawn == 1).any()
