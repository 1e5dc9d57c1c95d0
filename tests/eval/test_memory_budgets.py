"""Memory budgets of rate_distortion and coherence (pyro_mmvae.eval.memory): the chunks a
budget chooses split the work without changing the values, tiny budgets make many chunks, and
bad budgets are refused naming ``memory_budget``."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_mmvae.eval.information as information
from pyro_mmvae.diagnostics import to_inference_data
from pyro_mmvae.eval import conditional_coherence, joint_coherence, log_likelihood, rate_distortion
from pyro_mmvae.eval.memory import (ACTIVATION_FACTOR, DEFAULT_MEMORY_BUDGET, check_memory_budget,
                                    chunk_for_budget, chunks_for_budget)
from pyro_mmvae.protocol import DATA_PLATE, num_points
from tests.eval.coherence_problems import classified_linear_problem, mean_guide_of
from tests.helpers import linear_problem, make_guide, random_mask

TINY = 2 ** 12  # bytes: a few data points (or one particle) per chunk


class FixedNoiseNormal(dist.Normal):
    """A Normal whose draws are ``loc + scale * sin(1000 loc)``: a function of the parameters
    only, so each data point gets the same "random" value however the points are chunked
    (log-densities and analytic KLs are the Normal's)."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        loc, scale = self.loc.expand(shape), self.scale.expand(shape)
        return loc + scale * torch.sin(1e3 * loc)

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape)


def fixed_noise_guide(guide):
    def fixed_noise(data, mask=None):
        q = guide.distribution(data, mask)
        with pyro.plate(DATA_PLATE, num_points(data)):
            return pyro.sample("z", FixedNoiseNormal(q.mean, q.stddev).to_event(1))
    fixed_noise.vectorized = True
    return fixed_noise


def rd_problem(n=23):
    model, data = linear_problem(n=n)
    torch.manual_seed(5)
    return model, make_guide(), data, random_mask(data)


def count_terms(monkeypatch):
    """Record ``(data points, particles)`` of every chunk rate_distortion computes."""
    calls, terms = [], information._terms

    def counted(model, guide, data, mask, subset, num_samples, max_plate_nesting):
        calls.append((num_points(data), num_samples))
        return terms(model, guide, data, mask, subset, num_samples, max_plate_nesting)
    monkeypatch.setattr(information, "_terms", counted)
    return calls


# --------------------------------------------------------------------------- the helpers

def test_check_memory_budget():
    assert check_memory_budget(None) == DEFAULT_MEMORY_BUDGET == 256 * 2 ** 20
    assert check_memory_budget(1e9) == 10 ** 9
    assert check_memory_budget(np.int64(4096)) == 4096
    for bad in (0, -1, -2.5, 0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="memory_budget"):
            check_memory_budget(bad)
    for bad in ("256MiB", True, [2 ** 20], torch.tensor(2 ** 20)):
        with pytest.raises(TypeError, match="memory_budget"):
            check_memory_budget(bad)


def test_chunks_for_budget_splits_points_then_particles():
    per_cell, fixed = 1000, 5000  # bytes per (data point, particle) and fixed

    def probe(points, particles):
        return fixed + per_cell * points * particles
    budget = 10 ** 6
    points, particles = chunks_for_budget(probe, 10 ** 6, 10, budget)
    assert particles == 10
    assert points == (budget - ACTIVATION_FACTOR * fixed) // (ACTIVATION_FACTOR * 10 * per_cell)
    assert chunks_for_budget(probe, 7, 10, budget) == (7, 10)
    # one data point with all 10^4 particles does not fit: one point, particles chunked
    points, particles = chunks_for_budget(probe, 50, 10 ** 4, budget)
    assert points == 1 and particles == chunk_for_budget(lambda k: probe(1, k), 10 ** 4, budget)
    assert 1 < particles < 10 ** 4
    assert chunks_for_budget(probe, 1, 10 ** 4, budget)[1] == particles
    assert chunks_for_budget(probe, 50, 10 ** 4, 1) == (1, 1)


def test_probes_leave_the_random_stream_alone():
    def probe(points, particles=1):
        torch.randn(100)
        np.random.rand()
        return 100 * points * particles
    torch.manual_seed(0)
    np.random.seed(0)
    chunks_for_budget(probe, 10, 10, 2 ** 20)
    chunk_for_budget(probe, 10, 2 ** 20)
    after = torch.rand(3), np.random.rand()
    torch.manual_seed(0)
    np.random.seed(0)
    assert torch.equal(after[0], torch.rand(3)) and after[1] == np.random.rand()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2 ** 20, ValueError),
                                        ("1GiB", TypeError)])
def test_every_function_refuses_a_bad_budget(bad, error):
    model, guide, data, mask = rd_problem(n=4)
    lmodel, lguide, ldata, y, classifiers = classified_linear_problem(n=4)
    calls = [lambda: log_likelihood(model, guide, data, num_samples=4, memory_budget=bad),
             lambda: rate_distortion(model, guide, data, memory_budget=bad),
             lambda: conditional_coherence(lmodel, lguide, ldata, y, classifiers,
                                           memory_budget=bad),
             lambda: joint_coherence(lmodel, classifiers, num_samples=10, memory_budget=bad),
             lambda: to_inference_data(model, guide, data, num_samples=4, memory_budget=bad)]
    for call in calls:
        with pytest.raises(error, match="memory_budget"):
            call()


# --------------------------------------------------------------------------- rate_distortion

@pytest.mark.parametrize("num_samples", [1, 3])
def test_rate_distortion_is_the_same_under_any_budget(monkeypatch, num_samples):
    model, guide, data, mask = rd_problem()
    guide = fixed_noise_guide(guide)
    calls = count_terms(monkeypatch)
    pyro.set_rng_seed(7)  # the subsets drawn by the masking
    whole = rate_distortion(model, guide, data, mask, num_samples=num_samples)
    assert calls == [(23, num_samples)]  # one chunk under the default budget
    calls.clear()
    pyro.set_rng_seed(7)
    chunked = rate_distortion(model, guide, data, mask, num_samples=num_samples,
                              memory_budget=TINY)
    assert len(calls) > 2 and sum(p for p, k in calls if k == calls[0][1]) >= 23
    if num_samples > 1:  # one data point with all particles is over the tiny budget
        assert all(points == 1 for points, _ in calls)
        assert len(calls) > 23
    assert set(chunked) == set(whole)
    torch.testing.assert_close(chunked["subset_size"], whole["subset_size"], rtol=0, atol=0)
    for key in whole:
        # float32: batched matrix products may round differently for other batch sizes
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-5, msg=key)
    assert all(v.shape == (23,) for v in chunked.values())


def test_rate_distortion_chunks_are_separate_calls(monkeypatch):
    # with a random guide: the chunked result is the concatenation of calls on the chunks,
    # drawing the same random numbers (the budget's probes draw none)
    model, guide, data, mask = rd_problem(n=10)
    g = torch.Generator().manual_seed(3)
    subset = torch.rand(10, 3, generator=g) < 0.5

    def fixed_subsets(observed):  # a deterministic masking, so each call can be given its rows
        return subset[:observed.shape[0]] if observed.shape[0] == 10 else fixed_subsets.rows
    monkeypatch.setattr(information, "chunks_for_budget", lambda *args: (4, 2))
    pyro.set_rng_seed(11)
    chunked = rate_distortion(model, guide, data, mask, masking=fixed_subsets, num_samples=2)
    pyro.set_rng_seed(11)
    parts = []
    for start in (0, 4, 8):
        idx = slice(start, start + 4)
        fixed_subsets.rows = subset[idx]
        parts.append(rate_distortion(model, guide, {m: v[idx] for m, v in data.items()},
                                     {m: v[idx] for m, v in mask.items()},
                                     masking=fixed_subsets, num_samples=2))
    for key in chunked:
        torch.testing.assert_close(chunked[key], torch.cat([p[key] for p in parts]),
                                   rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------- coherence

def counted(program, sizes):
    def wrapper(data, mask=None):
        sizes.append(next(iter(mask.values())).shape)
        return program(data, mask)
    wrapper.vectorized = getattr(program, "vectorized", False)
    return wrapper


@pytest.mark.slow
@pytest.mark.parametrize("num_samples", [1, 3])
def test_conditional_coherence_is_the_same_under_any_budget(num_samples):
    model, guide, data, y, classifiers = classified_linear_problem()
    guide = mean_guide_of(guide)  # a deterministic encoding and decoded means: no randomness
    expected = conditional_coherence(model, guide, data, y, classifiers, batch_size=37,
                                     num_samples=num_samples)
    sizes = []
    whole = conditional_coherence(counted(model, sizes), guide, data, y, classifiers,
                                  num_samples=num_samples)
    assert len(sizes) == 3  # two probes and one chunk
    sizes.clear()
    chunked = conditional_coherence(counted(model, sizes), guide, data, y, classifiers,
                                    num_samples=num_samples, memory_budget=TINY)
    assert len(sizes) - 2 > 3  # several chunks after the two probes
    assert whole == expected and chunked == expected


def test_conditional_coherence_splits_particles_when_one_point_is_too_big():
    model, guide, data, y, classifiers = classified_linear_problem(n=3)
    guide = mean_guide_of(guide)
    expected = conditional_coherence(model, guide, data, y, classifiers, num_samples=12)
    sizes = []
    chunked = conditional_coherence(counted(model, sizes), guide, data, y, classifiers,
                                    num_samples=12, memory_budget=TINY)
    assert chunked == expected
    # probes (1 and 2 points with 12 particles, 1 point with 1 and 2 particles), then chunks
    # of one data point each with fewer than 12 particles
    assert len(sizes) > 4 + 3 and all(s == (1,) for s in sizes[4:])


def test_joint_coherence_chunks_are_separate_calls():
    model, _, _, _, classifiers = classified_linear_problem()
    sizes = []
    pyro.set_rng_seed(2)
    chunked = joint_coherence(counted(model, sizes), classifiers, num_samples=300,
                              memory_budget=TINY)
    chunks = [s[0] for s in sizes[2:]]  # after the two probes
    assert len(chunks) > 2 and sum(chunks) == 300
    pyro.set_rng_seed(2)
    agree = sum(round(joint_coherence(model, classifiers, num_samples=c, batch_size=c) * c)
                for c in chunks)
    assert chunked == agree / 300
    sizes.clear()
    joint_coherence(counted(model, sizes), classifiers, num_samples=300)
    assert len(sizes) == 3
