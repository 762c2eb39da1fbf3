"""DANet (Fu et al., CVPR 2019): dual attention on any segmentation-models-pytorch / timm encoder.

The deepest encoder feature map (dilated to `output_stride`) goes through two heads: position
attention (every pixel attends over all pixels) and channel attention (every channel attends
over all channels). Their sum is classified and resized bilinearly to the input size.
Position attention costs O((HW/stride^2)^2) memory: at 512x1024 and stride 8 that is 8192^2
attention weights per image, which is why stride 16 is the default here.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class PositionAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # starts as identity, learns how much to attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B x HW x C'
        k = self.key(x).flatten(2)  # B x C' x HW
        attention = torch.softmax(q @ k, dim=-1)  # B x HW x HW
        v = self.value(x).flatten(2)  # B x C x HW
        out = (v @ attention.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)  # B x C x HW
        energy = flat @ flat.transpose(1, 2)  # B x C x C
        # as in the reference code: subtract from the row max, so dissimilar channels weigh more
        attention = torch.softmax(energy.amax(-1, keepdim=True).expand_as(energy) - energy, dim=-1)
        out = (attention @ flat).view(b, c, h, w)
        return self.gamma * out + x


class DANet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet50",
        encoder_weights: Optional[Union[str, bool]] = None,
        output_stride: int = 16,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.encoder = get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights, output_stride=output_stride)
        channels = self.encoder.out_channels[-1]
        inner = max(channels // 4, 32)
        self.position = nn.Sequential(_conv_bn_relu(channels, inner), PositionAttention(inner), _conv_bn_relu(inner, inner))
        self.channel = nn.Sequential(_conv_bn_relu(channels, inner), ChannelAttention(), _conv_bn_relu(inner, inner))
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inner, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        logits = self.classifier(self.position(features) + self.channel(features))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
