"""The classic U-Net (Ronneberger et al., 2015), written out block by block.

Four down steps and four up steps with skip connections; every conv is followed by batch norm
and ReLU. Input sides must be multiples of 16 (the total down-sampling); the registry wraps the
model in `PadToMultiple`, which pads any input and crops the logits back.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) twice, with optional dropout at the end."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        layers = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """Halve the resolution (2x2 max pool), then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout))


class Up(nn.Module):
    """Double the resolution, concatenate the skip connection from the encoder, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str = "transpose", dropout: float = 0.0):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        elif upsampling == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        else:
            raise ConfigError(f"model.options.upsampling: expected 'transpose' or 'bilinear', got '{upsampling}'")
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with `base_channels` at full resolution, doubling at each of the 4 down steps."""

    multiple = 16

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 64,
        dropout: float = 0.0,
        upsampling: str = "transpose",
    ):
        super().__init__()
        c = [base_channels * 2**i for i in range(5)]
        self.stem = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(Down(c[i], c[i + 1], dropout if i >= 2 else 0.0) for i in range(4))
        self.ups = nn.ModuleList(Up(c[i + 1], c[i], upsampling, dropout if i >= 2 else 0.0) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
