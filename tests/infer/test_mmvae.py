"""MMVAE-style training (Shi et al. 2019): the stratified MoE IWAE bound with DReG gradients,
pinned to a hand-written port of their ``m_iwae_looser`` / ``m_dreg_looser``, and the unbiased
stratified DReG estimator checked against the exact gradient."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import Normal, constraints
from pyro.infer import SVI

from pyro_mmvae.guides import DiagNormalMixture, MoE
from pyro_mmvae import MixtureMultimodalELBO
from pyro_mmvae.infer.stratified_dreg import leave_one_out_logsumexp
from pyro_mmvae.protocol import observe
from tests.helpers import linear_problem, make_guide

S = 5  # particles per stratum


def log_mean_exp(x, dim):
    return x.logsumexp(dim) - torch.log(torch.tensor(float(x.shape[dim])))


class Recorder:
    """Wraps a model and keeps the value of ``z`` it was scored at (the bound's samples)."""

    vectorized = True

    def __init__(self, model):
        self.model, self.z = model, None

    def __call__(self, data, mask=None):
        with poutine.trace() as tr:
            out = self.model(data, mask)
        self.z = tr.trace.nodes["z"]["value"]
        return out


def mmvae_log_weights(model, experts, zss, data, llik_scaling=None):
    """Port of MMVAE's ``_m_dreg_looser`` (their ``src/objectives.py``) for a linear-Gaussian
    model: ``experts`` the unimodal posteriors ``[(loc, scale)]`` (B, D), ``zss`` (M, S, B, D).
    Returns ``lw`` (M, S, B)."""
    llik_scaling = llik_scaling or {}
    qz_xs_ = [Normal(loc.detach(), scale.detach()) for loc, scale in experts]
    lws = []
    for r in range(len(experts)):
        zs = zss[r]
        lpz = Normal(0.0, 1.0).log_prob(zs).sum(-1)
        lqz_x = log_mean_exp(torch.stack([q.log_prob(zs).sum(-1) for q in qz_xs_]), 0)
        lpx_z = 0.0
        for m in data:
            w, b, s = model.linear_parameters(m)
            lpx_z = lpx_z + llik_scaling.get(m, 1.0) * Normal(zs @ w.T + b, s).log_prob(
                data[m]).sum(-1)
        lws.append(lpz + lpx_z - lqz_x)
    return torch.stack(lws)


def reparameterised(experts, z):
    """The recorded samples ``z`` (K, S, B, D) rebuilt as live functions of the experts."""
    out = []
    for r, (loc, scale) in enumerate(experts):
        eps = ((z[r] - loc) / scale).detach()
        out.append(loc + scale * eps)
    return torch.stack(out)


def experts_of(guide, data):
    q = guide.distribution(data)  # MoE: M experts + the (switched-off) prior component
    m = len(guide.modalities)
    return [(q.locs[..., k, :], q.scales[..., k, :]) for k in range(m)]


def mmvae_problem():
    model, data = linear_problem(n=6)
    return Recorder(model), make_guide(MoE()), data


@pytest.mark.parametrize("weights", [None, {"a": 3.9, "c": 0.5}])
def test_mmvae_value_equals_m_iwae_looser(weights):
    rec, guide, data = mmvae_problem()
    elbo = MixtureMultimodalELBO.mmvae(S, faithful=True, likelihood_weights=weights)
    value = elbo.terms(rec, guide, data)["elbo"]
    lw = mmvae_log_weights(rec.model, experts_of(guide, data), rec.z, data, weights)
    assert rec.z.shape == (3, S, 6, 2)  # 3 experts; the zero-weight prior slot is not drawn
    ref = log_mean_exp(lw, 1).mean(0)  # m_iwae_looser, per data point
    assert torch.allclose(value, ref, atol=1e-10)
    # the unbiased estimator changes gradients only
    pyro.set_rng_seed(3)
    a = MixtureMultimodalELBO.mmvae(S, likelihood_weights=weights).terms(rec, guide, data)
    pyro.set_rng_seed(3)
    b = elbo.terms(rec, guide, data)
    assert torch.allclose(a["elbo"], b["elbo"], atol=1e-12)


def test_faithful_gradients_equal_m_dreg_looser():
    rec, guide, data = mmvae_problem()
    model = rec.model
    params = [*guide.parameters(), *model.parameters()]
    loss = MixtureMultimodalELBO.mmvae(S, faithful=True).differentiable_loss(rec, guide, data)
    ours = torch.autograd.grad(loss, params)

    experts = experts_of(guide, data)
    zss = reparameterised(experts, rec.z)[:3]
    lw = mmvae_log_weights(model, experts, zss, data)
    with torch.no_grad():
        grad_wt = (lw - torch.logsumexp(lw, 1, keepdim=True)).exp()
    zss.register_hook(lambda grad: grad_wt.unsqueeze(-1) * grad)
    surrogate = (grad_wt * lw).mean(0).sum()  # m_dreg_looser
    ref = torch.autograd.grad(-surrogate, params)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert any(g.abs().max() > 1e-3 for g in ours[:len(list(guide.parameters()))])


def hand_written_unbiased_gradient(model, experts, z, data, params):
    """The unbiased stratified DReG estimator, written out per stratum and particle."""
    m = len(experts)
    zss = reparameterised(experts, z)[:m]  # live (M, S, B, D)
    z_in = zss.detach().requires_grad_()
    lw = mmvae_log_weights(model, experts, z_in, data)  # (M, S, B)
    qs = [Normal(loc.detach(), scale.detach()) for loc, scale in experts]
    w = lw.detach().softmax(1)
    total = 0.0
    for ell in range(m):
        for s in range(S):
            zz = z_in[ell, s]  # (B, D)
            comp = torch.stack([q.log_prob(zz).sum(-1) for q in qs])  # (M, B)
            log_r = comp - comp.logsumexp(0)  # responsibilities, uniform pi
            h = 0.0
            for k in range(m):
                rest = torch.cat([lw[k, :s], lw[k, s + 1:]]).detach()  # S-1 other particles
                log_hat = lw[ell, s] - torch.logsumexp(torch.cat([lw[ell, s][None], rest]), 0)
                h = h + (log_r[k] + log_hat).exp()
            total = total + (w[ell, s] * lw[ell, s] - h).sum() / m
    g_z = torch.autograd.grad(total, z_in, retain_graph=True)[0]
    surrogate = (g_z * zss).sum() + (w * lw).sum() / m
    return torch.autograd.grad(-surrogate, params)


def test_unbiased_gradients_equal_a_hand_written_estimator():
    rec, guide, data = mmvae_problem()
    model = rec.model
    params = [*guide.parameters(), *model.parameters()]
    pyro.set_rng_seed(5)
    loss = MixtureMultimodalELBO.mmvae(S).differentiable_loss(rec, guide, data)
    ours = torch.autograd.grad(loss, params)
    ref = hand_written_unbiased_gradient(model, experts_of(guide, data), rec.z, data, params)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-10)
    # model gradients are the IWAE ones, as under MMVAE's DReG (same samples)
    pyro.set_rng_seed(5)
    loss = MixtureMultimodalELBO.mmvae(S, faithful=True).differentiable_loss(rec, guide, data)
    faithful = torch.autograd.grad(loss, params)
    n_guide = len(list(guide.parameters()))
    for a, b in zip(ours[n_guide:], faithful[n_guide:]):
        assert torch.allclose(a, b, atol=1e-10)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(ours[:n_guide],
                                                                   faithful[:n_guide]))


def test_with_one_particle_all_mixture_estimators_are_stl():
    rec, guide, data = mmvae_problem()
    params = list(guide.parameters())
    grads = []
    for elbo in (MixtureMultimodalELBO.mmvae(1), MixtureMultimodalELBO.mmvae(1, faithful=True),
                 MixtureMultimodalELBO(1, estimator="stl")):
        pyro.set_rng_seed(11)
        grads.append(torch.autograd.grad(elbo.differentiable_loss(rec, guide, data), params))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, atol=1e-10)


# --- unbiasedness: a 1-D toy with per-datapoint guide parameters ---------------------------

N_TOY = 4000


def toy_model(data, mask=None):
    with pyro.plate("data", N_TOY):
        z = pyro.sample("z", Normal(torch.zeros(1), 1.0).to_event(1))
        for m in data:
            observe(m, Normal(z, 1.0).to_event(1), data, mask)


def toy_guide(data, mask=None):
    # one copy of the parameters per data point, so their gradients are per-datapoint samples
    loc = pyro.param("loc", torch.tensor([[0.3], [1.8]]).expand(N_TOY, 2, 1).clone())
    scale = pyro.param("scale", torch.tensor([[0.6], [1.2]]).expand(N_TOY, 2, 1).clone(),
                       constraint=constraints.positive)
    logits = pyro.param("logits", torch.tensor([0.0, 0.5]).expand(N_TOY, 2).clone())
    with pyro.plate("data", N_TOY):
        pyro.sample("z", DiagNormalMixture(logits, loc, scale))


def toy_gradients(elbo, seed):
    pyro.clear_param_store()
    data = {"a": torch.full((N_TOY, 1), 2.0), "b": torch.full((N_TOY, 1), 2.0)}
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(toy_model, toy_guide, data)
    names = ("loc", "scale", "logits")
    grads = torch.autograd.grad(loss, [pyro.param(n).unconstrained() for n in names])
    return torch.cat([g.reshape(N_TOY, -1) for g in grads], -1)  # (N, 6) per data point


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_unbiased_stratified_dreg_matches_the_exact_gradient_and_mmvae_dreg_does_not(beta):
    kw = dict(masking="all", form="stratified", iwae=True, beta=beta)
    est = {name: torch.cat([toy_gradients(MixtureMultimodalELBO(4, **kw, **opts), seed)
                            for seed in range(3)])
           for name, opts in [("standard", dict(estimator="standard")),
                              ("unbiased", dict(estimator="dreg")),
                              ("mmvae", dict(estimator="dreg", mixture_dreg="mmvae"))]}
    n = est["standard"].shape[0]

    def z_scores(name):  # paired differences from the exact (standard) estimator
        d = est[name] - est["standard"]  # (the logits' gradients coincide up to rounding)
        return d.mean(0) / (d.std(0).clamp_min(1e-6) / n ** 0.5)

    assert z_scores("unbiased").abs().max() < 4.0
    assert z_scores("mmvae").abs().max() > 8.0  # MMVAE's per-stratum DReG is biased
    # and the unbiased estimator still has much less variance than the score-function one
    assert est["unbiased"].var(0)[:4].sum() < 0.6 * est["standard"].var(0)[:4].sum()


def test_dreg_with_beta_is_unbiased_for_a_gaussian_guide():
    def guide(data, mask=None):
        loc = pyro.param("loc", torch.full((N_TOY, 1), 0.4))
        scale = pyro.param("scale", torch.full((N_TOY, 1), 0.5), constraint=constraints.positive)
        with pyro.plate("data", N_TOY):
            pyro.sample("z", Normal(loc, scale).to_event(1))

    data = {"a": torch.full((N_TOY, 1), 2.0), "b": torch.full((N_TOY, 1), 2.0)}
    out = {}
    for est in ("standard", "dreg"):
        g = []
        for seed in range(3):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            loss = MixtureMultimodalELBO(4, iwae=True, beta=0.5, estimator=est
                                         ).differentiable_loss(toy_model, guide, data)
            p = [pyro.param("loc").unconstrained(), pyro.param("scale").unconstrained()]
            g.append(torch.cat(torch.autograd.grad(loss, p), -1))
        out[est] = torch.cat(g)
    d = out["dreg"] - out["standard"]
    assert (d.mean(0) / (d.std(0) / d.shape[0] ** 0.5)).abs().max() < 4.0


def test_unbiased_stratified_dreg_vanishes_at_the_exact_posterior():
    model, data = linear_problem(n=4, latent_dim=1)
    post = model.exact_posterior(data)
    loc0, scale0 = post.mean.detach(), post.variance.sqrt().detach()

    def guide(data, mask=None):  # a two-component mixture of the exact posterior
        loc = pyro.param("loc", torch.stack([loc0, loc0], -2))
        scale = pyro.param("scale", torch.stack([scale0, scale0], -2),
                           constraint=constraints.positive)
        with pyro.plate("data", 4):
            pyro.sample("z", DiagNormalMixture(torch.zeros(4, 2), loc, scale))

    grads = {}
    for est in ("dreg", "standard"):
        pyro.clear_param_store()
        loss = MixtureMultimodalELBO(5, iwae=True, estimator=est).differentiable_loss(
            model, guide, data)
        wrt = [pyro.param("loc").unconstrained(), pyro.param("scale").unconstrained(),
               *model.parameters()]
        grads[est] = torch.autograd.grad(loss, wrt)
    assert max(g.abs().max() for g in grads["dreg"][:2]) < 1e-8
    assert max(g.abs().max() for g in grads["standard"][:2]) > 1e-3


def test_leave_one_out_logsumexp():
    x = torch.randn(3, 5, 2)
    out = leave_one_out_logsumexp(x, -2)
    for s in range(5):
        rest = torch.cat([x[:, :s], x[:, s + 1:]], 1)
        assert torch.allclose(out[:, s], rest.logsumexp(1))
    assert torch.isneginf(leave_one_out_logsumexp(torch.randn(4, 1), -1)).all()
    big = torch.tensor([0.0, -800.0, -801.0])  # no cancellation when one term dominates
    assert torch.allclose(leave_one_out_logsumexp(big, 0)[0], torch.logaddexp(big[1], big[2]))


@pytest.mark.slow
def test_mmvae_trains_a_moe_guide_under_svi():
    _, data = linear_problem(n=32)
    model, _ = linear_problem(seed=1)
    guide = make_guide(MoE())
    elbo = MixtureMultimodalELBO.mmvae(4)
    assert (elbo.masking_name, elbo.form, elbo.iwae, elbo.estimator, elbo.mixture_dreg) == (
        "all", "stratified", True, "dreg", "unbiased")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    losses = [svi.step(data)]
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    losses += [svi.step(data) for _ in range(150)]
    assert sum(losses[-20:]) < sum(losses[:20])
    after = pyro.get_param_store()
    assert len(before) > 0 and all(not torch.equal(v, after[k]) for k, v in before.items())


def test_mixture_dreg_must_be_known():
    with pytest.raises(ValueError, match="mixture_dreg"):
        MixtureMultimodalELBO(3, iwae=True, mixture_dreg="tucker")
