"""Run a model whose input sides must be multiples of its output stride on any input size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadToMultiple(nn.Module):
    """Pad the input on the bottom/right to a multiple of `multiple` (and to at least `min_size`),
    then crop the logits back to the input size.

    Reflection padding keeps image statistics at the border; inputs too small to reflect are
    zero-padded.
    """

    def __init__(self, model: nn.Module, multiple: int, min_size: int = 0):
        super().__init__()
        self.model = model
        self.multiple = multiple
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = max(height + (-height % self.multiple), self.min_size) - height
        pad_w = max(width + (-width % self.multiple), self.min_size) - width
        if pad_h or pad_w:
            mode = "reflect" if height > pad_h and width > pad_w else "constant"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return self.model(x)[..., :height, :width]
