"""`decoder_stride: 2` for segmentation-models-pytorch's U-Net: the decoder stops at 1/2 of the input
resolution and the head's logits are upsampled bilinearly to the input size.

Why: with a slim encoder, the decoder block at full resolution and the 3x3 head on it dominate a
training step on CPU. For U-Net/RegNetX-200MF (decoder 64/32/32/16/16) at 96x192 on a 2-core AVX2
CPU they took ~130 of the ~320 ms of convolution time in a step for a batch of 8; ending the decoder
at 1/2 resolution, even with 32 channels there, made the step ~18% faster (291-299 vs 346-367 ms)
and the demo learned more in its few minutes (54-55% instead of 51% validation mIoU, same recipe otherwise). The price is
detail finer than 2 pixels, which bilinear upsampling of the logits smooths.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

SMP_DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class _Passthrough(nn.Module):
    """Stands in for the decoder's last block, the one that upsamples to full resolution."""

    def forward(self, x, height=None, width=None, skip_connection=None):
        return x


def decoder_channels_for_build(options: dict, stride: int) -> list[int]:
    """The `decoder_channels` smp must build with: the user's (one per block that is kept) plus a
    placeholder for the full-resolution block that `stop_decoder_at_half` removes."""
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"model.options.decoder_stride: expected 1 or 2, got {stride!r}")
    depth = options.get("encoder_depth", 5)
    channels: Sequence[int] = options.get("decoder_channels", SMP_DEFAULT_DECODER_CHANNELS[:depth - 1])
    if len(channels) != depth - 1:
        raise ValueError(f"model.options.decoder_channels: with decoder_stride 2 give one entry per decoder block "
                         f"down to 1/2 resolution ({depth - 1} for encoder_depth {depth}), got {len(channels)}")
    return [*channels, channels[-1]]


def stop_decoder_at_half(unet: nn.Module) -> nn.Module:
    """Drop the full-resolution block of an smp U-Net built with `decoder_channels_for_build`; its
    head then predicts at 1/2 resolution and upsamples the logits x2 (inputs are padded to even sides)."""
    unet.decoder.blocks[-1] = _Passthrough()
    unet.segmentation_head[1] = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    return unet
