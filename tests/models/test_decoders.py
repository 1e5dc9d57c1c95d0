import pyro
import pytest
import torch
from pyro.distributions import Laplace, Normal
from pyro.infer import SVI

from pyro_mmvae.guides import MultimodalGuide, MoPoE, expert_encoder
from pyro_mmvae.models import (BernoulliDecoder, GaussianDecoder, LaplaceDecoder, MultimodalModel,
                               StandardNormalPrior)
from pyro_mmvae import MaskedMultimodalELBO
from pyro_mmvae.nn import MLP


@pytest.mark.parametrize("cls, base", [(GaussianDecoder, Normal), (LaplaceDecoder, Laplace)])
def test_loc_scale_decoders(cls, base):
    net = MLP(2, (8,), 5)
    dec = cls(net, scale=0.5, learn_scale=True)
    z = torch.randn(3, 4, 2)  # (particles, batch, D)
    p = dec(z)
    assert p.batch_shape == (3, 4) and p.event_shape == (5,)
    x = torch.randn(4, 5)
    expected = base(net(z), 0.5).log_prob(x).sum(-1)
    assert torch.allclose(p.log_prob(x), expected, atol=1e-6)
    p.log_prob(x).sum().backward()
    assert dec.raw_scale.grad is not None


class _TwoDimOnly(torch.nn.Module):
    """A network that takes only one batch dim, ``(R, D)`` (as a ``BatchNorm1d`` would)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.shapes = []

    def forward(self, z):
        assert z.dim() == 2, z.shape
        self.shapes.append(tuple(z.shape))
        return self.net(z)


@pytest.mark.parametrize("cls", [GaussianDecoder, LaplaceDecoder, BernoulliDecoder])
def test_decoders_run_their_network_on_one_batch_dim(cls):
    """The leading dims of the code (particles, subsets, data points) are flattened for the
    network and restored on its output: a network taking (R, D) only works under any plates,
    with the values of the broadcasting network."""
    torch.manual_seed(0)
    net = MLP(2, (8,), 5)
    flat = _TwoDimOnly(net)
    dec, ref = cls(flat), cls(net)
    z = torch.randn(2, 3, 4, 2)  # (subsets, particles, batch, D)
    p = dec(z)
    assert flat.shapes == [(24, 2)]
    assert p.batch_shape == (2, 3, 4) and p.event_shape == (5,)
    x = (torch.rand(4, 5) < 0.5).float()
    assert torch.equal(p.log_prob(x), ref(z).log_prob(x))
    dec(torch.randn(4, 2))  # one batch dim already: called as it is
    assert flat.shapes[-1] == (4, 2)


def test_fixed_scale_is_a_buffer_and_per_feature_scales_work():
    dec = GaussianDecoder(MLP(2, (), 3), scale=[0.1, 1.0, 2.0])
    assert "raw_scale" not in dict(dec.named_parameters())
    assert torch.allclose(dec.scale, torch.tensor([0.1, 1.0, 2.0]))


def test_a_fixed_scale_is_computed_once_and_follows_its_buffer():
    """The fixed scale is cached, and recomputed after load_state_dict (an in-place write),
    .to() / .double() (a new buffer) and an assignment."""
    dec = GaussianDecoder(MLP(2, (), 3), scale=0.5)
    assert dec.scale is dec.scale
    other = GaussianDecoder(MLP(2, (), 3), scale=2.0)
    dec.load_state_dict(other.state_dict())
    assert torch.allclose(dec.scale, torch.tensor(2.0))
    dec.double()
    assert dec.scale.dtype == torch.float64
    assert torch.allclose(dec.scale, torch.tensor(2.0, dtype=torch.float64))
    dec.raw_scale = GaussianDecoder(MLP(2, (), 3), scale=0.25).raw_scale.double()
    assert torch.allclose(dec.scale, torch.tensor(0.25, dtype=torch.float64))


def test_bernoulli_decoder_and_image_event_dims():
    net = torch.nn.Sequential(torch.nn.Linear(2, 12), torch.nn.Unflatten(-1, (3, 4)))
    p = BernoulliDecoder(net)(torch.randn(5, 2))
    assert p.batch_shape == (5,) and p.event_shape == (3, 4)
    x = (torch.rand(5, 3, 4) < 0.5).double()
    assert torch.isfinite(p.log_prob(x)).all()


@pytest.mark.slow
def test_mixed_likelihood_model_trains_with_mlp_decoders():
    n, latent = 64, 2
    torch.manual_seed(0)
    z = torch.randn(n, latent)
    data = {"g": z @ torch.randn(latent, 4) + 0.1 * torch.randn(n, 4),
            "l": z @ torch.randn(latent, 3) + 0.1 * torch.randn(n, 3),
            "b": (z @ torch.randn(latent, 6) > 0).double()}
    model = MultimodalModel(StandardNormalPrior(latent), {
        "g": GaussianDecoder(MLP(latent, (16,), 4), learn_scale=True),
        "l": LaplaceDecoder(MLP(latent, (16,), 3), learn_scale=True),
        "b": BernoulliDecoder(MLP(latent, (16,), 6))})
    guide = MultimodalGuide({m: expert_encoder(x.shape[1], latent, (16,))
                             for m, x in data.items()}, MoPoE())
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=MaskedMultimodalELBO())
    losses = [svi.step(data) for _ in range(300)]
    assert sum(losses[-30:]) < 0.8 * sum(losses[:30])


def test_model_generates_missing_modalities():
    model = MultimodalModel(StandardNormalPrior(2), {"a": GaussianDecoder(MLP(2, (), 3))})
    tr = pyro.poutine.trace(model).get_trace({}, {"a": torch.zeros(7, dtype=torch.bool)})
    # an observation site (masked out: no log-density) whose value is a draw from the decoder
    site = tr.nodes["x_a"]
    assert site["value"].shape == (7, 3) and site["is_observed"]
    assert torch.isfinite(site["value"]).all() and (site["value"] != 0).all()
