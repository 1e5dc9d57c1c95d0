r"""STL and DReG with hierarchical guides: the private latents' :math:`q(w\mid z, x)` has
parameters computed from the *sampled* :math:`z` (seed 004's PE heads).

STL may drop only the score term :math:`\partial_\phi\log q_\phi(z, w)` at fixed samples and
must keep the path :math:`\partial_z\log q(w\mid z)\,\partial_\phi z`; then, as for a flat
guide, its guide gradient is exactly zero at the exact posterior. (Dropping that path too, as
detaching :math:`q(w\mid z)`'s parameter tensors does, leaves the ELBO gradient unbiased, since
the dropped term has mean zero given :math:`z`, but loses that property.) DReG must use the same
density and weight every path derivative of :math:`\log w_k` once, the path
:math:`\phi\to z_k\to w_k` included, to be unbiased.

Unbiasedness is checked against the standard reparameterised gradient on ``n`` independent
copies of one problem in one vectorised call: every guide parameter the check covers has one row
per data point, so the rows of its gradient are independent draws, and running both estimators
from the same seed pairs the draws (the difference of two unbiased estimators has mean zero).
"""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import Normal
from torch import nn

from pyro_mmvae.guides import MultimodalGuide, PoE, PooledPrivate
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae import MaskedMultimodalELBO, MixtureMultimodalELBO
from pyro_mmvae.nn import inverse_positive_scale
from pyro_mmvae.protocol import STL_FN

K = 4  # IWAE particles
D = P = 1  # shared and private latent sizes
DIMS = {"a": 2, "b": 3}


def copies(row, n):
    return torch.as_tensor(row, dtype=torch.get_default_dtype()).expand(n, -1).clone()


def problem(dims, n, seed=0):
    """A linear-Gaussian model with private latents and one data point repeated ``n`` times."""
    torch.manual_seed(seed)
    model = LinearGaussianModel(dims, D, private_dim=P)
    data = {m: copies(torch.randn(d) + 1.0, n) for m, d in dims.items()}
    return model, data


class Table(nn.Module):
    """An encoder whose features are a free parameter row per data point (its input is
    ignored): the rows of the features' gradient are independent draws."""

    def __init__(self, row, n):
        super().__init__()
        self.table = nn.Parameter(copies(row, n))

    def forward(self, x):
        return self.table


def z_scores(elbo, model, guide, data, params, seed=0):
    """Per-coordinate z-scores of the mean paired difference between ``elbo``'s gradient and
    the standard estimator's, over the independent rows of ``params()``."""
    grads = []
    for estimator in (elbo.estimator, "standard"):
        elbo.estimator = estimator
        pyro.set_rng_seed(seed)
        loss = elbo.differentiable_loss(model, guide, data)
        g = torch.autograd.grad(loss, params())
        grads.append(torch.cat([x.reshape(x.shape[0], -1) for x in g], -1))
    d = grads[0] - grads[1]
    assert d.abs().max() > 1e-3  # the estimators differ draw by draw
    return d.mean(0) / (d.std(0) / d.shape[0] ** 0.5)


# --- exactness: zero guide gradient at the exact hierarchical posterior ------------------

class LinearPrivate(nn.Module):
    r"""Private head :math:`q(w_m\mid z)=\mathcal N(\alpha_m+\beta_m z, \tau_m)` (``D = P = 1``)."""

    def __init__(self, alpha, beta, tau):
        super().__init__()
        self.alpha, self.beta, self.tau = (nn.Parameter(t.reshape(-1, 1)) for t in
                                           (alpha, beta, tau))

    def forward(self, features, mask, z):
        loc = self.alpha + self.beta * z.unsqueeze(-2)  # (..., B, M, 1)
        return loc, self.tau.expand_as(loc)


def exact_pe_guide(model, data):
    r"""A :class:`~pyro_mmvae.guides.MultimodalGuide` equal to the exact posterior: PoE experts
    equal to the likelihood factors of :math:`z` (the private latents integrated out), and
    :math:`p(w_m\mid z, x_m)` from the joint posterior of :math:`(z, w_m)`."""
    n = next(iter(data.values())).shape[0]
    names = list(data)
    encoders, alpha, beta, tau = {}, [], [], []
    for i, m in enumerate(names):
        only = {k: torch.full((n,), k == m) for k in names}
        single = model.exact_posterior(data, only)
        prec = 1.0 / single.covariance_matrix[0, 0, 0]  # p(z | x_m) = N(0, 1) x expert
        expert_prec = prec - 1.0
        loc = single.mean[0, 0] * prec / expert_prec
        raw = inverse_positive_scale(expert_prec.rsqrt(), 1e-3)
        encoders[m] = Table(torch.stack([loc, raw]).detach(), n)
    joint = model.exact_posterior(data)  # u = (z, w_a, w_b)
    mu, cov = joint.mean[0].detach(), joint.covariance_matrix[0].detach()
    for i in range(len(names)):
        j = 1 + i
        b = cov[j, 0] / cov[0, 0]
        alpha.append(mu[j] - b * mu[0])
        beta.append(b)
        tau.append((cov[j, j] - b * cov[j, 0]).sqrt())
    head = LinearPrivate(*map(torch.stack, (alpha, beta, tau)))
    return MultimodalGuide(encoders, PoE(), private=head)


@pytest.mark.parametrize("vectorize", [None, False])  # False: once per particle
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_guide_gradient_vanishes_at_the_exact_hierarchical_posterior(estimator, vectorize):
    """Sticking the landing with private latents: every sample gives zero guide gradient."""
    model, data = problem(DIMS, 3)
    guide = exact_pe_guide(model, data)
    iwae = estimator == "dreg"
    grads = {}
    for est in (estimator, "standard"):
        pyro.set_rng_seed(0)
        elbo = MaskedMultimodalELBO(16, masking="all", iwae=iwae, analytic_kl=False,
                                    estimator=est, vectorize=vectorize)
        loss = elbo.differentiable_loss(model, guide, data)
        assert torch.allclose(-loss, model.exact_log_likelihood(data).sum(), atol=1e-8)
        grads[est] = torch.cat([g.flatten() for g in torch.autograd.grad(
            loss, list(guide.parameters()))])
    assert grads[estimator].abs().max() < 1e-8
    assert grads["standard"].abs().max() > 1e-2


# --- unbiasedness: a hand-built hierarchical guide, every parameter one row per data point --

N_TINY = 4000
TINY = {"a": 0.3, "b": -0.5, "c": 0.2, "e": 1.5, "f": -0.3, "g": 0.8}


def q_w(p, z):
    r""":math:`q(w\mid z)=\mathcal N(c + e z, \mathrm{softplus}(f + g z))`."""
    return Normal(p["c"] + p["e"] * z, F.softplus(p["f"] + p["g"] * z)).to_event(1)


def tiny_guide(data, mask=None):
    r""":math:`z\sim\mathcal N(a, \mathrm{softplus}(b))`, :math:`w_a\sim q(w\mid z)`; the
    STL density of ``w_a`` is recorded under :data:`~pyro_mmvae.protocol.STL_FN`."""
    p = {k: pyro.param(k, copies([v], N_TINY)) for k, v in TINY.items()}
    bar = {k: v.detach() for k, v in p.items()}
    with pyro.plate("data", N_TINY):
        z = pyro.sample("z", Normal(p["a"], F.softplus(p["b"])).to_event(1))
        pyro.sample("w_a", q_w(p, z), infer={STL_FN: lambda values: q_w(bar, values.get("z", z))})


@pytest.mark.parametrize("elbo", [
    pytest.param(lambda: MixtureMultimodalELBO(analytic_kl=False, estimator="stl"), id="stl"),
    pytest.param(lambda: MixtureMultimodalELBO(K, iwae=True, estimator="dreg"), id="dreg"),
    pytest.param(lambda: MixtureMultimodalELBO(K, iwae=True, beta=0.5, estimator="dreg"),
                 id="dreg-beta"),
])
def test_estimators_are_unbiased_for_a_hand_built_hierarchical_guide(elbo):
    model, data = problem({"a": 2}, N_TINY)
    z = z_scores(elbo(), model, tiny_guide, data,
                 lambda: [pyro.param(k).unconstrained() for k in TINY])
    assert z.abs().max() < 4.0, z


# --- unbiasedness: the library's guide with PE-SumPooling's private head --------------------

def pooled_guide(dims, n, seed=1):
    """Free per-datapoint PoE experts and a tiny :class:`~pyro_mmvae.guides.PooledPrivate` head
    whose output depends strongly on ``z``."""
    torch.manual_seed(seed)
    encoders = {m: Table(0.5 * torch.randn(2 * D), n) for m in dims}
    head = PooledPrivate(2 * D, D, P, hidden_dim=4, pooling_dim=4)
    with torch.no_grad():
        head.chi2[0].weight.mul_(8.0)
        head.psi[-1].weight.mul_(3.0)
    return MultimodalGuide(encoders, PoE(), private=head)


@pytest.mark.parametrize("elbo,n", [
    pytest.param(lambda: MaskedMultimodalELBO(analytic_kl=False, estimator="stl"), 4000,
                 id="stl"),
    # DReG's score term is noisy: enough draws to see a bias of a few per cent
    pytest.param(lambda: MaskedMultimodalELBO(K, iwae=True, estimator="dreg"), 40000,
                 id="dreg"),
])
@pytest.mark.slow
def test_estimators_are_unbiased_for_a_pooled_private_head(elbo, n):
    """Masked bound (random subsets, conditional priors) with the library's guide."""
    model, data = problem(DIMS, n)
    guide = pooled_guide(DIMS, n)
    z = z_scores(elbo(), model, guide, data,
                 lambda: [guide.encoders[m].table for m in guide.modalities])
    assert z.abs().max() < 4.0, z


def test_dreg_gives_the_model_the_iwae_gradient_with_a_hierarchical_guide():
    """Same samples: DReG and the standard IWAE gradient agree exactly on the model."""
    model, data = problem(DIMS, 8)
    guide = pooled_guide(DIMS, 8)
    grads = {}
    for est in ("dreg", "standard"):
        pyro.set_rng_seed(3)
        loss = MaskedMultimodalELBO(K, iwae=True, estimator=est).differentiable_loss(
            model, guide, data)
        grads[est] = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(grads["dreg"], grads["standard"]):
        assert torch.allclose(a, b, atol=1e-10)
