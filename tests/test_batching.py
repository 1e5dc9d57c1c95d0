"""Modules of one architecture as one batched call (pyro_mmvae.batching): the same values and
gradients as the loop, batched only where the architecture and input shapes agree."""

import pyro
import pytest
import torch
from torch import nn

import pyro_mmvae.batching as batching
from pyro_mmvae.batching import architecture, call_grouped, check_batch_setting, groups
from pyro_mmvae.guides import MoE, MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import MixtureMultimodalELBO, SubsampledMultimodalELBO
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.nn import MLP
from tests.helpers import random_mask


def mlp(i, o, slope=0.01):
    return nn.Sequential(nn.Linear(i, 16), nn.LeakyReLU(slope), nn.Linear(16, o))


@pytest.fixture
def calls(monkeypatch):
    """The number of modules each batched call ran together."""
    sizes = []
    real = batching.batched_call

    def recording(modules, inputs, arch=None):
        out = real(modules, inputs, arch)
        if out is not None:
            sizes.append(len(modules))
        return out

    monkeypatch.setattr(batching, "batched_call", recording)
    return sizes


def test_architecture_tells_modules_apart():
    torch.manual_seed(0)
    assert architecture(mlp(4, 3)) == architecture(mlp(4, 3))
    assert architecture(mlp(4, 3)) != architecture(mlp(4, 2))  # a shape
    assert architecture(mlp(4, 3)) != architecture(mlp(4, 3, slope=0.2))  # a hyperparameter
    conv = [nn.Conv2d(1, 2, 3, stride=s) for s in (1, 2)]
    assert architecture(conv[0]) != architecture(conv[1])  # same weights' shape, other stride
    assert architecture(nn.BatchNorm1d(3)) is None  # buffers
    assert architecture(MLP(4, (8,), 3)) == architecture(MLP(4, (8,), 3))
    a, b = mlp(4, 3), mlp(4, 3)
    b.eval()
    assert architecture(a) != architecture(b)  # training mode


def test_groups_by_architecture_and_input_shape():
    mods = {"a": mlp(4, 3), "b": mlp(4, 3), "c": mlp(5, 3), "d": mlp(4, 3), "e": mlp(4, 3)}
    xs = {"a": torch.randn(6, 4), "b": torch.randn(6, 4), "c": torch.randn(6, 5),
          "d": torch.randn(6, 4), "e": torch.randn(7, 4)}
    assert groups(mods, xs) == [["a", "b", "d"], ["c"], ["e"]]


@pytest.mark.parametrize("lead", [(), (3, 2)])
def test_batched_call_equals_the_loop(lead, calls):
    torch.manual_seed(0)
    mods = {m: mlp(4, 3) for m in "abc"}
    mods["d"] = mlp(5, 3)
    xs = {m: torch.randn(lead + (6, 5 if m == "d" else 4)) for m in mods}
    loop = call_grouped(mods, xs, False)
    params = [p for mod in mods.values() for p in mod.parameters()]
    ref = torch.autograd.grad(sum((v ** 2).sum() for v in loop.values()), params)
    out = call_grouped(mods, xs, True)
    assert calls == [3]
    assert list(out) == list(mods)
    for m in mods:
        assert torch.allclose(out[m], loop[m], atol=1e-6)
    got = torch.autograd.grad(sum((v ** 2).sum() for v in out.values()), params)
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, atol=1e-5)


def test_what_vmap_cannot_run_falls_back_to_the_loop(calls):
    torch.manual_seed(0)
    mods = {m: nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5)) for m in "ab"}
    xs = {m: torch.randn(6, 4) for m in mods}
    out = call_grouped(mods, xs, True)
    assert calls == [] and set(out) == {"a", "b"} and out["a"].shape == (6, 8)
    assert architecture(mods["a"]) in batching._UNBATCHABLE


def test_auto_batches_on_cuda_only(calls):
    mods = {m: mlp(4, 3) for m in "ab"}
    call_grouped(mods, {m: torch.randn(6, 4) for m in mods}, "auto")
    assert calls == []


def test_bad_setting_is_an_error_naming_it():
    with pytest.raises(ValueError, match="batch_modalities"):
        check_batch_setting("yes")
    with pytest.raises(ValueError, match="batch_modalities"):
        MultimodalGuide({"a": mlp(4, 4)}, PoE(), batch_modalities=1)


DIMS = {"a": 4, "b": 4, "c": 4, "d": 3}


def problem(batch, aggregator):
    torch.manual_seed(0)
    guide = MultimodalGuide({m: expert_encoder(d, 2, (8,)) for m, d in DIMS.items()},
                            aggregator, batch_modalities=batch)
    model = MultimodalModel(StandardNormalPrior(2),
                            {m: GaussianDecoder(mlp(2, d)) for m, d in DIMS.items()},
                            batch_modalities=batch)
    data = {m: torch.randn(5, d, generator=torch.Generator().manual_seed(1))
            for m, d in DIMS.items()}
    return model, guide, data


@pytest.mark.parametrize("bound", ["mixture", "subsampled"])
def test_model_and_guide_batched_equal_the_loop(bound, calls):
    """Under the MoE mixture bound with everything observed every modality is decoded whole
    (batched); under MVAE's objective each on its scored rows (not batched). Encoders: a, b,
    c batched, d alone."""
    results = []
    for batch in (False, True):
        model, guide, data = problem(batch, MoE() if bound == "mixture" else PoE())
        mask = None if bound == "mixture" else random_mask(data, p=0.7)
        elbo = (MixtureMultimodalELBO(num_particles=2) if bound == "mixture"
                else SubsampledMultimodalELBO(num_particles=2))
        pyro.set_rng_seed(0)
        loss = elbo.differentiable_loss(model, guide, data, mask)
        params = list(model.parameters()) + list(guide.parameters())
        results.append((loss, torch.autograd.grad(loss, params)))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert calls == ([3, 3] if bound == "mixture" else [3])  # encoders (and decoders)
