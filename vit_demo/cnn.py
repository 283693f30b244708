"""A small convolutional network for CIFAR-10, torch only: the teacher a ViT recipe may distil from.

The shape follows airbench (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"): a 3x3 stem, then
three blocks of conv -> 2x2 max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, widths
64, 256, 256, a global max-pool and a linear head. It is trained here from random
initialisation on CIFAR-10 alone, so a ViT distilled from it sees no outside data either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class CNNConfig:
    image_size: int = 32  # input height and width in pixels
    in_chans: int = 3  # RGB
    num_classes: int = 10  # CIFAR-10
    stem: int = 32  # channels of the first 3x3 convolution
    widths: tuple[int, ...] = (64, 256, 256)  # channels of each block; each halves the grid
    bn_momentum: float = 0.1  # BatchNorm running-statistics momentum (torch's default)


CNN_PRESETS: dict[str, CNNConfig] = {
    # airbench's widths: 2.0 M parameters, about 0.24 GFLOPs an image.
    "cnn-64-256-256": CNNConfig(),
    # A tiny one for tests.
    "cnn-8-16": CNNConfig(stem=8, widths=(8, 16)),
}


def _conv_bn(c_in: int, c_out: int, momentum: float) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, momentum=momentum)


class ConvBlock(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU: (B, c_in, H, W) to (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, momentum: float = 0.1):
        super().__init__()
        self.conv1, self.norm1 = _conv_bn(c_in, c_out, momentum)
        self.conv2, self.norm2 = _conv_bn(c_out, c_out, momentum)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        self.stem, self.stem_norm = _conv_bn(cfg.in_chans, cfg.stem, cfg.bn_momentum)
        widths = (cfg.stem, *cfg.widths)
        self.blocks = nn.Sequential(*(ConvBlock(a, b, cfg.bn_momentum) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], cfg.num_classes)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) to logits (B, classes)."""
        x = self.blocks(self.act(self.stem_norm(self.stem(x))))  # (B, widths[-1], H', W')
        return self.head(x.amax(dim=(2, 3)))  # global max-pool: (B, widths[-1])
