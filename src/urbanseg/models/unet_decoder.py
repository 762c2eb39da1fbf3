"""U-Net on a segmentation-models-pytorch encoder whose decoder stops at 1/2, 1/4 or 1/8 of the
input resolution (`decoder_stride`); the head's logits are upsampled bilinearly to the input size.

Why: with a slim encoder, the decoder blocks at high resolution and the 3x3 head on them dominate a
training step on CPU. For U-Net/RegNetX-200MF (decoder 64/32/32/16/16) at 96x192 on a 2-core AVX2
CPU they took ~130 of the ~320 ms of convolution time in a step for a batch of 8; ending the decoder
at 1/2 resolution, even with 32 channels there, made the step ~18% faster (291-299 vs 346-367 ms)
and the demo learned more in its few minutes (54-55% instead of 51% validation mIoU, same recipe
otherwise). The price is detail finer than `decoder_stride` pixels, which bilinear upsampling of the
logits smooths.

The encoder comes from smp's public `get_encoder`; the decoder blocks are smp's U-Net blocks written
out (see `DecoderBlock`) under smp's module names, so the state dict has the keys of smp's `Unet`
less those of the blocks past 1/`decoder_stride`. `decoder_stride: 1` is smp's own `Unet` (the
registry builds that); this file is only for 2, 4 and 8.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from ..errors import ConfigError

SMP_DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp.Unet's default, one per block
STRIDES = (1, 2, 4, 8)


def removed_blocks(stride: int, depth: int) -> int:
    """How many of a depth-`depth` U-Net's last decoder blocks `stride` removes (one per halving)."""
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ConfigError(f"model.options.decoder_stride: expected one of {', '.join(map(str, STRIDES))}, got {stride!r}")
    removed = STRIDES.index(stride)
    if removed >= depth:
        raise ConfigError(f"model.options.decoder_stride: {stride} leaves no decoder block with encoder_depth {depth}")
    return removed


def kept_decoder_channels(channels: Optional[Sequence[int]], stride: int, depth: int) -> list[int]:
    """The decoder's channels, one per block it keeps; by default smp's, less the removed blocks'."""
    kept = depth - removed_blocks(stride, depth)
    if channels is None:
        return list(SMP_DEFAULT_DECODER_CHANNELS[:kept])
    if len(channels) != kept:
        raise ConfigError(f"model.options.decoder_channels: with decoder_stride {stride} give one entry per decoder "
                          f"block down to 1/{stride} resolution ({kept} for encoder_depth {depth}), got {len(channels)}")
    return list(channels)


class ConvBnReLU(nn.Sequential):
    """3x3 conv (no bias: batch norm follows) -> BN -> ReLU; smp's `Conv2dReLU` with its defaults."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample to the skip connection's size, concatenate it, then ConvBnReLU twice (smp's block)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, interpolation: str = "nearest"):
        super().__init__()
        self.interpolation = interpolation
        self.conv1 = ConvBnReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBnReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode=self.interpolation)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class StridedUnetDecoder(nn.Module):
    """smp's U-Net decoder with only its first `len(decoder_channels)` blocks.

    `encoder_channels` are the encoder's feature channels from full resolution down (smp's
    `encoder.out_channels`). Every kept block has a skip connection, since the block that would
    reach full resolution (the only one without) is always removed.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 interpolation: str = "nearest", center: bool = False):
        super().__init__()
        deepest, *skips = reversed(encoder_channels)  # deepest first, as the decoder meets them
        if len(decoder_channels) >= len(encoder_channels) - 1:
            raise ValueError("StridedUnetDecoder: the decoder must stop above full resolution")
        # smp adds a center block (two ConvBnReLU on the deepest features) for VGG encoders only
        self.center = nn.Sequential(ConvBnReLU(deepest, deepest), ConvBnReLU(deepest, deepest)) if center else nn.Identity()
        in_channels = [deepest, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, interpolation) for i, s, o in zip(in_channels, skips, decoder_channels)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[-1])
        for block, skip in zip(self.blocks, reversed(features[:-1])):  # zip stops at the last kept block
            x = block(x, skip)
        return x


class StridedUnet(nn.Module):
    """Encoder -> decoder down to 1/`stride` -> 3x3 conv head -> bilinear upsampling by `stride`.

    Input sides must be multiples of `encoder.output_stride` (the registry pads them), so that the
    upsampled logits have exactly the input size.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, decoder_channels: Sequence[int], stride: int,
                 interpolation: str = "nearest", center: bool = False):
        super().__init__()
        self.encoder = encoder
        self.decoder = StridedUnetDecoder(encoder.out_channels, decoder_channels, interpolation, center)
        # a Sequential like smp's SegmentationHead (conv, upsampling), so its keys are smp's too
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1),
            nn.Upsample(scale_factor=stride, mode="bilinear", align_corners=False),
        )
        _initialize_as_smp(self.decoder, self.segmentation_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


def _initialize_as_smp(decoder: nn.Module, head: nn.Module) -> None:
    """smp's initialisation (`initialize_decoder`, `initialize_head`), so that training starts
    where it does with smp's `Unet`: He-uniform decoder convs, Xavier-uniform head, BN at identity."""
    for module in decoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def strided_unet(num_classes: int, encoder: str, encoder_weights: Optional[str | bool], decoder_stride: int,
                 encoder_depth: int = 5, decoder_channels: Optional[Sequence[int]] = None,
                 decoder_interpolation: str = "nearest") -> StridedUnet:
    """U-Net with `decoder_stride` 2, 4 or 8. `encoder_weights` is what smp's `get_encoder` takes
    (None, 'imagenet', or True for `tu-` encoders); the options keep smp's `Unet` names and defaults."""
    channels = kept_decoder_channels(decoder_channels, decoder_stride, encoder_depth)
    backbone = get_encoder(encoder, in_channels=3, depth=encoder_depth, weights=encoder_weights)
    return StridedUnet(backbone, num_classes, channels, decoder_stride, decoder_interpolation,
                       center=encoder.startswith("vgg"))
