"""SharedOptim: one torch optimiser for all parameters, the updates of pyro.optim.Adam bit for
bit, and its state interchangeable with pyro.optim.Adam's."""

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI

from pyro_mmvae import MaskedMultimodalELBO
from pyro_mmvae.optim import SharedOptim
from tests.helpers import linear_problem, make_guide


def train(optim, steps, model=None, guide=None, data=None, extra=False):
    if model is None:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, data = linear_problem(n=16)
        guide = make_guide()
    pyro.set_rng_seed(1)

    def with_extra(data, mask=None):  # a parameter that appears later (autoguide-like)
        pyro.param("shift", torch.zeros(()))
        return model(data, mask)

    svi = SVI(with_extra if extra else model, guide, optim, loss=MaskedMultimodalELBO())
    for _ in range(steps):
        svi.step(data)
    return model, guide, data


def snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def shared():
    return SharedOptim(torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.99)})


def reference():
    return pyro.optim.Adam({"lr": 0.01, "betas": (0.9, 0.99)})


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("foreach", [False, True])
def test_updates_equal_pyro_adam_bit_for_bit(foreach):
    """Also with torch's multi-tensor kernels (what make_optimizer builds)."""
    train(reference(), 6)
    ref = snapshot()
    train(SharedOptim(torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.99), "foreach": foreach}),
          6)
    assert_same(snapshot(), ref)


@pytest.mark.parametrize("first, second", [(reference, shared), (shared, reference)])
def test_state_moves_between_pyro_adam_and_shared(first, second):
    """3 steps with one optimiser, its state into the other, 3 more: as 3 + 3 steps of one."""
    ref_opt = reference()
    model, guide, data = train(ref_opt, 3)
    train(ref_opt, 3, model, guide, data)
    ref = snapshot()
    opt = first()
    model, guide, data = train(opt, 3)
    state = opt.get_state()
    assert set(state) == set(pyro.get_param_store().keys())
    other = second()
    other.set_state(state)
    train(other, 3, model, guide, data)
    assert_same(snapshot(), ref)


def test_a_new_parameter_rebuilds_and_keeps_the_others_state():
    ref_opt = reference()
    model, guide, data = train(ref_opt, 2)
    train(ref_opt, 3, model, guide, data, extra=True)
    ref = snapshot()
    opt = shared()
    model, guide, data = train(opt, 2)
    train(opt, 3, model, guide, data, extra=True)
    assert "shift" in pyro.get_param_store()
    assert_same(snapshot(), ref)
    assert len({id(o) for o in opt.optim_objs.values()}) == 1  # one optimiser for all


def test_per_parameter_arguments_are_refused():
    with pytest.raises(TypeError, match="dict"):
        SharedOptim(torch.optim.Adam, lambda name: {"lr": 0.1})
