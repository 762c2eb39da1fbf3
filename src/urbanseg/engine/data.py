"""Training data: the augmented train / validation pair, the sharded sampler, loaders and label statistics."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig
from ..data import SegmentationDataset, build_dataset, config_size
from ..data.preset import Preset
from ..data.sample_lists import restrict_to_list
from ..data.transforms import AugmentConfig, eval_transform, train_transform
from ..errors import ConfigError


def augment_config(cfg: DataConfig) -> AugmentConfig:
    return AugmentConfig(
        resize=config_size(cfg.resize, "data.resize"), scale=tuple(cfg.scale), crop=config_size(cfg.crop, "data.crop"),
        hflip=cfg.hflip, rotate=cfg.rotate, color_jitter=cfg.color_jitter, blur=cfg.blur,
    )


def build_train_val(cfg: DataConfig, preset: Preset = Preset()) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training split with its augmentation and the validation split at `data.val_resize`, each
    restricted to the samples `data.train_samples` / `data.val_samples` list when set."""
    train = build_dataset(cfg, cfg.train_split)
    train.transform = train_transform(augment_config(cfg), train.labels.ignore_index, preset)
    val = build_dataset(cfg, cfg.val_split, eval_transform(config_size(cfg.val_resize, "data.val_resize"), preset))
    if cfg.train_samples is not None:
        restrict_to_list(train, cfg.train_samples)
    if cfg.val_samples is not None:
        restrict_to_list(val, cfg.val_samples)
    return train, val


class ShardedSampler(Sampler[int]):
    """Per-epoch shuffled indices split across ranks; resumable mid-epoch.

    Training (`shuffle=True, pad=True`): like DistributedSampler, every rank gets the same number
    of indices, padding by repeating the first ones. Evaluation (`pad=False`): each sample goes to
    exactly one rank (`indices[rank::world_size]`), so no sample is counted twice.
    `start` skips that many indices of this rank's share (to resume inside an epoch).
    With `seeded`, it yields `(index, seed)` pairs so the dataset draws each sample's augmentation
    from a seed fixed by (run seed, epoch, position in the epoch). With `weights` (training), an
    epoch is `size` indices drawn with replacement in proportion to them (`rare_class_weights`).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 pad: bool = True, seed: int = 0, seeded: bool = False, weights: Optional[np.ndarray] = None):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.pad, self.seed, self.seeded = shuffle, pad, seed, seeded
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[tuple[int, int]]:
        """This rank's (position in the epoch, index) pairs."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.shuffle and self.weights is not None:
            indices = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        elif self.shuffle:
            indices = torch.randperm(self.size, generator=generator).tolist()
        else:
            indices = list(range(self.size))
        if self.pad:
            total = math.ceil(self.size / self.world_size) * self.world_size
            indices += (indices * math.ceil(total / max(len(indices), 1)))[: total - len(indices)]
        return list(enumerate(indices))[self.rank :: self.world_size]

    def __iter__(self) -> Iterator:
        shard = self._shard()[self.start :]
        if not self.seeded:
            return iter(index for _, index in shard)
        # seeded by position, not index: an image drawn twice in an epoch is augmented twice
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_033
        return iter((index, (base + position) % 2**32) for position, index in shard)

    def __len__(self) -> int:
        return len(self._shard()) - self.start


def make_loader(dataset, sampler: Sampler, batch_size: int, workers: int, drop_last: bool,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=workers > 0)


def label_statistics(dataset: SegmentationDataset) -> tuple:
    """Per class: labelled pixels, and total pixels of the images that contain the class; and per
    image, which classes it contains (images x classes, bool)."""
    n = dataset.labels.num_classes
    pixel_counts, image_pixels = np.zeros(n, np.int64), np.zeros(n, np.int64)
    presence = np.zeros((len(dataset), n), bool)
    for index in range(len(dataset)):
        _, mask = dataset.load(index)
        counts = np.bincount(np.asarray(mask).ravel(), minlength=256)[:n]
        pixel_counts += counts
        image_pixels[counts > 0] += mask.size
        presence[index] = counts > 0
    return pixel_counts, image_pixels, presence


def rare_class_weights(pixel_counts: np.ndarray, presence: np.ndarray, temperature: float) -> np.ndarray:
    """Image sampling probabilities of rare-class sampling (Hoyer et al., DAFormer, 2022): draw a
    class c with probability softmax((1 - f_c) / T) over the classes that occur (f_c: its share of
    labelled pixels), then an image containing c uniformly. Small T favours rare classes strongly;
    large T tends to uniform sampling of classes (not of images)."""
    if temperature <= 0:
        raise ConfigError(f"data.rare_class_sampling: expected a temperature > 0, got {temperature}")
    occurs = presence.sum(axis=0)
    if not occurs.any():  # no labelled pixel anywhere: sample uniformly
        return np.full(len(presence), 1 / max(len(presence), 1))
    frequency = pixel_counts / max(pixel_counts.sum(), 1)
    logits = np.where(occurs > 0, (1 - frequency) / temperature, -np.inf)
    class_p = np.exp(logits - logits[occurs > 0].max())
    class_p /= class_p.sum()
    weights = presence @ (class_p / np.maximum(occurs, 1))
    return weights / weights.sum()
