"""Rare-class copy-paste (`data.copy_paste`): a batch augmentation that pastes the pixels of chosen
classes, with their labels, from one training image onto another at the same place.

Why: with a few hundred training images, thin and small classes (pole, sign, pedestrian,
bicyclist) are seen in few places and against few backgrounds. Pasting them into other scenes
shows each instance in new surroundings for the cost of a masked copy of the batch tensors. It is
ClassMix (Olsson et al., 2021) restricted to the classes named, in the spirit of Copy-Paste
(Ghiasi et al., 2021). The source of each image is the one before it in the same batch, so it
runs on the device the batch is on, under DDP as well, with no extra loading. The crops were drawn
at random places and scales, so a pasted object lands at a random place and scale in its new scene.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

from ..errors import ConfigError
from .labels import LabelSet

if TYPE_CHECKING:
    from ..config import DataConfig


class CopyPaste:
    """Callable `(images NCHW, masks NHW) -> (images, masks)`: each image, with `probability`,
    receives the pixels of `class_ids` from the image before it in the batch (the first from the
    last). It pastes in place, into the batch it is given; a batch of one is left as it is."""

    def __init__(self, class_ids: Sequence[int], probability: float):
        check_probability(probability)
        self.class_ids = torch.as_tensor(sorted(set(class_ids)), dtype=torch.int64)
        self.probability = probability

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(images)
        if count < 2 or self.probability == 0.0 or len(self.class_ids) == 0:
            return images, masks
        chosen = (torch.rand(count, device=masks.device) < self.probability).nonzero().squeeze(1)
        source = (chosen - 1) % count
        # indexing copies: every source is read as it was before any image of the batch changed
        source_images, source_masks = images[source], masks[source]
        if self.class_ids.device != masks.device:
            self.class_ids = self.class_ids.to(masks.device)  # once, not at every step
        paste = torch.isin(source_masks, self.class_ids)
        images[chosen] = torch.where(paste[:, None], source_images, images[chosen])
        masks[chosen] = torch.where(paste, source_masks, masks[chosen])
        return images, masks


def check_probability(probability: float) -> None:
    if not 0 <= probability <= 1:
        raise ConfigError(f"data.copy_paste: expected a probability in [0, 1] (or null), got {probability}")


def copy_paste_for(data: "DataConfig", labels: LabelSet) -> Optional[CopyPaste]:
    """The augmentation `data.copy_paste` asks for (None when off), its classes looked up by name."""
    if not data.copy_paste:
        return None
    check_probability(data.copy_paste)  # first: the other checks are about a setting that is on
    if data.batch_size < 2:
        raise ConfigError(f"data.copy_paste: pastes between the images of a batch; data.batch_size is {data.batch_size}")
    if not data.copy_paste_classes:
        raise ConfigError("data.copy_paste_classes: name the classes to paste, e.g. [pole, sign, pedestrian]")
    unknown = [name for name in data.copy_paste_classes if name not in labels.class_names]
    if unknown:
        raise ConfigError(f"data.copy_paste_classes: '{unknown[0]}' is not a class of this dataset "
                          f"(its classes: {', '.join(labels.class_names)})")
    return CopyPaste([labels.class_names.index(name) for name in data.copy_paste_classes], data.copy_paste)
