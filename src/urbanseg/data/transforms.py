"""Paired image/mask pipelines on albumentations.

Masks are always resampled with nearest neighbour and padded with the ignore index, so a mask
never gains a value that was not in it (besides the ignore index). Both pipelines end in a
float CHW image tensor (normalised with the run's `Preset`) and an int64 HW mask tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import albumentations as A
import cv2
import numpy as np
import torch

from .preset import Preset


@dataclass
class AugmentConfig:
    """Train-time augmentation recipe; sizes are (height, width)."""

    resize: Optional[Tuple[int, int]] = None  # base size before random scaling (None: as loaded)
    scale: Tuple[float, float] = (0.5, 2.0)  # random scale range relative to the base size
    crop: Optional[Tuple[int, int]] = (512, 1024)  # random crop; padded with ignore when larger
    hflip: float = 0.5  # probability of a horizontal flip
    rotate: float = 0.0  # max rotation in degrees (0: off)
    color_jitter: float = 0.2  # brightness/contrast/saturation strength (0: off)
    blur: float = 0.0  # probability of a Gaussian blur


class PairTransform:
    """Callable `(image, mask) -> (image tensor, mask tensor)` around an albumentations pipeline."""

    def __init__(self, steps: list):
        self.pipeline = A.Compose(steps)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=np.asarray(image), mask=np.asarray(mask))
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return image, torch.from_numpy(out["mask"].astype(np.int64))


def train_transform(cfg: AugmentConfig, ignore_index: int = 255, preset: Preset = Preset()) -> PairTransform:
    steps: list = []
    if cfg.resize:
        steps.append(A.Resize(*cfg.resize, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    low, high = cfg.scale
    if (low, high) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    if cfg.rotate:
        steps.append(
            A.Rotate(
                limit=cfg.rotate,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
                p=0.5,
            )
        )
    if cfg.crop:
        steps.append(
            A.RandomCrop(
                *cfg.crop, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index
            )
        )
    if cfg.hflip:
        steps.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.color_jitter:
        j = cfg.color_jitter
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4), p=0.8))
    if cfg.blur:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 1.5), p=cfg.blur))
    steps.append(A.Normalize(mean=preset.mean, std=preset.std))
    return PairTransform(steps)


def eval_transform(resize: Optional[Tuple[int, int]] = None, preset: Preset = Preset()) -> PairTransform:
    """Deterministic: optional resize of the image and mask, then normalisation."""
    steps: list = []
    if resize:
        steps.append(A.Resize(*resize, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    steps.append(A.Normalize(mean=preset.mean, std=preset.std))
    return PairTransform(steps)
