"""The paper's residual U-Net (after Zhang et al., "Road extraction by deep residual U-Net").

Five residual down stages with filters doubling (width, 2w, ... 16w), a central residual stage (32w),
five residual up stages joined to the down stages by skip connections, 3x3 convolutions with ReLU and
batch normalisation, and a 1x1 head with one channel per structure (each its own sigmoid, so structures may
overlap and one structure is the binary model of the paper). `forward` returns logits (a numerically stable
loss needs them); `probabilities` and the exported ONNX graph apply the sigmoid. Fully convolutional: any
input whose height and width are multiples of 32 works, whole 256x256 slices included.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.preprocess import NETWORK_DEPTH as DEPTH

MULTIPLE = 2 ** DEPTH


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResUNet(nn.Module):
    def __init__(self, width: int = 16, in_channels: int = 1, depth: int = DEPTH, classes: int = 1):
        super().__init__()
        self.width, self.depth, self.classes, self.in_channels = width, depth, classes, in_channels
        chans = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(ResidualBlock(cin, c))
            cin = c
        self.center = ResidualBlock(chans[-1], chans[-1] * 2)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        cin = chans[-1] * 2
        for c in reversed(chans):
            self.upsample.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.up.append(ResidualBlock(2 * c, c))
            cin = c
        self.head = nn.Conv2d(chans[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.center(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


class ProbabilityModel(nn.Module):
    """The exported graph: image [B, C, H, W] in [0, 1] (C = 1, or 2c + 1 slices in 2.5D) -> probability per
    structure [B, K, H, W]."""

    def __init__(self, net: ResUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def pad_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE):
    """Zero-pad H and W up to a multiple; returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
