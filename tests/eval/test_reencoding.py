"""The M2VAE's evaluation: the ELBO of every encoder subset decoding all modalities (eq. 12),
in-place fusion (eq. 13) and auto re-encoding, checked on a linear-Gaussian model with its
exact posterior as the guide."""

import pyro.distributions as dist
import pytest
import torch

from pyro_mmvae.eval import auto_reencode, decode_means, encode_means, fuse_in_place, subset_elbos
from pyro_mmvae.protocol import full_mask
from tests.helpers import DIMS, ExactPosteriorGuide, linear_problem


def only(n, names):
    return {m: torch.full((n,), m in names, dtype=torch.bool) for m in DIMS}


def test_subset_elbos_with_the_exact_posteriors():
    """With q(z | x_S) = p(z | x_S): L_S = log p(x_S) + E_{p(z|x_S)} log p(x_{O\\S} | z), and
    L_O = log p(x) for every draw."""
    model, data = linear_problem(n=4)
    guide = ExactPosteriorGuide(model)
    out = subset_elbos(model, guide, data, num_particles=20000)
    rows, elbo = out["subsets"], out["elbo"]
    assert rows.shape == (7, 3) and elbo.shape == (7, 4)
    names = list(DIMS)
    for k in range(7):
        s = [m for i, m in enumerate(names) if rows[k, i]]
        post = model.exact_posterior(data, only(4, s))
        expected = model.exact_log_likelihood(data, only(4, s)).detach()
        for m in names:
            if m in s:
                continue
            w, b, sd = model.linear_parameters(m)
            mean = post.mean @ w.T + b
            tr = torch.einsum("ij,njk,ik->n", w, post.covariance_matrix, w)
            expected = expected + (dist.Normal(mean, sd).log_prob(data[m]).sum(-1)
                                   - 0.5 * tr / sd ** 2).detach()
        atol = 1e-8 if len(s) == 3 else 0.05
        assert torch.allclose(elbo[k], expected, atol=atol), s
    mask = full_mask(data)
    mask["c"] = torch.tensor([False, True, True, True])
    partial = subset_elbos(model, guide, data, mask, subsets=["a", ("a", "c")])
    assert partial["elbo"].shape == (2, 4) and torch.isnan(partial["elbo"][1, 0])
    assert partial["names"] == ["a", "a+c"]
    with pytest.raises(ValueError, match="unknown modality 'd'"):
        subset_elbos(model, guide, data, subsets=["d"])


def test_auto_reencoding_and_in_place_fusion_follow_the_closed_form():
    """Linear-Gaussian, exact guide: decode means W z + b, re-encode to the posterior mean,
    z' = (I + G)^-1 G z with G = sum_m W_m^T W_m / sigma^2 — a contraction to 0."""
    model, data = linear_problem(n=5)
    guide = ExactPosteriorGuide(model)
    z0 = torch.randn(5, 2)
    traj = auto_reencode(model, guide, z0, list(DIMS), steps=4)
    assert traj.shape == (5, 5, 2) and torch.equal(traj[0], z0)
    g = sum(w.T @ w / s ** 2 for w, _, s in (model.linear_parameters(m) for m in DIMS))
    a = torch.linalg.solve(torch.eye(2) + g, g).detach()
    for t in range(1, 5):
        assert torch.allclose(traj[t], traj[t - 1] @ a.T, atol=1e-8)
    # in-place fusion: the new real observation of c with the reconstructions of a and b
    z = encode_means(guide, data, only(5, ("a", "b")))
    fused = fuse_in_place(model, guide, z, {"c": data["c"]}, seen=("a", "b"))
    recon = decode_means(model, z, ["a", "b"])
    combined = {"a": recon["a"], "b": recon["b"], "c": data["c"]}
    assert torch.allclose(fused, model.exact_posterior(combined).mean.detach(), atol=1e-8)
