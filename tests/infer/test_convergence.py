"""Seed 004 Table 2 in miniature: a learnable aggregator under the masked bound reaches the
maximum-likelihood fit of the linear-Gaussian simulation (the paper reports a gap of 0.00)."""

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_mmvae.guides import MultimodalGuide, SumPooling, expert_encoder
from pyro_mmvae.models import LinearGaussianModel, pca_maximum_likelihood, relative_llh_gap
from pyro_mmvae import MaskedMultimodalELBO
from pyro_mmvae.data import shared_latent_study


@pytest.mark.slow  # a training run
def test_sum_pooling_masked_bound_reaches_the_mle_on_a_short_budget():
    torch.set_default_dtype(torch.float32)
    sim = shared_latent_study(num_points=1000, num_modalities=3, latent_dim=2,
                              dim_range=(5, 10), seed=0)
    model = LinearGaussianModel(sim.modality_dims, 2)
    guide = MultimodalGuide({m: expert_encoder(d, 4, (32,)) for m, d in sim.modality_dims.items()},
                            SumPooling(8, 2, hidden_dim=32, pooling_dim=32))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), loss=MaskedMultimodalELBO())
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # 500 steps of batch 100
        perm = torch.randperm(1000, generator=gen)
        for i in range(0, 1000, 100):
            svi.step({m: x[perm[i:i + 100]] for m, x in sim.data.items()})
    x = torch.cat(list(sim.data.values()), -1).double()
    mle = pca_maximum_likelihood(x, 2)[-1]
    learned = model.double().exact_log_likelihood({m: v.double() for m, v in sim.data.items()})
    assert relative_llh_gap(mle, learned.sum()) < 1e-3
