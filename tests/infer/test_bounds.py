"""Closed-form, invariance and training checks of the three multimodal bounds."""

import pyro
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_mmvae.guides import (MoE, MoPoE, PoE, SelfAttention, SelfAttentionMixture, SumPooling,
                               SumPoolingMixture)
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO
from tests.helpers import ExactPosteriorGuide, linear_problem, make_guide, random_mask

SMALL = dict(hidden_dim=16, pooling_dim=8)
ATTENTION = dict(SMALL, attention_dim=8, mlp_dim=16)
AGGREGATORS = {
    "PoE": PoE, "MoE": MoE, "MoPoE": MoPoE,
    # features of make_guide's expert encoders: E = 2 * latent = 4, latent D = 2
    "SumPooling": lambda: SumPooling(4, 2, **SMALL),
    "SelfAttention": lambda: SelfAttention(4, 2, **ATTENTION),
    "SumPoolingMixture": lambda: SumPoolingMixture(4, 2, 3, **SMALL),
    "SelfAttentionMixture": lambda: SelfAttentionMixture(4, 2, 3, **ATTENTION),
}
CLASSIC = ("PoE", "MoE", "MoPoE")
BOUNDS = {
    "masked": lambda: MaskedMultimodalELBO(),
    "masked-iwae": lambda: MaskedMultimodalELBO(3, iwae=True),
    "mixture": lambda: MixtureMultimodalELBO(),
    "mixture-average": lambda: MixtureMultimodalELBO(form="average"),
    "mixture-sampled-iid": lambda: MixtureMultimodalELBO(masking="iid_half", form="sampled"),
    "mixture-iwae": lambda: MixtureMultimodalELBO(3, iwae=True),
    "subsampled": lambda: SubsampledMultimodalELBO(),
    "subsampled-iwae": lambda: SubsampledMultimodalELBO(2, iwae=True),
}

# every bound with the classic aggregators; the main bounds with the learnable ones
TRAIN_CASES = [(b, a) for a in CLASSIC for b in sorted(BOUNDS)] + [
    (b, a) for a in sorted(set(AGGREGATORS) - set(CLASSIC))
    for b in ("masked", "masked-iwae", "mixture", "mixture-sampled-iid", "subsampled")]


def seeded(fn, seed=7):
    pyro.set_rng_seed(seed)
    return fn()


def test_masked_bound_with_full_subset_equals_trace_mean_field_elbo():
    model, data = linear_problem()
    guide = make_guide(PoE())
    ours = seeded(lambda: MaskedMultimodalELBO(masking="all").loss(model, guide, data))
    ref = seeded(lambda: TraceMeanField_ELBO().loss(model, guide, data))
    assert ours == pytest.approx(ref, abs=1e-10)


def test_masked_bound_is_exact_at_the_exact_posterior():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    mask = random_mask(data)
    exact = model.exact_log_likelihood(data, mask).detach()
    # sampled KLs: every single sample equals log p(x) (zero variance)
    for masking in ("iid_half", "hierarchical", "singletons", "none", "all"):
        terms = MaskedMultimodalELBO(masking=masking, analytic_kl=False).terms(
            model, guide, data, mask)
        assert torch.allclose(terms["elbo"], exact, atol=1e-9), masking
    # analytic KLs: exact in expectation
    elbo = MaskedMultimodalELBO(4000)
    assert torch.allclose(elbo.terms(model, guide, data, mask)["elbo"], exact, atol=0.1)


def test_mixture_bound_is_strictly_below_the_exact_likelihood():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    exact = model.exact_log_likelihood(data).detach()
    value = MixtureMultimodalELBO(3000, masking="singletons").terms(model, guide, data)["elbo"]
    assert (value < exact - 1e-2).all() and (exact - value).mean() > 0.5
    t = MixtureMultimodalELBO(3000, masking="iid_half", analytic_kl=False).terms(
        model, guide, data)
    proper = t["subset_size"] < 3
    assert proper.any() and (t["elbo"][proper] < exact[proper] - 1e-2).all()
    assert torch.allclose(t["elbo"][~proper], exact[~proper], atol=1e-9)
    # with S = all observed the mixture bound is the ordinary ELBO: exact here
    value = MixtureMultimodalELBO(masking="all", analytic_kl=False).terms(model, guide, data)
    assert torch.allclose(value["elbo"], exact, atol=1e-9)


def test_subsampled_objective_is_sum_of_subset_likelihoods_at_exact_posterior():
    model, data = linear_problem(n=5, dims={"a": 3, "b": 2})
    guide = ExactPosteriorGuide(model)
    only = {m: {k: torch.full((5,), k == m) for k in data} for m in data}
    expected = model.exact_log_likelihood(data) + sum(
        model.exact_log_likelihood(data, only[m]) for m in data)
    got = SubsampledMultimodalELBO(num_subsets=2, analytic_kl=False).terms(model, guide, data)
    assert torch.allclose(got["elbo"], expected.detach(), atol=1e-9)


def test_iwae_with_one_particle_equals_the_elbo():
    model, data = linear_problem()
    for agg in AGGREGATORS.values():
        guide = make_guide(agg())
        pyro.clear_param_store()
        for cls in (MaskedMultimodalELBO, MixtureMultimodalELBO, SubsampledMultimodalELBO):
            a = seeded(lambda: cls(analytic_kl=False).loss(model, guide, data))
            b = seeded(lambda: cls(iwae=True, estimator="standard").loss(model, guide, data))
            assert a == pytest.approx(b, abs=1e-10)


def test_iwae_bound_increases_with_particles_and_stays_below_exact():
    model, data = linear_problem(n=6)
    guide = make_guide(PoE())
    exact = model.exact_log_likelihood(data).sum().item()
    elbo = -MixtureMultimodalELBO(4000).loss(model, guide, data)  # E[IWAE_1], sharp
    iwae_10 = sum(-MixtureMultimodalELBO(10, iwae=True).loss(model, guide, data)
                  for _ in range(200)) / 200
    iwae_2000 = -MixtureMultimodalELBO(2000, iwae=True).loss(model, guide, data)
    assert elbo < iwae_10 < iwae_2000 < exact


def test_mixture_stratified_is_tighter_than_subset_average():
    """MoPoE Lemma 3: the mixture ELBO (eq. 6) >= the average of subset ELBOs (eq. 12)."""
    model, data = linear_problem(n=6)
    exact = model.exact_log_likelihood(data).sum().item()
    for agg in (MoE(), MoPoE()):
        guide = make_guide(agg)
        strat = -MixtureMultimodalELBO(2000, form="stratified").loss(model, guide, data)
        avg = -MixtureMultimodalELBO(2000, form="average").loss(model, guide, data)
        sampled = -MixtureMultimodalELBO(4000, form="sampled").loss(model, guide, data)
        assert avg < strat < exact
        assert sampled == pytest.approx(strat, rel=0.02)


def test_mixture_forms_coincide_for_a_gaussian_guide():
    """With one Gaussian q(z | x_S) the three forms are the same estimator, draw for draw;
    with a mixture guide (MoE) they are not, so the form does reach the bound."""
    model, data = linear_problem()

    def values(guide):
        return [seeded(lambda: MixtureMultimodalELBO(form=f).loss(model, guide, data))
                for f in ("stratified", "average", "sampled")]

    gaussian = values(make_guide(PoE()))
    assert gaussian[0] == gaussian[1] == gaussian[2]
    mixture = values(make_guide(MoE()))
    assert len({round(v, 6) for v in mixture}) == 3


@pytest.mark.parametrize("bound", sorted(BOUNDS))
@pytest.mark.parametrize("agg", sorted(AGGREGATORS))
def test_masked_out_values_change_neither_loss_nor_gradients(bound, agg):
    model, data = linear_problem(n=8)
    guide = make_guide(AGGREGATORS[agg]())
    mask = random_mask(data)
    other = {m: torch.where(mask[m].unsqueeze(-1), x, 50 * torch.randn_like(x))
             for m, x in data.items()}
    params = list(model.parameters()) + list(guide.parameters())
    results = []
    for d in (data, other):
        elbo = BOUNDS[bound]()
        loss = seeded(lambda: elbo.differentiable_loss(model, guide, d, mask))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss, grads))
    (l1, g1), (l2, g2) = results
    assert torch.equal(l1, l2)
    for a, b in zip(g1, g2):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("bound, agg", TRAIN_CASES)
def test_each_bound_trains_and_reaches_every_parameter(bound, agg):
    _, data = linear_problem(n=32)
    model, _ = linear_problem(seed=1)  # a model that is not the one that made the data
    guide = make_guide(AGGREGATORS[agg]())
    elbo = BOUNDS[bound]()
    loss = elbo.differentiable_loss(model, guide, data)
    loss.backward()
    for name, p in [*model.named_parameters(), *guide.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert_trains(model, guide, elbo, data)


def assert_trains(model, guide, elbo, data, steps=200):
    """SVI lowers the loss and raises the exact log-likelihood of the (linear) model."""
    pyro.clear_param_store()
    before = model.exact_log_likelihood(data).sum().item()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss=elbo)
    losses = [svi.step(data) for _ in range(steps)]
    assert sum(losses[-40:]) < sum(losses[:40]), type(elbo).__name__
    assert model.exact_log_likelihood(data).sum().item() > before + 1.0, type(elbo).__name__


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("agg", sorted(AGGREGATORS))
def test_pyro_builtin_elbos_train_the_same_model_and_guide(agg):
    _, data = linear_problem(n=32)
    losses = [Trace_ELBO(), RenyiELBO(alpha=0, num_particles=2)]
    if agg == "PoE":
        losses.append(TraceMeanField_ELBO())
    for loss in losses:
        model, _ = linear_problem(seed=1)
        assert_trains(model, make_guide(AGGREGATORS[agg]()), loss, data)


def test_differentiable_loss_in_a_plain_torch_loop():
    _, data = linear_problem(n=32)
    with pyro.settings.context(module_local_params=True):
        model, _ = linear_problem(seed=1)
        guide = make_guide(PoE())
        opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=0.02)
        elbo = MaskedMultimodalELBO()
        first = None
        for _ in range(100):
            opt.zero_grad()
            loss = elbo.differentiable_loss(model, guide, data)
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
    assert loss.item() < first


def test_masked_terms_add_up():
    model, data = linear_problem()
    guide = make_guide(MoPoE())
    t = MaskedMultimodalELBO(analytic_kl=False).terms(model, guide, data, random_mask(data))
    assert torch.allclose(t["elbo"], t["marginal"] + t["conditional"])
    assert torch.allclose(t["marginal"], t["marginal_reconstruction"] - t["marginal_rate"])
    assert torch.allclose(t["conditional"], t["conditional_reconstruction"]
                          - t["cross_rate"])
    t = SubsampledMultimodalELBO(num_subsets=3).terms(model, guide, data)
    assert torch.allclose(t["elbo"], t["full"] + t["unimodal"] + t["random"])


def test_beta_and_likelihood_weights_enter_as_documented():
    model, data = linear_problem()
    guide = make_guide(PoE())

    def terms(**kw):
        return seeded(lambda: MaskedMultimodalELBO(masking="all", **kw).terms(model, guide, data))

    base, w2, w3 = terms(), terms(likelihood_weights={"a": 2.0}), terms(
        likelihood_weights={"a": 3.0}, beta=3.0)
    # same samples: the reconstruction is linear in w_a, the rate unchanged by weights and beta
    assert torch.allclose(w3["reconstruction"] - base["reconstruction"],
                          2 * (w2["reconstruction"] - base["reconstruction"]))
    assert (w2["reconstruction"] != base["reconstruction"]).all()
    assert torch.allclose(w3["rate"], base["rate"])
    assert torch.allclose(w3["marginal"], w3["reconstruction"] - 3.0 * w3["rate"])


def test_stl_gradient_vanishes_at_the_exact_posterior():
    """Sticking the landing: zero-variance guide gradient when q is the exact posterior."""
    model, data = linear_problem(n=4, latent_dim=1)
    post = model.exact_posterior(data)
    loc0, scale0 = post.mean.detach(), post.variance.sqrt().detach()

    def guide(data, mask=None):
        loc = pyro.param("loc", loc0.clone())
        scale = pyro.param("scale", scale0.clone(),
                           constraint=torch.distributions.constraints.positive)
        with pyro.plate("data", 4):
            pyro.sample("z", pyro.distributions.Normal(loc, scale).to_event(1))

    grads = {}
    for est in ("stl", "standard"):
        pyro.clear_param_store()
        elbo = MaskedMultimodalELBO(masking="all", analytic_kl=False, estimator=est)
        g = []
        for _ in range(20):
            loss = elbo.differentiable_loss(model, guide, data)
            p = pyro.param("loc").unconstrained()
            g.append(torch.autograd.grad(loss, p)[0])
        grads[est] = torch.stack(g)
    assert grads["stl"].abs().max() < 1e-8
    assert grads["standard"].abs().max() > 1e-2


def test_dreg_keeps_model_gradients_and_vanishes_at_exact_posterior():
    model, data = linear_problem(n=4, latent_dim=1)
    post = model.exact_posterior(data)

    def guide(data, mask=None):
        loc = pyro.param("loc", post.mean.detach().clone())
        scale = pyro.param("scale", post.variance.sqrt().detach().clone(),
                           constraint=torch.distributions.constraints.positive)
        with pyro.plate("data", 4):
            pyro.sample("z", pyro.distributions.Normal(loc, scale).to_event(1))

    params = {}
    for est in ("dreg", "standard"):
        pyro.clear_param_store()
        loss = seeded(lambda: MixtureMultimodalELBO(5, iwae=True, estimator=est)
                      .differentiable_loss(model, guide, data))
        wrt = [pyro.param("loc").unconstrained(), *model.parameters()]
        params[est] = torch.autograd.grad(loss, wrt)
    assert params["dreg"][0].abs().max() < 1e-8  # guide gradient: exactly zero here
    assert params["standard"][0].abs().max() > 1e-3
    for a, b in zip(params["dreg"][1:], params["standard"][1:]):  # model gradients: identical
        assert torch.allclose(a, b, atol=1e-10)
