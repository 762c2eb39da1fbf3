"""The dataset base class: a list of (image, mask) files, a label set, a loader and a transform."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from ..errors import DataError
from .cache import DirectLoader
from .labels import LabelSet

Transform = Callable[[np.ndarray, np.ndarray], tuple]


class Sample(NamedTuple):
    image: Path
    mask: Path
    name: str  # file stem shared by image and mask, e.g. "aachen_000000_000019"
    group: str = ""  # what must stay together in cross-validation (the city for Cityscapes)


class SegmentationDataset:
    """Returns `(image, mask)`: with no transform, an HxWx3 uint8 RGB array and an HxW uint8 array
    of class indices (`labels.ignore_index` where ignored); with a transform, whatever it returns.

    Any problem with a file (unreadable, size mismatch, unknown label value) raises `DataError`
    naming that file. A dataset that `build_dataset` can make from a config also defines
    `options` (the `data.*` keys only it reads) and `from_config(cfg, split, transform, loader)`.

    It is a map-style dataset as `torch.utils.data.DataLoader` takes it (`__len__`, `__getitem__`)
    without deriving from torch's `Dataset`, whose base adds nothing else: listing and checking
    files (`urbanseg prepare`) then runs without importing PyTorch.
    """

    options: tuple[str, ...] = ()

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: LabelSet,
        transform: Optional[Transform] = None,
        loader: Optional[DirectLoader] = None,
    ):
        self.samples = list(samples)
        self.labels = labels
        self.transform = transform
        self.loader = loader or DirectLoader()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded image and class-index mask, before any transform."""
        sample = self.samples[index]
        image, raw_mask = self.loader.pair(sample.image, sample.mask)
        return image, self.encode_mask(raw_mask, sample.mask)

    def encode_mask(self, raw_mask: np.ndarray, path: Path) -> np.ndarray:
        if raw_mask.ndim != 2:
            raise DataError(f"{path}: expected a single-channel label image, got {raw_mask.shape[2]} channels")
        return self.labels.encode(raw_mask, source=str(path))

    def __getitem__(self, key):
        """`dataset[i]`, or `dataset[(i, seed)]` to draw the random augmentation from `seed`: the
        training sampler passes seeds derived from (run seed, epoch, index), which makes the
        augmentation of every sample reproducible whatever the number of workers, and on resume."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask, seed) if seed is not None else self.transform(image, mask)
