"""The validation pass used during training (loss and confusion-matrix metrics, exact across ranks) and
the sample pictures drawn at each evaluation."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.preset import Preset
from ..metrics import ConfusionMatrix
from ..visualize import sample_grid
from .distributed import all_reduce_sum
from .precision import Precision


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module, labels, device: torch.device,
             precision: Precision, max_batches: Optional[int] = None) -> dict:
    """Loss (mean over images) and metrics on the validation loader; every rank must call it."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(labels.num_classes, labels.ignore_index, device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, number of images
    for index, (images, masks) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        logits = precision.forward(model, images)
        loss_sum[0] += criterion(logits, masks).double() * images.shape[0]
        loss_sum[1] += images.shape[0]
        matrix.update(logits.argmax(dim=1), masks)
    matrix.reduce()
    all_reduce_sum(loss_sum)
    model.train(was_training)
    result = matrix.summarize(labels.class_names, labels.categories or None)
    result["loss"] = float(loss_sum[0] / loss_sum[1].clamp(min=1))
    result["images"] = int(loss_sum[1])
    return result


@torch.no_grad()
def save_sample_grid(model: nn.Module, dataset, count: int, device: torch.device, precision: Precision,
                     preset: Preset, path, title: str = "") -> None:
    """Image | ground truth | prediction | error map for the first `count` validation samples."""
    was_training = model.training
    model.eval()
    rows = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        pred = precision.forward(model, image[None].to(device)).argmax(dim=1)[0].cpu().numpy().astype("uint8")
        rows.append((preset.to_image(image), mask.numpy().astype("uint8"), pred))
    model.train(was_training)
    sample_grid(rows, dataset.labels, path, title)
