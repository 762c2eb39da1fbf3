"""FCN-ResNet50 as in the seed project: a ResNet-50 encoder (stride 32), three transposed-conv
up-sampling stages to stride 4, a 1x1 classifier, and a bilinear resize to the input size."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .weights import load_local_weights

IMAGENET_WEIGHTS = torchvision.models.ResNet50_Weights.IMAGENET1K_V2  # fetched by torch.hub, see weights.py


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FCNResNet50(nn.Module):
    def __init__(self, num_classes: int, encoder_weights: Optional[str] = None):
        super().__init__()
        weights = IMAGENET_WEIGHTS if encoder_weights == "imagenet" else None
        resnet = torchvision.models.resnet50(weights=weights)
        if encoder_weights not in (None, "imagenet"):
            load_local_weights(resnet, encoder_weights)
        self.encoder = nn.Sequential(*list(resnet.children())[:-2])  # drop avgpool and fc
        self.decoder = nn.Sequential(_up(2048, 512), _up(512, 256), _up(256, 128))
        self.classifier = nn.Conv2d(128, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.decoder(self.encoder(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
