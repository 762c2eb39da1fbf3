"""Cityscapes exactly as distributed:

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

labelIds are mapped to the 19 trainIds (or a configured class set) by lookup table, so no
`*_labelTrainIds.png` preparation step is needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from ..errors import ConfigError

from .cache import DirectLoader
from .dataset import Sample, SegmentationDataset, Transform
from .io import DataError
from .labels import cityscapes_label_set

if TYPE_CHECKING:
    from ..config import DataConfig

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"


def find_pairs(root: str | os.PathLike, split: str) -> tuple[list[Sample], list[Path], list[Path]]:
    """Paired samples of one split, plus images without labels and labels without images."""
    root = Path(root)
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))}
    labels = {p.name[: -len(LABEL_SUFFIX)]: p for p in sorted(label_dir.glob(f"*/*{LABEL_SUFFIX}"))}
    samples = [
        Sample(image=images[stem], mask=labels[stem], name=stem, group=images[stem].parent.name)
        for stem in sorted(images.keys() & labels.keys())
    ]
    unpaired_images = [images[s] for s in sorted(images.keys() - labels.keys())]
    unpaired_labels = [labels[s] for s in sorted(labels.keys() - images.keys())]
    return samples, unpaired_images, unpaired_labels


class Cityscapes(SegmentationDataset):
    """One split of a Cityscapes tree; `classes` picks the class set (see `cityscapes_label_set`)."""

    options = ("classes",)  # the data.* keys only this dataset reads

    @classmethod
    def from_config(cls, cfg: "DataConfig", split: str, transform: Optional[Transform] = None,
                    loader: Optional[DirectLoader] = None) -> "Cityscapes":
        return cls(cfg.root, split, classes=cfg.classes, transform=transform, loader=loader)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: Union[str, Mapping[str, Sequence[str]]] = "official",
        transform: Optional[Transform] = None,
        loader: Optional[DirectLoader] = None,
        cities: Optional[Sequence[str]] = None,
    ):
        if split not in SPLITS:
            raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, got '{split}'")
        root = Path(root)
        for sub in ("leftImg8bit", "gtFine"):
            if not (root / sub / split).is_dir():
                raise DataError(f"{root / sub / split}: folder not found (is {root} a Cityscapes root?)")
        samples, unpaired_images, unpaired_labels = find_pairs(root, split)
        if unpaired_images:
            raise DataError(f"{unpaired_images[0]}: no matching {LABEL_SUFFIX} ({len(unpaired_images)} such images)")
        if unpaired_labels:
            raise DataError(f"{unpaired_labels[0]}: no matching {IMAGE_SUFFIX} ({len(unpaired_labels)} such labels)")
        if cities is not None:
            samples = [s for s in samples if s.group in set(cities)]
        if not samples:
            raise DataError(f"{root / 'leftImg8bit' / split}: no images found")
        super().__init__(samples, cityscapes_label_set(classes), transform, loader)
        self.root, self.split = root, split
