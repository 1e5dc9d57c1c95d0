"""Chunk sizes from a memory budget (pyro_mmvae.eval.memory)."""

import pytest
import torch
from pyro import poutine

from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.eval.memory import ACTIVATION_FACTOR, chunk_for_budget, trace_nbytes
from tests.helpers import ExactPosteriorGuide, linear_problem, random_mask


def test_trace_nbytes_counts_each_storage_once():
    x = torch.zeros(1000)
    tr = poutine.Trace()
    tr.add_node("a", type="sample", value=x, fn=None)
    tr.add_node("b", type="sample", value=x[:10], fn=None)  # a view of the same storage
    tr.add_node("p", type="param", value=torch.zeros(10 ** 6), fn=None)  # module weights
    assert trace_nbytes(tr) == 1000 * x.element_size()


def test_chunk_is_what_fits_in_the_budget():
    per, fixed = 1000, 5000
    probe = lambda k: fixed + per * k  # noqa: E731
    budget = 10 ** 6
    chunk = chunk_for_budget(probe, 10 ** 6, budget)
    assert chunk == (budget - ACTIVATION_FACTOR * fixed) // (ACTIVATION_FACTOR * per)
    assert chunk_for_budget(probe, 10, budget) == 10  # never more than asked for
    assert chunk_for_budget(probe, 10 ** 6, 1) == 1  # at least one
    with pytest.raises(ValueError, match="memory_budget"):
        chunk_for_budget(probe, 10, -5)


def test_log_likelihood_is_the_same_under_any_budget():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    mask = random_mask(data)
    exact = model.exact_log_likelihood(data, mask)
    for budget in (2 ** 12, 2 ** 28):
        ll = log_likelihood(model, guide, data, mask, num_samples=50, memory_budget=budget)
        torch.testing.assert_close(ll, exact)


def test_a_small_budget_makes_small_chunks():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    sizes = []

    def counting(data, mask):
        sizes.append(mask["a"].shape)
        return guide(data, mask)
    counting.vectorized = True
    log_likelihood(model, counting, data, num_samples=64, memory_budget=2 ** 14)
    chunked = [s for s in sizes[2:]]  # after the two probes
    assert len(chunked) > 1
    sizes.clear()
    log_likelihood(model, counting, data, num_samples=64, memory_budget=2 ** 30)
    assert len(sizes) == 3  # two probes and one chunk


def test_arviz_bridge_chunks_by_budget_to_the_same_groups():
    from pyro_mmvae.diagnostics import to_inference_data
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    small = to_inference_data(model, guide, data, num_samples=40, memory_budget=2 ** 13)
    large = to_inference_data(model, guide, data, num_samples=40)
    assert small.posterior["z"].shape == large.posterior["z"].shape == (1, 40, 6, 2)
    # the exact posterior makes every importance weight log p(x): the same in every chunk
    exact = model.exact_log_likelihood(data).detach()
    for idata in (small, large):
        torch.testing.assert_close(torch.as_tensor(idata.sample_stats["log_weight"].values[0]),
                                   exact.expand(40, 6))
