"""CamVid in the common 11-class layout (SegNet tutorial):

    <root>/{train,val,test}/*.png  and  <root>/{train,val,test}annot/*.png

Masks hold class indices 0..10; 11 (void) is ignored.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .cache import DirectLoader
from .dataset import SegmentationDataset, Transform
from .folder import pair_by_stem
from .labels import camvid_label_set

SPLITS = ("train", "val", "test")


class CamVid(SegmentationDataset):
    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Optional[Transform] = None,
        loader: Optional[DirectLoader] = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got '{split}'")
        root = Path(root)
        samples = pair_by_stem(root / split, root / f"{split}annot")
        super().__init__(samples, camvid_label_set(), transform, loader)
        self.root, self.split = root, split
