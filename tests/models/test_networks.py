"""Image and text decoders, the categorical likelihood, MoPoE likelihood weights, and an
end-to-end image + text model under the masked bound."""

import math

import pyro
import pytest
import torch
from pyro.distributions import Bernoulli, Laplace, Normal, OneHotCategorical
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_mmvae.guides.aggregators import PoE
from pyro_mmvae.guides.guide import MultimodalGuide
from pyro_mmvae.models.decoders import CategoricalDecoder
from pyro_mmvae.models.multimodal import MultimodalModel
from pyro_mmvae.models.networks import (ConvImageDecoder, TextDecoder, dimension_likelihood_weights,
                                        image_modality, text_modality)
from pyro_mmvae.models.priors import StandardNormalPrior
from pyro_mmvae.infer import MaskedMultimodalELBO

IMAGE_SHAPES = [(3, 16, 16), (1, 28, 28), (3, 32, 32), (3, 64, 64), (2, 15, 15), (3, 20, 9),
                (1, 1, 7)]


def one_hot_text(*shape, alphabet=5):
    return nn.functional.one_hot(torch.randint(alphabet, shape), alphabet).double()


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_image_decoder_shapes_and_leading_dims(shape):
    dec = ConvImageDecoder(3, shape, channels=(8, 4))
    assert dec(torch.randn(2, 3)).shape == (2, *shape)
    z = torch.randn(4, 2, 3)  # (S, B, D)
    out = dec(z)
    assert out.shape == (4, 2, *shape)
    for s in range(4):
        assert torch.allclose(out[s], dec(z[s]), atol=1e-12)
    assert dec(torch.randn(5, 4, 2, 3)).shape == (5, 4, 2, *shape)
    assert dec(torch.randn(3)).shape == shape  # no batch dim at all


@pytest.mark.parametrize("channels", [(8,), (8, 4), (16, 8, 4, 4)])
def test_image_decoder_any_number_of_stages(channels):
    # 16x16 needs 2 halvings to 4x4: fewer channels repeat the first, more add stride-1 stages
    dec = ConvImageDecoder(2, (1, 16, 16), channels=channels)
    assert dec(torch.randn(3, 2)).shape == (3, 1, 16, 16)


def test_image_decoder_is_the_polymnist_decoder():
    """Notes A3.3: Linear(512, 2048) + ReLU, 128x4x4, ConvT k3 s2 p1 (output_padding 0, 1, 1)."""
    dec = ConvImageDecoder(512, (3, 28, 28))
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
              m.output_padding[0]) for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convs == [(128, 64, 3, 2, 1, 0), (64, 32, 3, 2, 1, 1), (32, 3, 3, 2, 1, 1)]
    linears = [(m.in_features, m.out_features) for m in dec.modules() if isinstance(m, nn.Linear)]
    assert linears == [(512, 2048)]


def test_image_decoder_output_activation():
    dec = ConvImageDecoder(2, (1, 8, 8), channels=(4,), output_activation=nn.Sigmoid())
    out = dec(torch.randn(10, 2) * 10)
    assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("length", [1, 3, 5, 8, 9, 32])
def test_text_decoder_shapes_and_leading_dims(length):
    dec = TextDecoder(3, length, alphabet_size=5, channels=8)
    z = torch.randn(4, 2, 3)
    out = dec(z)
    assert out.shape == (4, 2, length, 5)
    for s in range(4):
        assert torch.allclose(out[s], dec(z[s]), atol=1e-12)


def test_text_decoder_is_the_mopoe_text_decoder():
    """Notes A3.2: Linear(20, 128), ConvT1d k4 (1 -> 4), ConvT1d k4 s2 p1 (4 -> 8), Conv1d k1."""
    dec = TextDecoder(20, 8)
    layers = [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0],
               m.padding[0]) for m in dec.modules() if isinstance(m, (nn.Conv1d,
                                                                      nn.ConvTranspose1d))]
    assert layers == [("ConvTranspose1d", 128, 128, 4, 1, 0),
                      ("ConvTranspose1d", 128, 128, 4, 2, 1), ("Conv1d", 128, 71, 1, 1, 0)]


def test_decoders_reject_a_wrong_latent_size():
    with pytest.raises(ValueError, match=r"expects z \(\.\.\., 3\), got \(2, 4\)"):
        ConvImageDecoder(3, (1, 8, 8))(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"expects z \(\.\.\., 3\), got \(2, 4\)"):
        TextDecoder(3, 8)(torch.randn(2, 4))


def test_categorical_decoder_log_prob_over_a_sequence():
    length, alphabet = 6, 5
    dec = CategoricalDecoder(TextDecoder(3, length, alphabet, channels=8))
    z = torch.randn(4, 2, 3)  # (S, B, D)
    x = one_hot_text(2, length, alphabet=alphabet)
    p = dec(z)
    assert isinstance(p.base_dist, OneHotCategorical)
    assert p.batch_shape == (4, 2) and p.event_shape == (length, alphabet)
    # by hand: sum over positions of log_softmax(logits) at the one-hot index
    logp = torch.log_softmax(dec.net(z), -1)
    expected = logp.gather(-1, x.argmax(-1).expand(4, 2, length).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(p.log_prob(x), expected.sum(-1), atol=1e-12)
    sample = p.sample()
    assert sample.shape == (4, 2, length, alphabet) and (sample.sum(-1) == 1).all()


def test_categorical_decoder_single_categorical():
    net = nn.Linear(3, 7)
    z = torch.randn(4, 2, 3)
    p = CategoricalDecoder(net)(z)
    assert p.batch_shape == (4, 2) and p.event_shape == (7,)
    x = nn.functional.one_hot(torch.tensor([3, 6]), 7).double()
    expected = torch.log_softmax(net(z), -1)[..., [0, 1], [3, 6]]  # (S, B): b=0 -> 3, b=1 -> 6
    assert torch.allclose(p.log_prob(x), expected, atol=1e-12)


def test_categorical_decoder_accepts_the_missing_value_placeholder():
    p = CategoricalDecoder(TextDecoder(2, 4, 5, channels=4))(torch.randn(3, 2))
    assert torch.isfinite(p.log_prob(torch.zeros(3, 4, 5))).all()


MST = {"mnist": (1, 28, 28), "svhn": (3, 32, 32), "text": (8, 71)}


def test_likelihood_weights_on_mnist_svhn_text():
    """Notes A2.8: SVHN 1, MNIST 3072/784 = 3.92; text 3072/8 = 384 as in the released code,
    3072/568 counting every one-hot entry."""
    code = dimension_likelihood_weights(MST, one_hot=["text"])
    assert code == {"mnist": 3072 / 784, "svhn": 1.0, "text": 384.0}
    assert round(code["mnist"], 2) == 3.92
    entries = dimension_likelihood_weights(MST)
    assert entries["text"] == pytest.approx(3072 / 568) and entries["svhn"] == 1.0


def test_likelihood_weights_references():
    poly = dimension_likelihood_weights({f"m{i}": (3, 28, 28) for i in range(5)})
    assert set(poly.values()) == {1.0}
    celeba = dimension_likelihood_weights({"img": (3, 64, 64), "text": (256, 71)},
                                          reference=64 * 64, one_hot=("text",))
    assert celeba == {"img": 1 / 3, "text": 16.0}
    by_name = dimension_likelihood_weights(MST, reference="mnist")
    assert by_name["mnist"] == 1.0 and by_name["svhn"] == 784 / 3072
    with pytest.raises(ValueError, match="one_hot names unknown modality 'txt'"):
        dimension_likelihood_weights(MST, one_hot=["txt"])
    with pytest.raises(ValueError, match="reference names unknown modality 'audio'"):
        dimension_likelihood_weights(MST, reference="audio")


@pytest.mark.parametrize("likelihood, family", [("laplace", Laplace), ("gaussian", Normal),
                                                ("bernoulli", Bernoulli)])
def test_image_modality(likelihood, family):
    enc, dec = image_modality((1, 12, 12), 3, likelihood, channels=(4, 8))
    x = torch.rand(2, 1, 12, 12).round() if likelihood == "bernoulli" else torch.rand(2, 1, 12, 12)
    assert enc(x).shape == (2, 6)  # 2 * latent_dim: a Gaussian expert
    p = dec(torch.randn(4, 2, 3))
    assert isinstance(p.base_dist, family)
    assert p.batch_shape == (4, 2) and p.event_shape == (1, 12, 12)
    assert torch.isfinite(p.log_prob(x)).all()
    if likelihood != "bernoulli":
        assert torch.allclose(dec.scale, torch.tensor(0.75))
    enc, _ = image_modality((1, 12, 12), 3, likelihood, embedding_dim=10, channels=(4,))
    assert enc(x).shape == (2, 10)
    with pytest.raises(ValueError, match="likelihood must be"):
        image_modality((1, 12, 12), 3, "poisson")


def tiny_problem(n=6, latent=3):
    img_enc, img_dec = image_modality((3, 15, 15), latent, channels=(4, 8))
    txt_enc, txt_dec = text_modality(8, latent, alphabet_size=5, channels=8)
    model = MultimodalModel(StandardNormalPrior(latent), {"img": img_dec, "text": txt_dec})
    guide = MultimodalGuide({"img": img_enc, "text": txt_enc}, PoE())
    data = {"img": torch.rand(n, 3, 15, 15), "text": one_hot_text(n, 8, alphabet=5)}
    return model, guide, data


@pytest.mark.parametrize("missing", ["img", "text"])
def test_masked_bound_on_image_and_text_reaches_only_observed_encoders(missing):
    model, guide, data = tiny_problem()
    n = data["img"].shape[0]
    mask = {m: torch.full((n,), m != missing) for m in data}
    data[missing] = torch.zeros_like(data[missing])  # the protocol's placeholder
    weights = dimension_likelihood_weights({m: x.shape[1:] for m, x in data.items()},
                                           one_hot=["text"])
    loss = MaskedMultimodalELBO(2, likelihood_weights=weights).differentiable_loss(
        model, guide, data, mask)
    assert torch.isfinite(loss)
    loss.backward()
    for m in data:
        for part in (guide.encoders[m], model.decoders[m]):
            grads = [p.grad for p in part.parameters()]
            if m == missing:
                assert all(g is None or (g == 0).all() for g in grads), m
            else:
                assert all(g is not None and torch.isfinite(g).all() for g in grads), m
                assert sum(g.abs().sum() for g in grads) > 0, m


def test_image_text_model_trains_under_masked_bound_and_trace_elbo():
    model, guide, data = tiny_problem(n=8)
    mask = {"img": torch.tensor([True] * 6 + [False] * 2),
            "text": torch.tensor([True] * 2 + [False] * 2 + [True] * 4)}
    for elbo in (MaskedMultimodalELBO(), Trace_ELBO()):
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
        losses = [svi.step(data, mask) for _ in range(3)]
        assert all(math.isfinite(v) for v in losses)
    # generation: the model samples both modalities from the prior
    tr = pyro.poutine.trace(model).get_trace({}, {m: torch.zeros(4, dtype=torch.bool)
                                                  for m in ("img", "text")})
    assert tr.nodes["x_img"]["value"].shape == (4, 3, 15, 15)
    assert tr.nodes["x_text"]["value"].shape == (4, 8, 5)
