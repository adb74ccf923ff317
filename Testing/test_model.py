from __future__ import annotations

import pytest
import torch

from extremeaug.networks.model import ResUNet, pad_to_multiple, parameter_count


@pytest.mark.parametrize("shape", [(2, 1, 128, 128), (1, 1, 256, 256), (3, 1, 64, 192), (1, 1, 160, 96)])
def test_output_shape_matches_input(shape):
    net = ResUNet(4).eval()
    with torch.no_grad():
        assert net(torch.rand(shape)).shape == shape
        p = net.probabilities(torch.rand(shape))
    assert p.min() >= 0 and p.max() <= 1


def test_any_size_through_padding():
    net = ResUNet(4).eval()
    x = torch.rand(1, 1, 100, 130)
    padded, (h, w) = pad_to_multiple(x)
    assert padded.shape[-2:] == (128, 160)
    with torch.no_grad():
        assert net(padded)[..., :h, :w].shape == x.shape


def test_architecture_is_the_papers():
    net = ResUNet(8)
    assert len(net.down) == 5 and len(net.up) == 5
    assert [b.body[0].out_channels for b in net.down] == [8, 16, 32, 64, 128]
    assert net.center.body[0].out_channels == 256
    assert all(m.kernel_size == (3, 3) for b in net.down for m in b.body if isinstance(m, torch.nn.Conv2d))
    # filters double per stage: parameters grow ~4x when the width doubles
    assert 3.5 < parameter_count(ResUNet(16)) / parameter_count(ResUNet(8)) < 4.1


def test_gradients_reach_every_stage():
    net = ResUNet(4)
    net(torch.rand(2, 1, 64, 64)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
