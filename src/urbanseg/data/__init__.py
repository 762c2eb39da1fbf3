"""Datasets, label tables, the decoded-array cache and augmentation pipelines.

Adding a dataset is a class deriving `SegmentationDataset` (exposing `.labels`, `options` and
`from_config`) plus one line in `DATASETS`; `build_dataset` picks it by `data.dataset`.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from ..errors import ConfigError, DataError
from .cache import DecodedCache, DirectLoader
from .camvid import CamVid
from .cityscapes import Cityscapes
from .dataset import Sample, SegmentationDataset, Transform
from .folder import FolderDataset
from .labels import LabelSet, camvid_label_set, cityscapes_label_set, folder_label_set

if TYPE_CHECKING:
    from ..config import DataConfig

# name -> dataset class: the only dataset registry.
DATASETS: dict[str, type[SegmentationDataset]] = {"cityscapes": Cityscapes, "camvid": CamVid, "folder": FolderDataset}


def build_dataset(cfg: "DataConfig", split: str, transform: Optional[Transform] = None) -> SegmentationDataset:
    """One split of the dataset `data.dataset` names, read through the configured loader (the
    decoded-array cache with `data.cache`, resized to `data.load_size` when set)."""
    cls = DATASETS.get(cfg.dataset)
    if cls is None:
        raise ConfigError(f"data.dataset: expected one of {', '.join(DATASETS)}, got '{cfg.dataset}'")
    _check_foreign_options(cfg, cls)
    size = config_size(cfg.load_size, "data.load_size")
    loader = DecodedCache(cfg.cache, size) if cfg.cache else DirectLoader(size)
    return cls.from_config(cfg, split, transform, loader)


def config_size(value, key: str) -> Optional[tuple[int, int]]:
    """A `[height, width]` config value as a tuple, or ConfigError naming `key`."""
    if value is None:
        return None
    if len(value) != 2 or min(value) <= 0:
        raise ConfigError(f"{key}: expected [height, width], got {value}")
    return int(value[0]), int(value[1])


def _check_foreign_options(cfg: "DataConfig", cls: type[SegmentationDataset]) -> None:
    """A key that only another dataset reads, set away from its default, would be silently ignored."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    for name, other in DATASETS.items():
        for key in other.options:
            if key not in cls.options and getattr(cfg, key) != defaults.get(key):
                raise ConfigError(f"data.{key}: only the {name} dataset reads it, but data.dataset is "
                                  f"'{cfg.dataset}'; remove it")


__all__ = [
    "DATASETS", "CamVid", "Cityscapes", "DataError", "DecodedCache", "DirectLoader", "FolderDataset",
    "LabelSet", "Sample", "SegmentationDataset", "build_dataset", "camvid_label_set", "cityscapes_label_set",
    "config_size", "folder_label_set",
]
