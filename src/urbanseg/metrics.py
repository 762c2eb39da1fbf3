"""Metrics from one confusion matrix, accumulated with `bincount` on the device.

`ConfusionMatrix.update(pred, target)` counts pixels (rows = ground truth, columns = prediction),
skipping ignored ground truth; `reduce()` sums it across ranks exactly once; `summarize()`
derives every number from the matrix. Classes absent from both prediction and ground truth get
NaN and are left out of the means, as in the official Cityscapes evaluation.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Rows: ground-truth class; columns: predicted class, plus one last column for predictions
    that are no class at all (void ids in prediction files made by other tools). Such pixels
    count as false negatives of their true class and as nobody's false positives, as in the
    official Cityscapes script."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: Optional[torch.device] = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch of predicted and true class maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(target.shape)}")
        n = self.num_classes
        valid = target != self.ignore_index
        target, pred = target[valid].long(), pred[valid].long()
        if target.numel() and int(target.max()) >= n:
            raise ValueError(f"ground-truth class index {int(target.max())} outside 0..{n - 1}")
        pred = torch.where((pred >= 0) & (pred < n), pred, n)  # anything else: the 'no class' column
        counts = torch.bincount(target * (n + 1) + pred, minlength=n * (n + 1))
        self.matrix += counts.view(n, n + 1).to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the matrices of all ranks (call once, after the last update)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def summarize(self, class_names: Optional[Sequence[str]] = None,
                  categories: Optional[Sequence[str]] = None) -> dict:
        return summarize(self.matrix.cpu().numpy(), class_names, categories)


def summarize(matrix: np.ndarray, class_names: Optional[Sequence[str]] = None,
              categories: Optional[Sequence[str]] = None) -> dict:
    """All metrics of a confusion matrix: rows = ground truth, columns = prediction (an extra
    last column, when present, holds predictions that are no class)."""
    m = matrix.astype(np.float64)
    n = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = np.diag(m[:, :n])
    gt = m.sum(axis=1)
    predicted = m[:, :n].sum(axis=0)
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
        "confusion_matrix": matrix[:, :n].astype(np.int64).tolist(),
        "unassigned_predictions": matrix[:, n:].sum(axis=1).astype(np.int64).tolist(),
    }
    if categories:
        result.update(category_metrics(m, categories))
    return result


def category_metrics(matrix: np.ndarray, categories: Sequence[str]) -> dict:
    """IoU of each category, merging classes of the same category (official 'category IoU')."""
    names = list(dict.fromkeys(categories))
    n = len(categories)
    index = np.array([names.index(c) for c in categories])
    rows = np.zeros((n, len(names)))
    rows[np.arange(n), index] = 1
    merged = rows.T @ matrix[:, :n] @ rows
    tp = np.diag(merged)
    union = matrix.sum(1) @ rows + merged.sum(0) - tp  # row sums include the 'no class' column
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {"category_miou": _nanmean(iou), "per_category": {name: _f(iou[i]) for i, name in enumerate(names)}}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _f(value: float) -> float:
    return float(value)


# Average instance size per class over the Cityscapes training set, from cityscapesscripts'
# evalPixelLevelSemanticLabeling.py: iIoU weighs each instance's pixels by avg size / its size.
CITYSCAPES_AVG_INSTANCE_SIZE = {
    "bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274, "car": 12794.0202738185,
    "person": 3462.4756337644, "truck": 27855.1264367816, "trailer": 16926.9763313609,
}


class InstanceStats:
    """Instance-weighted true positives and false negatives for Cityscapes iIoU.

    `update` takes a prediction and a ground-truth instance map (`*_gtFine_instanceIds.png`), both
    in Cityscapes label ids; `summarize` combines them with the confusion matrix's false positives.
    """

    def __init__(self):
        from .data.labels import CITYSCAPES_LABELS

        self.labels = {l.id: l for l in CITYSCAPES_LABELS if l.id >= 0}
        self.class_tp = defaultdict(float)
        self.class_fn = defaultdict(float)
        self.category_tp = defaultdict(float)
        self.category_fn = defaultdict(float)
        self.category_extra_fp = defaultdict(float)
        # categories whose every label has instances (human, vehicle), with their label ids
        by_category = defaultdict(list)
        for label in CITYSCAPES_LABELS:
            if label.id >= 0:
                by_category[label.category].append(label)
        self.category_ids = {c: [l.id for l in ls] for c, ls in by_category.items() if all(l.has_instances for l in ls)}

    def update(self, pred_label_ids: np.ndarray, instance_ids: np.ndarray,
               gt_label_ids: Optional[np.ndarray] = None) -> None:
        """`gt_label_ids` (for prediction files from other tools): predictions of ignored labels of a
        category (caravan, trailer) on other categories' ground truth are false positives of that
        category's iIoU in the official script, though no class column holds them."""
        if gt_label_ids is not None:
            self._count_ignored_label_false_positives(pred_label_ids, gt_label_ids)
        things = instance_ids > 1000
        if not things.any():
            return
        ids, inverse = np.unique(instance_ids[things], return_inverse=True)
        sizes = np.bincount(inverse).astype(np.float64)
        label_ids = ids // 1000
        pred = pred_label_ids[things]
        hits = np.bincount(inverse, weights=(pred == label_ids[inverse]), minlength=len(ids))
        category_hits = {c: np.bincount(inverse, weights=np.isin(pred, label_list), minlength=len(ids))
                         for c, label_list in self.category_ids.items()}
        for k, label_id in enumerate(label_ids):
            label = self.labels.get(int(label_id))
            if label is None or label.ignore_in_eval:
                continue
            weight = CITYSCAPES_AVG_INSTANCE_SIZE[label.name] / sizes[k]
            self.class_tp[label.name] += hits[k] * weight
            self.class_fn[label.name] += (sizes[k] - hits[k]) * weight
            if label.category in self.category_ids:
                in_category = category_hits[label.category][k]
                self.category_tp[label.category] += in_category * weight
                self.category_fn[label.category] += (sizes[k] - in_category) * weight

    def _count_ignored_label_false_positives(self, pred: np.ndarray, gt: np.ndarray) -> None:
        for category, ids in self.category_ids.items():
            ignored = [i for i in ids if self.labels[i].ignore_in_eval]
            if not ignored:
                continue
            other_gt = [i for i, l in self.labels.items() if not l.ignore_in_eval and l.category != category]
            self.category_extra_fp[category] += float((np.isin(pred, ignored) & np.isin(gt, other_gt)).sum())

    def summarize(self, matrix: np.ndarray, class_names: Sequence[str], categories: Sequence[str]) -> dict:
        """iIoU per class and category (official formulas), from the class-space confusion matrix."""
        n = len(class_names)
        m = matrix[:, :n].astype(np.float64)
        per_class, per_category = {}, {}
        for i, name in enumerate(class_names):
            label = next((l for l in self.labels.values() if l.name == name), None)
            if label is None or not label.has_instances or label.ignore_in_eval:
                continue
            fp = m[:, i].sum() - m[i, i]
            per_class[name] = _iou(self.class_tp[name], fp, self.class_fn[name])
        for category in self.category_ids:
            columns = [i for i, c in enumerate(categories) if c == category]
            if not columns:
                continue
            others = [i for i, c in enumerate(categories) if c != category]
            fp = m[np.ix_(others, columns)].sum() + self.category_extra_fp[category]
            per_category[category] = _iou(self.category_tp[category], fp, self.category_fn[category])
        return {
            "iiou": _nanmean(np.array(list(per_class.values()) or [np.nan])),
            "per_class_iiou": per_class,
            "category_iiou": _nanmean(np.array(list(per_category.values()) or [np.nan])),
            "per_category_iiou": per_category,
        }


def _iou(tp: float, fp: float, fn: float) -> float:
    denominator = tp + fp + fn
    return float(tp / denominator) if denominator > 0 else float("nan")


def json_safe(value):
    """NaN and infinities as null, so metrics.json is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
