"""Image and text encoders: output shapes over image sizes, leading dims, MoPoE parity."""

import pytest
import torch
from torch import nn

from pyro_mmvae.guides.networks import ConvImageEncoder, TextEncoder

IMAGE_SHAPES = [(3, 16, 16), (1, 28, 28), (3, 32, 32), (3, 64, 64), (2, 15, 15), (3, 20, 9),
                (1, 1, 7)]


def conv_config(net, kind):
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
            for m in net.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_image_encoder_shapes(shape):
    enc = ConvImageEncoder(shape, 6, channels=(4, 8))
    assert enc(torch.randn(2, *shape)).shape == (2, 6)
    # leading dims broadcast and equal the per-slice outputs
    x = torch.randn(3, 2, *shape)
    out = enc(x)
    assert out.shape == (3, 2, 6)
    assert torch.allclose(out[1], enc(x[1]), atol=1e-12)


@pytest.mark.parametrize("shape, strides", [((1, 16, 16), [2, 2, 1]), ((1, 28, 28), [2, 2, 2]),
                                            ((1, 64, 64), [2, 2, 2, 2]),
                                            ((1, 15, 15), [2, 2, 1])])
def test_image_encoder_downsamples_to_final_size(shape, strides):
    enc = ConvImageEncoder(shape, 2, channels=(4, 8, 16))
    assert [c[3] for c in conv_config(enc, nn.Conv2d)] == strides
    # the last channel count is repeated when the image needs more stages
    assert [c[1] for c in conv_config(enc, nn.Conv2d)] == [4, 8, 16, 16][:len(strides)]


def test_image_encoder_is_the_polymnist_encoder():
    """Notes A3.3: 3 convs k3 s2 p1 (28 -> 14 -> 7 -> 4), Linear(2048, 512), heads 512 -> 2x512."""
    enc = ConvImageEncoder((3, 28, 28), 1024, hidden_dim=512)
    assert conv_config(enc, nn.Conv2d) == [(3, 32, 3, 2, 1), (32, 64, 3, 2, 1),
                                           (64, 128, 3, 2, 1)]
    linears = [(m.in_features, m.out_features) for m in enc.modules() if isinstance(m, nn.Linear)]
    assert linears == [(2048, 512), (512, 1024)]


@pytest.mark.parametrize("length", [1, 3, 5, 8, 9, 32])
def test_text_encoder_shapes(length):
    enc = TextEncoder(length, 6, alphabet_size=5, channels=8)
    x = torch.nn.functional.one_hot(torch.randint(5, (3, 2, length)), 5).double()
    out = enc(x)
    assert out.shape == (3, 2, 6)
    assert torch.allclose(out[2], enc(x[2]), atol=1e-12)


def test_text_encoder_is_the_mopoe_text_encoder():
    """Notes A3.2: Conv1d(71, 128, k1), Conv1d(k4, s2, p1) 8 -> 4, Conv1d(k4) 4 -> 1, Linear."""
    enc = TextEncoder(8, 40)
    assert conv_config(enc, nn.Conv1d) == [(71, 128, 1, 1, 0), (128, 128, 4, 2, 1),
                                           (128, 128, 4, 1, 0)]
    linears = [(m.in_features, m.out_features) for m in enc.modules() if isinstance(m, nn.Linear)]
    assert linears == [(128, 40)]


def test_encoders_reject_wrong_shapes():
    with pytest.raises(ValueError,
                       match=r"expects images .*\(\.\.\., 1, 28, 28\), got \(2, 3, 28, 28\)"):
        ConvImageEncoder((1, 28, 28), 4)(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expects one-hot text \(\.\.\., 8, 71\), got"):
        TextEncoder(8, 4)(torch.randn(2, 71, 8))
    with pytest.raises(ValueError, match="in_shape must be 3 positive sizes"):
        ConvImageEncoder((28, 28), 4)
    with pytest.raises(ValueError, match="channels"):
        ConvImageEncoder((1, 28, 28), 4, channels=())
