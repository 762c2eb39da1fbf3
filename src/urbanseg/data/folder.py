"""Any folder of images and masks, paired by file stem (`a.jpg` <-> `a.png`).

Masks are index images (value i = class i, `ignore_index` ignored) or, when a palette is given,
RGB images coloured with that palette. `group_pattern` (a regex on the file stem; the group is
its first capture group, or the whole match) says which images cross-validation keeps together,
e.g. `^(.+?)_` for `<drive>_<frame>` names.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import ConfigError

from .cache import DirectLoader
from .dataset import Sample, SegmentationDataset, Transform
from .io import DataError, list_images
from .labels import folder_label_set

if TYPE_CHECKING:
    from ..config import DataConfig


def pair_by_stem(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[Sample]:
    """Samples pairing each image with the mask of the same stem; unpaired files are an error."""
    images = {p.stem: p for p in list_images(images_dir)}
    masks = {p.stem: p for p in list_images(masks_dir)}
    for stems, found, other in ((images.keys() - masks.keys(), images, masks_dir),
                                (masks.keys() - images.keys(), masks, images_dir)):
        if stems:
            first = found[sorted(stems)[0]]
            raise DataError(f"{first}: no file with the same name in {other} ({len(stems)} unpaired)")
    if not images:
        raise DataError(f"{images_dir}: no images found")
    return [Sample(image=images[s], mask=masks[s], name=s) for s in sorted(images)]


def with_groups(samples: Sequence[Sample], pattern: str) -> list[Sample]:
    """Samples with `group` set from `pattern` (data.group_pattern) searched in each name."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"data.group_pattern: not a valid regular expression ({error})") from None
    grouped = []
    for sample in samples:
        found = regex.search(sample.name)
        if found is None:
            raise DataError(f"{sample.image}: name '{sample.name}' does not match data.group_pattern '{pattern}'")
        grouped.append(sample._replace(group=found.group(1) if regex.groups else found.group(0)))
    return grouped


class FolderDataset(SegmentationDataset):
    """`<root>/<split>/images/` and `<root>/<split>/masks/` when built from a config."""

    options = ("class_names", "palette", "ignore_index", "group_pattern")  # the data.* keys only this dataset reads

    @classmethod
    def from_config(cls, cfg: "DataConfig", split: str, transform: Optional[Transform] = None,
                    loader: Optional[DirectLoader] = None) -> "FolderDataset":
        if not cfg.class_names:
            raise ConfigError("data.class_names: a folder dataset needs its class names")
        root = Path(cfg.root) / split
        return cls(root / "images", root / "masks", cfg.class_names, cfg.ignore_index, cfg.palette,
                   transform=transform, loader=loader, group_pattern=cfg.group_pattern)

    def __init__(
        self,
        images_dir: str | os.PathLike,
        masks_dir: str | os.PathLike,
        classes: Sequence[str],
        ignore_index: int = 255,
        palette: Optional[Sequence[Sequence[int]]] = None,
        transform: Optional[Transform] = None,
        loader: Optional[DirectLoader] = None,
        group_pattern: Optional[str] = None,
    ):
        labels = folder_label_set(classes, ignore_index, palette)
        samples = pair_by_stem(images_dir, masks_dir)
        if group_pattern is not None:
            samples = with_groups(samples, group_pattern)
        super().__init__(samples, labels, transform, loader)
        self.colour_masks = palette is not None

    def encode_mask(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        if raw_mask.ndim == 3 and self.colour_masks:
            raw_mask = self._colours_to_indices(raw_mask, path)
        return super().encode_mask(raw_mask, path)

    def _colours_to_indices(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        palette = self.labels.palette.astype(np.int32)
        palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
        order = np.argsort(palette_codes)
        position = np.clip(np.searchsorted(palette_codes[order], codes), 0, len(order) - 1)
        found = palette_codes[order][position] == codes
        if not found.all():
            r, g, b = rgb[~found][0]
            raise DataError(f"{path}: colour ({r}, {g}, {b}) is not in the palette")
        return order[position].astype(np.uint8)
