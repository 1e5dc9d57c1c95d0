import torch
from pyro.distributions import MultivariateNormal

from pyro_mmvae.models import pca_maximum_likelihood, relative_llh_gap
from tests.helpers import linear_problem, random_mask


def dense_log_likelihood(model, data, mask, i):
    """log N(x_O; b_O, W_O W_O^T + Sigma_O) for data point i, assembled densely."""
    ws, bs, xs, noise = [], [], [], []
    for m in model.modalities:
        if mask[m][i]:
            w, b, s = model.linear_parameters(m)
            ws.append(w), bs.append(b), xs.append(data[m][i])
            noise.append(s.pow(2).expand(w.shape[0]))
    w, b, x = torch.cat(ws), torch.cat(bs), torch.cat(xs)
    cov = w @ w.T + torch.diag(torch.cat(noise))
    return MultivariateNormal(b, cov).log_prob(x)


def test_exact_log_likelihood_matches_dense_gaussian_with_missing_modalities():
    model, data = linear_problem(n=12, noise=0.7)
    mask = random_mask(data)
    got = model.exact_log_likelihood(data, mask)
    for i in range(12):
        assert torch.allclose(got[i], dense_log_likelihood(model, data, mask, i))


def test_exact_posterior_is_bayes_rule():
    model, data = linear_problem(n=5)
    post = model.exact_posterior(data)
    z = torch.randn(5, 2)
    joint = model.prior().log_prob(z)
    for m in model.modalities:
        joint = joint + model.decoders[m](z).log_prob(data[m])
    lhs = post.log_prob(z)
    rhs = joint - model.exact_log_likelihood(data)
    assert torch.allclose(lhs, rhs)


def test_pca_maximum_likelihood_beats_the_generating_parameters():
    model, data = linear_problem(n=3000)
    x = torch.cat([data[m] for m in model.modalities], -1)
    w, b, sigma2, ll = pca_maximum_likelihood(x, 2)
    truth = model.exact_log_likelihood(data).sum()
    assert ll >= truth - 1e-6
    assert relative_llh_gap(ll, truth) >= -1e-9
    assert relative_llh_gap(ll, ll) == 0


def test_private_latent_study_matches_the_private_model_structure():
    from pyro_mmvae.models import LinearGaussianModel
    from pyro_mmvae.data import private_latent_study
    sim = private_latent_study(num_points=2000, num_modalities=3, shared_dim=2, private_dim=2,
                               dim_range=(6, 9), seed=0, dtype=torch.float64)
    model = LinearGaussianModel(sim.modality_dims, 2, private_dim=2)
    with torch.no_grad():  # load the generating parameters into the model
        for i, m in enumerate(model.modalities):
            w = sim.weights[m]
            own = w[:, 2 + 2 * i: 4 + 2 * i]
            model.decoders[m].net.weight.copy_(torch.cat([w[:, :2], own], 1))
            model.decoders[m].net.bias.copy_(sim.biases[m])
    for m in model.modalities:
        assert torch.allclose(model.linear_parameters(m)[0], sim.weights[m])
    # the exact log-likelihood of the true model is close to the PCA MLE with D = 2 + 3 * 2
    x = torch.cat([sim.data[m] for m in model.modalities], -1)
    mle = pca_maximum_likelihood(x, 8)[-1]
    truth = model.exact_log_likelihood(sim.data).sum()
    assert 0 <= relative_llh_gap(mle, truth) < 5e-3
