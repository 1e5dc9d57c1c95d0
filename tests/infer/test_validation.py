"""Bad input raises ValueError naming the modality and the problem, before any step."""

import pyro
import pytest
import torch

from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO
from pyro_mmvae.eval import log_likelihood
from pyro_mmvae.protocol import observe, validate_batch
from tests.helpers import linear_problem, make_guide

BOUNDS = [MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO]


def full(n=8):
    return {m: torch.ones(n, dtype=torch.bool) for m in "abc"}


@pytest.mark.parametrize("cls", BOUNDS)
@pytest.mark.parametrize("case, match", [
    ("different_n", r"different batch sizes N \('a': 8, 'b': 7, 'c': 8\)"),
    ("unknown_in_mask", r"unknown modality 'd' in mask"),
    ("unknown_in_data", r"unknown modality 'd'"),
    ("nan_observed", r"modality 'b': NaN or infinite values in observed data points \[2\]"),
    ("nan_masked", r"modality 'b': NaN or infinite values in masked-out data points \[2\]"),
    ("mask_not_bool", r"modality 'a': mask must be a bool tensor, got torch.float"),
    ("mask_shape", r"modality 'c': mask must have shape \(8,\), got \(8, 1\)"),
    ("nothing_observed", r"data points \[3\] have no observed modality"),
    ("missing_mask_entry", r"modality 'c' has data but no mask entry"),
])
def test_bad_input_is_rejected_with_a_named_modality(cls, case, match):
    model, data = linear_problem()
    guide = make_guide()
    mask = full()
    if case == "different_n":
        data["b"] = data["b"][:7]
    elif case == "unknown_in_mask":
        mask["d"] = torch.ones(8, dtype=torch.bool)
    elif case == "unknown_in_data":
        data["d"] = torch.zeros(8, 2)
        mask["d"] = torch.ones(8, dtype=torch.bool)
    elif case.startswith("nan"):
        data["b"][2, 1] = float("nan")
        mask["b"][2] = case == "nan_observed"
    elif case == "mask_not_bool":
        mask["a"] = torch.ones(8)
    elif case == "mask_shape":
        mask["c"] = torch.ones(8, 1, dtype=torch.bool)
    elif case == "nothing_observed":
        for m in mask:
            mask[m][3] = False
    elif case == "missing_mask_entry":
        del mask["c"]
    with pytest.raises(ValueError, match=match):
        cls().loss(model, guide, data, mask)


def test_unknown_likelihood_weight_and_options():
    model, data = linear_problem()
    with pytest.raises(ValueError, match="likelihood_weights name unknown modality 'x'"):
        MaskedMultimodalELBO(likelihood_weights={"x": 2.0}).loss(model, make_guide(), data)
    with pytest.raises(ValueError, match="unknown masking distribution 'half'"):
        MaskedMultimodalELBO(masking="half")
    with pytest.raises(ValueError, match="biased for the IWAE"):
        MaskedMultimodalELBO(iwae=True, estimator="stl")
    with pytest.raises(ValueError, match="'dreg' is the IWAE gradient"):
        MaskedMultimodalELBO(estimator="dreg")
    with pytest.raises(ValueError, match="beta must be positive"):
        MixtureMultimodalELBO(beta=0)
    with pytest.raises(ValueError, match="form must be"):
        MixtureMultimodalELBO(form="exact")


def test_model_without_an_observation_site_for_a_modality():
    model, data = linear_problem()
    guide = make_guide()

    def partial_model(data, mask=None):  # observes a and b only, never generates c
        with pyro.plate("data", len(data["a"])):
            z = pyro.sample("z", model.prior())
            for m in ("a", "b"):
                observe(m, model.decoders[m](z), data, mask)

    with pytest.raises(ValueError, match="modality 'c': the model observes no site 'x_c'"):
        MaskedMultimodalELBO().loss(partial_model, guide, data)


def test_log_likelihood_rejects_unknown_given():
    model, data = linear_problem()
    with pytest.raises(ValueError, match="given names unknown modality 'z'"):
        log_likelihood(model, make_guide(), data, given=["z"], num_samples=2)


def test_validate_batch_returns_full_mask_by_default():
    _, data = linear_problem()
    mask = validate_batch(data)
    assert set(mask) == set(data) and all(v.all() for v in mask.values())
