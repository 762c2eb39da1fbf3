"""`decoder_stride` for segmentation-models-pytorch's U-Net: the decoder stops at 1/2, 1/4 or 1/8 of
the input resolution and the head's logits are upsampled bilinearly to the input size.

Why: with a slim encoder, the decoder blocks at high resolution and the 3x3 head on them dominate a
training step on CPU. For U-Net/RegNetX-200MF (decoder 64/32/32/16/16) at 96x192 on a 2-core AVX2
CPU they took ~130 of the ~320 ms of convolution time in a step for a batch of 8; ending the decoder
at 1/2 resolution, even with 32 channels there, made the step ~18% faster (291-299 vs 346-367 ms)
and the demo learned more in its few minutes (54-55% instead of 51% validation mIoU, same recipe otherwise). The price is
detail finer than `decoder_stride` pixels, which bilinear upsampling of the logits smooths.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

SMP_DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
STRIDES = (1, 2, 4, 8)


class _Passthrough(nn.Module):
    """Stands in for a decoder block that the stride removes (one that would upsample further)."""

    def forward(self, x, height=None, width=None, skip_connection=None):
        return x


def removed_blocks(stride: int, depth: int) -> int:
    """How many of the decoder's last blocks `decoder_stride` removes (1 per halving of resolution)."""
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"model.options.decoder_stride: expected one of {', '.join(map(str, STRIDES))}, got {stride!r}")
    removed = STRIDES.index(stride)
    if removed >= depth:
        raise ValueError(f"model.options.decoder_stride: {stride} leaves no decoder block with encoder_depth {depth}")
    return removed


def decoder_channels_for_build(options: dict, stride: int) -> list[int]:
    """The `decoder_channels` smp must build with: the user's (one per block that is kept) plus a
    placeholder for each block that `stop_decoder_early` removes."""
    depth = options.get("encoder_depth", 5)
    removed = removed_blocks(stride, depth)
    kept = depth - removed
    channels: Sequence[int] = options.get("decoder_channels", SMP_DEFAULT_DECODER_CHANNELS[:kept])
    if len(channels) != kept:
        raise ValueError(f"model.options.decoder_channels: with decoder_stride {stride} give one entry per decoder "
                         f"block down to 1/{stride} resolution ({kept} for encoder_depth {depth}), got {len(channels)}")
    return [*channels, *[channels[-1]] * removed]


def stop_decoder_early(unet: nn.Module, stride: int) -> nn.Module:
    """Drop the last blocks of an smp U-Net built with `decoder_channels_for_build`; its head then
    predicts at 1/`stride` resolution and upsamples the logits (inputs are padded to multiples of the encoder's output stride)."""
    removed = removed_blocks(stride, len(unet.decoder.blocks))
    for index in range(len(unet.decoder.blocks) - removed, len(unet.decoder.blocks)):
        unet.decoder.blocks[index] = _Passthrough()
    unet.segmentation_head[1] = nn.Upsample(scale_factor=stride, mode="bilinear", align_corners=False)
    return unet
