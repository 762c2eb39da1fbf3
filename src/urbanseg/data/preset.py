"""The preprocessing preset: how an RGB image becomes a model input, in one place.

Training, validation, inference and the pictures of a run all read it from here, and every
checkpoint stores it, so a model is always fed (and its inputs shown) as it was trained:

- `mean`, `std`: per-channel normalisation of 0..1 RGB values (ImageNet's by default);
- `input_size`: (height, width) the model saw in validation, which inference resizes to before
  the forward pass (None: images are used at their own size);
- `window`: the training crop, the sliding-window size for `mode="slide"`;
- `pad_multiple`: the model pads its input to a multiple of this (its output stride), which an
  exported graph with fixed sizes needs to know.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Optional[Tuple[int, int]]


@dataclass(frozen=True)
class Preset:
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    input_size: Size = None
    window: Size = None
    pad_multiple: int = 1

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in 0..255 -> normalised model input, on the images' device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1) * 255
        return (images - mean) / std

    def to_image(self, tensor: torch.Tensor) -> np.ndarray:
        """A normalised (3, H, W) input back to the HxWx3 uint8 RGB it came from (for pictures)."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((tensor.detach().cpu().float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Preset":
        def size(value) -> Size:
            return None if value is None else (int(value[0]), int(value[1]))

        return cls(mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                   input_size=size(data["input_size"]), window=size(data["window"]),
                   pad_multiple=int(data["pad_multiple"]))


def preset_for(data_cfg, model: Optional[torch.nn.Module] = None) -> Preset:
    """The preset of a run: validation saw images at `data.val_resize`, else at the size they
    were loaded at (`data.load_size`); the training crop is the sliding window."""
    def size(value) -> Size:
        return None if value is None else (int(value[0]), int(value[1]))

    return Preset(input_size=size(data_cfg.val_resize or data_cfg.load_size), window=size(data_cfg.crop),
                  pad_multiple=int(getattr(model, "multiple", 1)) if model is not None else 1)
