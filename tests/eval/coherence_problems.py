"""Problems shared by the coherence, memory-budget and plot tests: label-copying models and
guides whose coherence is known, and a small linear problem with classifiers."""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_mmvae.guides import MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior
from pyro_mmvae.protocol import DATA_PLATE, full_mask, num_points

K = 4
MODS = ("a", "b", "c")


def labelled(n, seed=0, noise=0.05, uninformative=()):
    """Noisy one-hot label vectors ``(n, K)`` per modality (pure noise for ``uninformative``)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(K, (n,), generator=g)
    data = {}
    for m in MODS:
        base = torch.zeros(n, K) if m in uninformative else F.one_hot(y, K).double()
        data[m] = base + noise * torch.rand(n, K, generator=g)
    return data, y


class Argmax(nn.Module):
    """A 'classifier' whose scores are its input: predicts the argmax coordinate."""

    def forward(self, x):
        return x


class CopyGuide:
    """z = the one-hot argmax of the sum of the observed modalities (a Delta)."""

    def __call__(self, data, mask=None):
        mask = full_mask(data) if mask is None else mask
        total = sum(torch.where(mask[m].unsqueeze(-1), x, torch.zeros_like(x))
                    for m, x in data.items())
        z = F.one_hot(total.argmax(-1), K).to(total.dtype)
        with pyro.plate(DATA_PLATE, num_points(data)):
            return pyro.sample("z", dist.Delta(z, event_dim=1))


class LabelPrior(nn.Module):
    """z = a uniformly drawn one-hot label."""

    def forward(self):
        return dist.OneHotCategorical(probs=torch.full((K,), 1.0 / K))


class Zero(nn.Module):
    def forward(self, z):
        return 0 * z


def copy_model():
    return MultimodalModel(LabelPrior(), {m: GaussianDecoder(nn.Identity(), scale=0.1)
                                          for m in MODS})


def noise_model():
    return MultimodalModel(LabelPrior(), {m: GaussianDecoder(Zero(), scale=1.0) for m in MODS})


ARGMAX = {m: Argmax() for m in MODS}


def mean_guide_of(guide):
    def mean_guide(data, mask=None):
        q = guide.distribution(data, mask)
        with pyro.plate(DATA_PLATE, num_points(data)):
            return pyro.sample("z", dist.Delta(q.mean, event_dim=1))
    return mean_guide


def classified_linear_problem(n=37, seed=3):
    torch.manual_seed(seed)
    dims = {"a": 3, "b": 5, "c": 2}
    guide = MultimodalGuide({m: expert_encoder(d, 2, (8,)) for m, d in dims.items()}, PoE())
    model = MultimodalModel(StandardNormalPrior(2),
                            {m: GaussianDecoder(nn.Linear(2, d)) for m, d in dims.items()})
    data = {m: torch.randn(n, d) for m, d in dims.items()}
    y = torch.randint(K, (n,))
    classifiers = {m: nn.Linear(d, K) for m, d in dims.items()}
    return model, guide, data, y, classifiers
