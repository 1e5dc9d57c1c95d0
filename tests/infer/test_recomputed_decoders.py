"""Recomputed decoder activations: ``MixtureMultimodalELBO(recompute_decoders=...)`` runs the
library's decoder networks under activation checkpointing
(:func:`pyro_mmvae.decoding.recomputed_decoders`), to the same values and gradients, the
networks run again in the backward pass, and on by default only from ``RECOMPUTE_ROWS`` codes."""

import pyro
import pytest
import torch

import pyro_mmvae.infer.mixture_elbo as mixture_elbo
from pyro_mmvae import MixtureMultimodalELBO
from pyro_mmvae.decoding import recomputed_decoders, run_network
from pyro_mmvae.guides import MoPoE
from tests.helpers import counted, linear_problem, make_guide, random_mask, reset, rows_decoded


def problem():
    model, data = linear_problem(n=6)
    return counted(model), make_guide(MoPoE()), data, random_mask(data)


def loss_and_grads(bound, model, guide, data, mask):
    torch.manual_seed(0)
    loss = bound.differentiable_loss(model, guide, data, mask)
    params = list(model.parameters()) + list(guide.parameters())
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("form", ["stratified", "average"])
def test_recomputed_decoders_give_the_same_values_and_gradients(form):
    model, guide, data, mask = problem()
    kept, grads_kept = loss_and_grads(MixtureMultimodalELBO(form=form, recompute_decoders=False),
                                      model, guide, data, mask)
    again, grads_again = loss_and_grads(MixtureMultimodalELBO(form=form,
                                                              recompute_decoders=True),
                                        model, guide, data, mask)
    assert torch.equal(kept, again)
    assert sum(g is not None for g in grads_kept) > 4
    for a, b in zip(grads_kept, grads_again):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("recompute", [False, True])
def test_recomputed_decoders_run_the_networks_again_in_the_backward_pass(recompute):
    model, guide, data, mask = problem()
    bound = MixtureMultimodalELBO(form="stratified", recompute_decoders=recompute)
    loss = bound.differentiable_loss(model, guide, data, mask)
    forward = rows_decoded(model)
    assert all(r > 0 for r in forward.values())
    loss.backward()
    factor = 2 if recompute else 1
    assert rows_decoded(model) == {m: factor * r for m, r in forward.items()}


def test_recompute_is_on_by_default_from_recompute_rows_codes(monkeypatch):
    model, guide, data, mask = problem()
    bound = MixtureMultimodalELBO(form="stratified")
    assert bound.recompute_decoders is None
    for threshold, factor in ((10 ** 9, 1), (1, 2)):
        monkeypatch.setattr(mixture_elbo, "RECOMPUTE_ROWS", threshold)
        reset(model)
        pyro.clear_param_store()
        loss = bound.differentiable_loss(model, guide, data, mask)
        forward = rows_decoded(model)
        loss.backward()
        assert rows_decoded(model) == {m: factor * r for m, r in forward.items()}


def test_run_network_checkpoints_only_inside_the_context_and_with_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))  # (recomputing stops early)
    z = torch.randn(4, 6, 2, requires_grad=True)
    plain = run_network(net, z)
    assert plain.shape == (4, 6, 3) and len(calls) == 1
    with recomputed_decoders():
        again = run_network(net, z)
        with torch.no_grad():
            run_network(net, z)
    assert torch.equal(plain, again) and len(calls) == 3
    again.sum().backward()
    assert len(calls) == 4  # recomputed in the backward pass
    with recomputed_decoders(False):
        run_network(net, z).sum().backward()
    assert len(calls) == 5


def test_recompute_decoders_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="recompute_decoders"):
        MixtureMultimodalELBO(recompute_decoders="yes")
