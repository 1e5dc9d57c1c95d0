import pyro
import pytest
import torch
from pyro.distributions import MultivariateNormal

from pyro_mmvae.guides import PoE
from pyro_mmvae.eval import log_likelihood, log_marginal, rate_distortion
from tests.helpers import ExactPosteriorGuide, linear_problem, make_guide, random_mask


def broadened_posterior_guide(model, shift=0.3, inflate=1.5):
    """A mismatched proposal: the exact posterior, shifted and with inflated covariance."""

    def guide(data, mask=None):
        post = model.exact_posterior(data, mask)
        q = MultivariateNormal(post.mean + shift, post.covariance_matrix * inflate)
        with pyro.plate("data", post.batch_shape[-1]):
            pyro.sample("z", q)

    return guide


@pytest.mark.slow  # a training run
def test_is_estimate_converges_to_exact_log_likelihood():
    model, data = linear_problem(n=10)
    guide = broadened_posterior_guide(model)
    mask = random_mask(data)
    exact = model.exact_log_likelihood(data, mask).detach()
    err = [(log_likelihood(model, guide, data, mask, num_samples=k) - exact).abs().mean()
           for k in (3, 20000)]
    assert err[1] < 0.01 < err[0]
    # biased below for few samples (Jensen)
    few = torch.stack([log_likelihood(model, guide, data, mask, num_samples=3)
                       for _ in range(50)]).mean(0)
    assert few.mean() < exact.mean() - 0.02


def test_untrained_guide_still_gives_a_finite_lower_estimate():
    model, data = linear_problem(n=10)
    got = log_likelihood(model, make_guide(PoE()), data, num_samples=500)
    assert torch.isfinite(got).all() and got.mean() < model.exact_log_likelihood(data).mean()


def test_is_estimate_is_exact_with_the_exact_posterior_proposal_and_any_chunking():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    exact = model.exact_log_likelihood(data).detach()
    for chunk in (1, 7, 1000):
        got = log_likelihood(model, guide, data, num_samples=50, chunk_size=chunk)
        assert torch.allclose(got, exact, atol=1e-9)


def test_conditional_log_likelihood_matches_exact_difference():
    model, data = linear_problem(n=6)
    guide = ExactPosteriorGuide(model)
    only_a = {m: torch.full((6,), m == "a") for m in data}
    exact = (model.exact_log_likelihood(data) - model.exact_log_likelihood(data, only_a)).detach()
    got = log_likelihood(model, guide, data, given=["a"], num_samples=20)
    assert torch.allclose(got, exact, atol=1e-9)
    # targets restrict what is scored: log p(x_b | x_a)
    ab = {m: torch.full((6,), m in "ab") for m in data}
    exact_b = (model.exact_log_likelihood(data, ab)
               - model.exact_log_likelihood(data, only_a)).detach()
    got_b = log_likelihood(model, guide, data, given=["a"], targets=["b"], num_samples=20)
    assert torch.allclose(got_b, exact_b, atol=1e-9)


def test_empty_set_has_zero_log_likelihood():
    model, data = linear_problem(n=4)
    none = {m: torch.zeros(4, dtype=torch.bool) for m in data}
    assert torch.equal(log_marginal(model, make_guide(), data, none, num_samples=3),
                       torch.zeros(4))


def test_rate_distortion_closed_forms_at_the_exact_posterior():
    """Seed 004 §3.6: with exact posteriors, E_{p(z|x)} log p(x_m|z) averages to
    -D_m/2 log(2 pi sigma^2) - D_m/2 over data drawn from the model, and the rates equal the
    exact KLs between posteriors."""
    model, data = linear_problem(n=4000, dims={"a": 3, "b": 2}, noise=0.5)
    guide = ExactPosteriorGuide(model)
    t = rate_distortion(model, guide, data, masking="singletons", num_samples=4)
    expected = sum(-d / 2 * torch.log(torch.tensor(2 * torch.pi * 0.25)) - d / 2 for d in (3, 2))
    assert abs(t["full_reconstruction"].mean() - expected) < 0.1
    post = model.exact_posterior(data)
    prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    kl = torch.distributions.kl_divergence(post, prior)
    # no closed form is registered for KL(MultivariateNormal || Normal): sampled estimate
    assert abs(t["full_rate"].mean() - kl.detach().mean()) < 0.05
    assert (t["cross_rate"] > 0).all() and (t["subset_size"] == 1).all()
