"""Shared feature extractors in front of the router and the experts (``--trunk``), which make
the MoE a classifier head on learned features.

Legend: N images, C input channels, c ``--trunk-channels``, b ``--trunk-blocks``.
"""
from __future__ import annotations

from torch import Tensor, nn

TRUNK_CHOICES = ("none", "cnn", "resnet")


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class CNNTrunk(nn.Module):
    """Three conv-BN-ReLU blocks with max-pool (c, 2c, 4c channels), pooled to 2x2:
    (N, C, H, W) -> (N, 16c) features."""

    def __init__(self, in_channels: int, channels: int = 32):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for out in (channels, 2 * channels, 4 * channels):
            blocks += [*conv_bn_relu(width, out), nn.MaxPool2d(2)]
            width = out
        blocks.append(nn.AdaptiveAvgPool2d(2))
        self.net = nn.Sequential(*blocks)
        self.out_features = 4 * channels * 4

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (N, 4c, 2, 2) -> (N, 16c)


class Residual(nn.Module):
    """x + F(x) with F two conv-BN-ReLU layers of the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(channels, channels), *conv_bn_relu(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetTrunk(nn.Module):
    """The residual network of the fast CIFAR-10 training recipes (the "ResNet-9" of Page's
    DAWNBench entry, its width and depth as flags): a conv-BN-ReLU stem of c channels, then
    three stages of 2c, 4c and 8c channels, each a conv-BN-ReLU and a 2x2 max-pool followed by
    b residual blocks, and a global max-pool: (N, C, H, W) -> (N, 8c) features.
    With c=64, b=1 it is Page's network without its classifier and with a residual block in its
    middle stage too (7.7 M parameters instead of 6.6 M)."""

    def __init__(self, in_channels: int, channels: int = 64, blocks: int = 1):
        super().__init__()
        layers: list[nn.Module] = conv_bn_relu(in_channels, channels)
        width = channels
        for out in (2 * channels, 4 * channels, 8 * channels):
            layers += [*conv_bn_relu(width, out), nn.MaxPool2d(2), *(Residual(out) for _ in range(blocks))]
            width = out
        layers.append(nn.AdaptiveMaxPool2d(1))
        self.net = nn.Sequential(*layers)
        self.out_features = 8 * channels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (N, 8c, 1, 1) -> (N, 8c)


def build_trunk(name: str, in_channels: int, channels: int, blocks: int) -> CNNTrunk | ResNetTrunk | None:
    if name == "cnn":
        return CNNTrunk(in_channels, channels)
    if name == "resnet":
        return ResNetTrunk(in_channels, channels, blocks)
    return None


def trunk_features(name: str, channels: int) -> int:
    """Width of the features a trunk gives (what the router and the experts read)."""
    return {"cnn": 16 * channels, "resnet": 8 * channels}[name]
