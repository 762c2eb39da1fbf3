"""CamVid in the common 11-class layout (SegNet tutorial):

    <root>/{train,val,test}/*.png  and  <root>/{train,val,test}annot/*.png

Masks hold class indices 0..10; 11 (void) is ignored. Frames are named `<sequence>_<frame>`
(`0001TP_006690`, `Seq05VD_f00000`); the sequence is each sample's group, which cross-validation
keeps in one fold (neighbouring frames of a video are near-duplicates).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import ConfigError

from .cache import DirectLoader
from .dataset import SegmentationDataset, Transform
from .folder import pair_by_stem
from .labels import camvid_label_set

if TYPE_CHECKING:
    from ..config import DataConfig

SPLITS = ("train", "val", "test")


def sequence_of(name: str) -> str:
    """The video sequence of a CamVid frame name: the part before the first `_`."""
    return name.split("_", 1)[0]


class CamVid(SegmentationDataset):
    options = ()  # the data.* keys only this dataset reads

    @classmethod
    def from_config(cls, cfg: "DataConfig", split: str, transform: Optional[Transform] = None,
                    loader: Optional[DirectLoader] = None) -> "CamVid":
        return cls(cfg.root, split, transform=transform, loader=loader)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Optional[Transform] = None,
        loader: Optional[DirectLoader] = None,
    ):
        if split not in SPLITS:
            raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, got '{split}'")
        root = Path(root)
        samples = [s._replace(group=sequence_of(s.name)) for s in pair_by_stem(root / split, root / f"{split}annot")]
        super().__init__(samples, camvid_label_set(), transform, loader)
        self.root, self.split = root, split
