"""Every bound's terms() has the same documented keys: elbo, reconstruction, rate and
reconstruction/<m>, with elbo = reconstruction - beta * rate (- alpha * pull) exactly where the
bound is a plain ELBO of those parts (one particle makes the importance-weighted ones plain)."""

import pyro
import pytest
import torch

from pyro_mmvae.guides import MoPoE, PoE
from pyro_mmvae.infer import (COMMON_TERMS, JointMultimodalELBO, MaskedMultimodalELBO,
                              MixtureMultimodalELBO, MultiSourceELBO, RecursiveMultimodalELBO,
                              SubsampledMultimodalELBO)
from tests.helpers import linear_problem, make_guide, random_mask

BETA = 0.7

BOUNDS = {
    "masked": lambda: MaskedMultimodalELBO(beta=BETA),
    "masked-weights": lambda: MaskedMultimodalELBO(beta=BETA, likelihood_weights={"a": 2.5}),
    "mixture-sampled": lambda: MixtureMultimodalELBO(beta=BETA, form="sampled"),
    "mixture-stratified": lambda: MixtureMultimodalELBO(beta=BETA, form="stratified"),
    "mixture-average": lambda: MixtureMultimodalELBO(beta=BETA, form="average"),
    "mixture-average-drawn": lambda: MixtureMultimodalELBO(beta=BETA, form="average",
                                                           num_subsets=2),
    "mixture-iwae-1": lambda: MixtureMultimodalELBO(1, beta=BETA, form="stratified", iwae=True),
    "subsampled": lambda: SubsampledMultimodalELBO(beta=BETA, num_subsets=2),
    "multisource-ind": lambda: MultiSourceELBO(1, beta=BETA, objective="ind"),
    "multisource-poe": lambda: MultiSourceELBO(1, beta=BETA, objective="poe"),
    "multisource-moe": lambda: MultiSourceELBO(1, beta=BETA, objective="moe"),
    "multisource-hybrid": lambda: MultiSourceELBO(1, beta=BETA, objective="hybrid"),
    "recursive": lambda: RecursiveMultimodalELBO(beta=BETA, alpha=0.3),
    "recursive-unimodal": lambda: RecursiveMultimodalELBO(beta=BETA, alpha=0.3,
                                                          subsets="unimodal"),
    "jmvae": lambda: JointMultimodalELBO(beta=BETA, alpha=0.3),
}


def guide_for(name):
    if name.startswith("mixture"):
        return make_guide(MoPoE())
    if name.startswith("multisource"):
        return make_guide(PoE("divide"))
    return make_guide(PoE())


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_bound_returns_the_common_terms_and_they_add_up(name):
    model, data = linear_problem(n=6)
    guide = guide_for(name)
    mask = random_mask(data, seed=2) if not name.startswith("multisource") else None
    pyro.set_rng_seed(0)
    bound = BOUNDS[name]()
    t = bound.terms(model, guide, data, mask)
    expected = set(COMMON_TERMS) | {f"reconstruction/{m}" for m in data}
    assert expected <= set(t)
    for key in expected:
        assert t[key].shape == (6,), key
        assert torch.isfinite(t[key]).all(), key
    per_modality = sum(t[f"reconstruction/{m}"] for m in data)
    assert torch.allclose(per_modality, t["reconstruction"], rtol=1e-12, atol=1e-12)
    pull = bound.alpha * t["pull"] if "pull" in t else 0.0
    assert torch.allclose(t["elbo"], t["reconstruction"] - BETA * t["rate"] - pull,
                          rtol=1e-10, atol=1e-10)
    assert (t["rate"] != 0).any() and (t["reconstruction"] != 0).all()


def test_a_modality_never_scored_has_zero_reconstruction():
    """Under the mask, modality 'c' is missing everywhere: its share is exactly zero."""
    model, data = linear_problem(n=5)
    mask = {m: torch.ones(5, dtype=torch.bool) for m in data}
    mask["c"] = torch.zeros(5, dtype=torch.bool)
    t = MixtureMultimodalELBO(form="stratified").terms(model, make_guide(MoPoE()), data, mask)
    assert torch.equal(t["reconstruction/c"], torch.zeros(5))
    assert (t["reconstruction/a"] != 0).all()


def test_likelihood_weights_scale_the_modality_s_share_only():
    model, data = linear_problem(n=5)
    guide = make_guide(PoE())
    runs = []
    for w in (1.0, 2.5):
        pyro.set_rng_seed(4)
        runs.append(MaskedMultimodalELBO(masking="all", likelihood_weights={"a": w}).terms(
            model, guide, data))
    one, two = runs
    assert torch.allclose(two["reconstruction/a"], 2.5 * one["reconstruction/a"])
    assert torch.allclose(two["reconstruction/b"], one["reconstruction/b"])
