"""Metrics from one confusion matrix, accumulated with `bincount` on the device.

`ConfusionMatrix.update(pred, target)` counts pixels (rows = ground truth, columns = prediction),
skipping ignored ground truth; `reduce()` sums it across ranks exactly once; `summarize()`
derives every number from the matrix. Classes absent from both prediction and ground truth get
NaN and are left out of the means, as in the official Cityscapes evaluation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255, device: Optional[torch.device] = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch of predicted and true class maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(target.shape)}")
        valid = target != self.ignore_index
        n = self.num_classes
        target, pred = target[valid].long(), pred[valid].long()
        if target.numel() and (int(target.max()) >= n or int(pred.max()) >= n or int(pred.min()) < 0):
            raise ValueError(f"class index outside 0..{n - 1} in prediction or ground truth")
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).view(n, n).to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the matrices of all ranks (call once, after the last update)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def summarize(self, class_names: Optional[Sequence[str]] = None,
                  categories: Optional[Sequence[str]] = None) -> dict:
        return summarize(self.matrix.cpu().numpy(), class_names, categories)


def summarize(matrix: np.ndarray, class_names: Optional[Sequence[str]] = None,
              categories: Optional[Sequence[str]] = None) -> dict:
    """All metrics of a confusion matrix (rows = ground truth, columns = prediction)."""
    m = matrix.astype(np.float64)
    n = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = np.diag(m)
    gt = m.sum(axis=1)
    predicted = m.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
        f1 = np.where(gt + predicted > 0, 2 * tp / (gt + predicted), np.nan)
    total = m.sum()
    frequency = gt / total if total else np.zeros(n)
    result = {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": _nanmean(recall),
        "fw_iou": float(np.nansum(frequency * iou)) if total else float("nan"),
        "per_class": {
            name: {"iou": _f(iou[i]), "precision": _f(precision[i]), "recall": _f(recall[i]), "f1": _f(f1[i]),
                   "pixels": int(gt[i])}
            for i, name in enumerate(names)
        },
        "confusion_matrix": matrix.astype(np.int64).tolist(),
    }
    if categories:
        result.update(category_metrics(m, categories))
    return result


def category_metrics(matrix: np.ndarray, categories: Sequence[str]) -> dict:
    """IoU of each category, merging classes of the same category (official 'category IoU')."""
    names = list(dict.fromkeys(categories))
    index = np.array([names.index(c) for c in categories])
    merge = np.zeros((len(categories), len(names)))
    merge[np.arange(len(categories)), index] = 1
    merged = merge.T @ matrix @ merge
    tp = np.diag(merged)
    union = merged.sum(0) + merged.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {"category_miou": _nanmean(iou), "per_category": {name: _f(iou[i]) for i, name in enumerate(names)}}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _f(value: float) -> float:
    return float(value)
