"""Bad input is caught at the door: before any training step, a ``ValueError`` (``TypeError``
for wrong types and dtypes) whose message names the modality or the argument and the problem."""

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO
from pyro_mmvae.diagnostics import to_inference_data
from pyro_mmvae.eval import (classifier_accuracy, conditional_coherence, encode_subsets,
                             joint_coherence, latent_classification, log_likelihood,
                             log_marginal, rate_distortion, subset_matrix)
from pyro_mmvae.guides import ConvImageEncoder, MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.guides.discrete_moe import DiscreteMoEGuide, ExpertGate
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.protocol import (check_positive_float, check_positive_int, check_weights,
                                 full_mask, validate_batch)

BOUNDS = [MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO]
N = 8


def problem(dims=None, n=N, dtype=torch.float64, encoders=None):
    """A linear-Gaussian model, a PoE guide (encoders of ``dtype``) and data of width ``dims``."""
    dims = dims or {"a": 3, "b": 4, "c": 2}
    torch.manual_seed(0)
    model = LinearGaussianModel(dims, 2).to(dtype)
    encoders = encoders or {m: expert_encoder(d, 2, (8,)).to(dtype) for m, d in dims.items()}
    guide = MultimodalGuide(encoders, PoE())
    data = {m: torch.randn(n, d, dtype=dtype) for m, d in dims.items()}
    return model, guide, data


def losses():
    return [cls() for cls in BOUNDS] + [Trace_ELBO(), TraceMeanField_ELBO()]


LOSS_IDS = [c.__name__ for c in BOUNDS] + ["Trace_ELBO", "TraceMeanField_ELBO"]


def state(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_fails_before_any_step(model, guide, loss, data, mask, exc, match):
    """``svi.step`` raises ``exc`` matching ``match`` and leaves every parameter unchanged."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=loss)
    before = state(model, guide)
    with pytest.raises(exc, match=match):
        svi.step(data, mask)
    for old, new in zip(before, state(model, guide)):
        assert old.keys() == new.keys()
        assert all(torch.equal(old[k], new[k]) for k in old)


# --------------------------------------------------------------------------- 1. dtypes

@pytest.mark.parametrize("loss", losses(), ids=LOSS_IDS)
@pytest.mark.parametrize("dtype, match", [
    (torch.float64, r"modality 'a': data has dtype torch\.float64 but its encoder's parameters "
                    r"are torch\.float32; convert the data, data\['a'\]\.float\(\)"),
    (torch.int64, r"modality 'a': data has dtype torch\.int64 .* torch\.float32.*\.float\(\)"),
    (torch.uint8, r"modality 'a': data has dtype torch\.uint8 .* torch\.float32.*/ 255"),
])
def test_data_dtype_differs_from_the_encoder(loss, dtype, match):
    model, guide, data = problem(dtype=torch.float32)
    data["a"] = (data["a"] * 10).to(dtype)
    assert_fails_before_any_step(model, guide, loss, data, None, TypeError, match)


def test_dtype_of_a_custom_encoder_is_diagnosed_from_torch_error():
    enc = ConvImageEncoder((1, 8, 8), 4, channels=(4,)).float()
    model, guide, data = problem({"img": 64, "b": 4},
                                 encoders={"img": enc, "b": expert_encoder(4, 2, (8,))})
    data["img"] = torch.rand(N, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"modality 'img': data has dtype torch\.float64 but its "
                                        r"encoder's parameters are torch\.float32"):
        guide(data)


# --------------------------------------------------------------------------- 2. shapes

class Wrapped(nn.Module):
    """An encoder that is not an nn.Sequential: only running it can tell what it reads."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("loss", losses(), ids=LOSS_IDS)
@pytest.mark.parametrize("case, match", [
    ("width", r"modality 'a': its encoder's first layer, Linear\(in_features=64\), reads the "
              r"data's last dim, but the data has shape \(8, 63\) \(expected \(N, 64\)\)"),
    ("image", r"modality 'a': .*Linear\(in_features=64\).*shape \(8, 1, 8, 8\).*flatten it, "
              r"data\['a'\]\.flatten\(1\)"),
    ("custom", r"modality 'a': its encoder failed on the input of shape \(8, 63\) "
               r"\(dtype torch\.float64\): mat1 and mat2 shapes cannot be multiplied"),
])
def test_feature_shape_differs_from_the_encoder(loss, case, match):
    encoders = {"a": expert_encoder(64, 2, (8,)), "b": expert_encoder(4, 2, (8,))}
    if case == "custom":
        encoders["a"] = Wrapped(64, 4)
    model, guide, data = problem({"a": 64, "b": 4}, encoders=encoders)
    data["a"] = data["a"][:, :63] if case != "image" else data["a"].reshape(N, 1, 8, 8)
    assert_fails_before_any_step(model, guide, loss, data, None, ValueError, match)


def test_convolutional_encoder_shape_errors_name_the_modality():
    enc = ConvImageEncoder((1, 8, 8), 4, channels=(4,))
    model, guide, data = problem({"img": 64, "b": 4},
                                 encoders={"img": enc, "b": expert_encoder(4, 2, (8,))})
    data["img"] = torch.rand(N, 1, 7, 7)
    with pytest.raises(ValueError, match=r"modality 'img': its encoder failed on the input of "
                                         r"shape \(8, 1, 7, 7\).*expects images"):
        MaskedMultimodalELBO().loss(model, guide, data)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 4))
    encoders = {"img": seq, "b": expert_encoder(4, 2, (8,))}
    _, guide, _ = problem({"img": 64, "b": 4}, encoders=encoders)
    data["img"] = torch.rand(N, 3, 8, 8)
    match = (r"modality 'img': its encoder's first layer, Conv2d\(in_channels=1\), reads "
             r"\(N, 1, \.\.\., \.\.\.\), but the data has shape \(8, 3, 8, 8\)")
    with pytest.raises(ValueError, match=match):
        guide(data)


def test_good_input_still_passes_the_encoder_checks():
    """Flatten-first and integer-input (embedding) encoders are not second-guessed."""
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 4))
    model, guide, data = problem({"img": 64, "tok": 3},
                                 encoders={"img": flat, "tok": emb})
    x = {"img": torch.rand(N, 1, 8, 8), "tok": torch.randint(10, (N, 3))}
    assert guide.distribution(x).batch_shape == (N,)


# --------------------------------------------------------------------------- 3. empty batch

def empty(n=0):
    model, guide, data = problem(n=n)
    return model, guide, data


@pytest.mark.parametrize("call", [
    lambda m, g, d: MaskedMultimodalELBO().loss(m, g, d),
    lambda m, g, d: MixtureMultimodalELBO().loss(m, g, d),
    lambda m, g, d: SubsampledMultimodalELBO().loss(m, g, d),
    lambda m, g, d: Trace_ELBO().loss(m, g, d, full_mask(d)),
    lambda m, g, d: log_likelihood(m, g, d, num_samples=2),
    lambda m, g, d: log_marginal(m, g, d, full_mask(d), num_samples=2),
    lambda m, g, d: rate_distortion(m, g, d),
    lambda m, g, d: to_inference_data(m, g, d, num_samples=2),
    lambda m, g, d: conditional_coherence(m, g, d, torch.zeros(0, dtype=torch.long),
                                          {"a": lambda x: torch.zeros(len(x))}),
    lambda m, g, d: latent_classification(g, d, torch.zeros(0), d, torch.zeros(0)),
], ids=["masked", "mixture", "subsampled", "Trace_ELBO", "log_likelihood", "log_marginal",
        "rate_distortion", "to_inference_data", "conditional_coherence",
        "latent_classification"])
def test_empty_batch(call):
    model, guide, data = empty()
    with pytest.raises(ValueError, match=r"empty batch: modalities 'a', 'b', 'c' have N = 0"):
        call(model, guide, data)


# --------------------------------------------------------------------------- 4.-6. bound options

@pytest.mark.parametrize("cls", BOUNDS)
@pytest.mark.parametrize("beta", [float("nan"), float("inf"), 0, -1.0])
def test_beta_not_finite_or_not_positive(cls, beta):
    with pytest.raises(ValueError, match=r"beta must be positive and finite, got"):
        cls(beta=beta)


@pytest.mark.parametrize("beta", [[1.0, 0.5], "1", True])
def test_beta_that_is_not_a_number_or_a_schedule(beta):
    # a callable is a schedule (tests/test_schedules.py); a list of values is not
    with pytest.raises(TypeError, match=r"beta must be a finite positive number"):
        MaskedMultimodalELBO(beta=beta)
    with pytest.raises(TypeError, match=r"not a schedule"):
        MaskedMultimodalELBO(beta=[1.0, float("nan")])


def test_beta_from_numpy_and_torch_scalars_is_a_float():
    assert MaskedMultimodalELBO(beta=np.float32(0.5)).beta == 0.5
    assert MaskedMultimodalELBO(beta=torch.tensor(2.0)).beta == 2.0
    assert isinstance(MaskedMultimodalELBO(beta=torch.tensor(2.0)).beta, float)


@pytest.mark.parametrize("cls", BOUNDS)
@pytest.mark.parametrize("weight, exc, match", [
    (float("nan"), ValueError, r"likelihood_weights: modality 'a' has weight nan"),
    (-1.0, ValueError, r"likelihood_weights: modality 'a' has weight -1.0; weights must be "
                       r"finite and >= 0"),
    (float("inf"), ValueError, r"likelihood_weights: modality 'a' has weight inf"),
    ("2", TypeError, r"likelihood_weights: modality 'a' weight must be a finite number"),
])
def test_likelihood_weight_not_finite_or_negative(cls, weight, exc, match):
    with pytest.raises(exc, match=match):
        cls(likelihood_weights={"b": 1.0, "a": weight})


def test_likelihood_weights_zero_and_numpy_are_fine():
    elbo = MaskedMultimodalELBO(likelihood_weights={"a": 0, "b": np.float64(2.0)})
    assert elbo.likelihood_weights == {"a": 0.0, "b": 2.0}
    with pytest.raises(TypeError, match=r"likelihood_weights must be a dict"):
        MaskedMultimodalELBO(likelihood_weights=[1.0, 2.0])


@pytest.mark.parametrize("cls", BOUNDS)
@pytest.mark.parametrize("value, exc, match", [
    (2.5, TypeError, r"num_particles must be a positive integer, got 2\.5 \(float\)"),
    (2.0, TypeError, r"num_particles must be a positive integer, got 2\.0 \(float\); pass "
                     r"int\(2\.0\)"),
    (True, TypeError, r"num_particles must be a positive integer, got True \(bool\)"),
    (0, ValueError, r"num_particles must be a positive integer, got 0"),
    (-3, ValueError, r"num_particles must be a positive integer, got -3"),
    (torch.tensor(2.0), TypeError, r"num_particles must be a positive integer, got a tensor"),
])
def test_num_particles_not_a_positive_integer(cls, value, exc, match):
    with pytest.raises(exc, match=match):
        cls(num_particles=value)


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3)])
def test_integer_scalars_of_numpy_and_torch_are_counts(value):
    elbo = MaskedMultimodalELBO(num_particles=value)
    assert elbo.num_particles == 3 and type(elbo.num_particles) is int


# --------------------------------------------------------------------------- 7. eval counts

def _clf(x):
    return torch.zeros(len(x), dtype=torch.long)


EVAL_CALLS = {
    "log_likelihood": lambda m, g, d, **kw: log_likelihood(m, g, d, **kw),
    "log_marginal": lambda m, g, d, **kw: log_marginal(m, g, d, full_mask(d), **kw),
    "rate_distortion": lambda m, g, d, **kw: rate_distortion(m, g, d, **kw),
    "to_inference_data": lambda m, g, d, **kw: to_inference_data(m, g, d, **kw),
    "conditional_coherence": lambda m, g, d, **kw: conditional_coherence(
        m, g, d, torch.zeros(N, dtype=torch.long), {"a": _clf}, **kw),
    "joint_coherence": lambda m, g, d, **kw: joint_coherence(m, {"a": _clf}, **kw),
    "encode_subsets": lambda m, g, d, **kw: encode_subsets(
        g, d, torch.ones(1, 3, dtype=torch.bool), **kw),
    "latent_classification": lambda m, g, d, **kw: latent_classification(
        g, d, torch.zeros(N), d, torch.zeros(N), **kw),
    "classifier_accuracy": lambda m, g, d, **kw: classifier_accuracy(
        {"a": _clf}, d, torch.zeros(N), **kw),
}
COUNTS = {
    "log_likelihood": ["num_samples", "chunk_size"],
    "log_marginal": ["num_samples", "chunk_size"],
    "rate_distortion": ["num_samples"],
    "to_inference_data": ["num_samples", "chunk_size"],
    "conditional_coherence": ["num_samples", "batch_size"],
    "joint_coherence": ["num_samples", "batch_size"],
    "encode_subsets": ["batch_size"],
    "latent_classification": ["batch_size", "num_train", "max_iter"],
    "classifier_accuracy": ["batch_size"],
}
CASES = [(f, arg) for f, args in COUNTS.items() for arg in args]


@pytest.mark.parametrize("fn, arg", CASES, ids=[f"{f}-{a}" for f, a in CASES])
@pytest.mark.parametrize("value, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                        (True, TypeError)])
def test_eval_counts_not_positive_integers(fn, arg, value, exc):
    model, guide, data = problem()
    with pytest.raises(exc, match=rf"{arg} must be a positive integer.* got {value!r}"):
        EVAL_CALLS[fn](model, guide, data, **{arg: value})


def test_num_samples_zero_is_no_longer_a_math_domain_error():
    model, guide, data = problem()
    with pytest.raises(ValueError, match=r"num_samples must be a positive integer, got 0"):
        log_likelihood(model, guide, data, num_samples=0)


def test_a_bare_string_subset_is_one_modality_not_its_letters():
    names, rows = subset_matrix("top", ["top", "side"])
    assert names == ["top"] and rows.tolist() == [[True, False]]
    names, _ = subset_matrix("top+side", ["top", "side"])
    assert names == ["top+side"]


# --------------------------------------------------------------------------- 8. custom masking

def bad_shape(observed):
    return observed[..., :1]


def bad_dtype(observed):
    return observed.float()


def not_a_tensor(observed):
    return observed.tolist()


@pytest.mark.parametrize("cls", BOUNDS)
@pytest.mark.parametrize("fn, match", [
    (bad_shape, r"masking 'bad_shape' must return a bool tensor of shape \((\d+, )?8, 3\) \(the "
                r"observed mask's\), got shape \((\d+, )?8, 1\)"),
    (bad_dtype, r"masking 'bad_dtype' must return a bool tensor .* got dtype torch\.float"),
    (not_a_tensor, r"masking 'not_a_tensor' must return a bool tensor .* got list"),
])
def test_custom_masking_with_wrong_shape_or_dtype(cls, fn, match):
    model, guide, data = problem()
    loss = cls(masking=fn)
    assert_fails_before_any_step(model, guide, loss, data, None, ValueError, match)


def test_a_good_custom_masking_is_unchanged():
    model, guide, data = problem()

    def first_only(observed):
        out = torch.zeros_like(observed)
        out[..., 0] = observed[..., 0]
        return out

    terms = MaskedMultimodalELBO(masking=first_only).terms(model, guide, data)
    assert (terms["subset_size"] == 1).all()
    assert MaskedMultimodalELBO(masking=first_only).masking_name == "first_only"


# --------------------------------------------------------------------------- 9. Pyro's ELBOs

PYRO_CASES = [
    ("mask_not_bool", r"modality 'a': mask must be a bool tensor, got torch\.float"),
    ("mask_shape", r"modality 'c': mask must have shape \(\.\.\., 8\) \(its last dim the batch "
                   r"size N\), got \(8, 1\)"),
    ("unknown_in_mask", r"unknown modality 'd' in mask"),
    ("unknown_in_data", r"unknown modality 'd': the guide has encoders for"),
    ("nan_observed", r"modality 'b': NaN or infinite values in observed data points \[2\]"),
    ("nan_masked", r"modality 'b': NaN or infinite values in masked-out data points \[2\]"),
    ("different_n", r"different batch sizes N \('a': 8, 'b': 7, 'c': 8\)"),
]


def corrupt(case, data, mask):
    if case == "mask_not_bool":
        mask["a"] = torch.ones(N)
    elif case == "mask_shape":
        mask["c"] = torch.ones(N, 1, dtype=torch.bool)
    elif case == "unknown_in_mask":
        mask["d"] = torch.ones(N, dtype=torch.bool)
    elif case == "unknown_in_data":
        data["d"] = torch.zeros(N, 2)
        mask["d"] = torch.ones(N, dtype=torch.bool)
    elif case.startswith("nan"):
        data["b"][2, 1] = float("nan")
        mask["b"][2] = case == "nan_observed"
    elif case == "different_n":
        data["b"] = data["b"][:7]


@pytest.mark.parametrize("loss", [Trace_ELBO(), TraceMeanField_ELBO(),
                                  Trace_ELBO(num_particles=2, vectorize_particles=True,
                                             max_plate_nesting=1)],
                         ids=["Trace_ELBO", "TraceMeanField_ELBO", "Trace_ELBO-vectorized"])
@pytest.mark.parametrize("case, match", PYRO_CASES, ids=[c for c, _ in PYRO_CASES])
def test_pyros_own_elbos_validate_the_batch(loss, case, match):
    model, guide, data = problem()
    mask = full_mask(data)
    corrupt(case, data, mask)
    assert_fails_before_any_step(model, guide, loss, data, mask, ValueError, match)


@pytest.mark.parametrize("case, match", PYRO_CASES, ids=[c for c, _ in PYRO_CASES])
def test_discrete_moe_guide_validates_the_batch(case, match):
    model, _, data = problem()
    guide = DiscreteMoEGuide({m: expert_encoder(x.shape[-1], 2, (8,)) for m, x in data.items()},
                             ExpertGate(4))
    mask = full_mask(data)
    corrupt(case, data, mask)
    assert_fails_before_any_step(model, guide, TraceGraph_ELBO(), data, mask, ValueError, match)


def test_guide_accepts_stacked_masks_but_not_mismatched_ones():
    _, guide, data = problem()
    stacked = {m: torch.ones(3, 1, N, dtype=torch.bool) for m in data}
    assert guide.distribution(data, stacked).batch_shape == (3, 1, N)
    stacked["c"] = torch.ones(2, 1, N, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"masks of the modalities have different shapes"):
        guide(data, stacked)
    with pytest.raises(ValueError, match=r"modality 'a': mask must have shape \(8,\)"):
        validate_batch(data, {m: torch.ones(3, 1, N, dtype=torch.bool) for m in data})


# --------------------------------------------------------------------------- the checkers

def test_checkers_directly():
    assert check_positive_int(np.int32(4), "n") == 4
    assert check_positive_int(None, "chunk_size", allow_none=True) is None
    with pytest.raises(TypeError, match=r"chunk_size must be a positive integer or None"):
        check_positive_int("4", "chunk_size", allow_none=True)
    with pytest.raises(TypeError, match="n must be a positive integer"):
        check_positive_int(None, "n")
    with pytest.raises(TypeError, match="n must be a positive integer"):
        check_positive_int(np.bool_(True), "n")
    assert check_positive_float(np.float64(0.25), "beta") == 0.25
    assert check_weights(None) == {}
