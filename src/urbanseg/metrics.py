"""Metrics from one confusion matrix, accumulated with `bincount` on the device.

`ConfusionMatrix.update(pred, target)` counts pixels (rows = ground truth, columns = prediction),
skipping ignored ground truth (`add_pairs` does the same from a `pair_counts` histogram of raw
label values); `reduce()` sums it across ranks exactly once; `summarize()` derives every number
from the matrix. Classes absent from both prediction and ground truth get NaN and are left out of
the means, as in the official Cityscapes evaluation. `InstanceStats` adds the instance-weighted
Cityscapes iIoU.
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .data.labels import CITYSCAPES_LABELS


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

    def add_pairs(self, pairs: np.ndarray, raw_to_class: np.ndarray) -> None:
        """Count a `pair_counts(raw truth, raw prediction)` histogram, mapping raw values to classes
        with the lookup table `raw_to_class` (a LabelSet's `raw_to_train`): the counts `update` gives
        for the mapped maps, from a 256x256 table instead of several passes over every pixel."""
        n = self.num_classes
        classes = raw_to_class.astype(np.int64)
        rows = (classes != self.ignore_index) & (pairs.sum(axis=1) > 0)
        if (classes[rows] >= n).any():
            raise ValueError(f"ground-truth class index {int(classes[rows].max())} outside 0..{n - 1}")
        columns = np.where((classes >= 0) & (classes < n), classes, n)  # anything else: the 'no class' column
        counts = np.zeros((n, n + 1), np.int64)
        np.add.at(counts, (classes[rows][:, None], columns[None, :]), pairs[rows])
        self.matrix += torch.from_numpy(counts).to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the matrices of all ranks (call once, after the last update)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def summarize(self, class_names: Optional[Sequence[str]] = None,
                  categories: Optional[Sequence[str]] = None) -> dict:
        return summarize(self.matrix.cpu().numpy(), class_names, categories)


def pair_counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(256, 256) int64 counts of (truth value, predicted value) pairs of two uint8 maps of one shape.

    One `bincount` per image holds all an evaluation of raw label files needs: the confusion matrix
    of any class set (`ConfusionMatrix.add_pairs`), which values occur (unknown-value checks), and
    the iIoU false positives of ignored labels (`InstanceStats.count_pairs`)."""
    if truth.dtype != np.uint8 or pred.dtype != np.uint8:
        raise TypeError(f"pair_counts: expected uint8 maps, got {truth.dtype} (truth) and {pred.dtype} (prediction)")
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {truth.shape}")
    key = truth.astype(np.uint16) << 8
    key |= pred
    return np.bincount(key.ravel(), minlength=1 << 16).reshape(256, 256)


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
            name: {"iou": float(iou[i]), "precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "pixels": int(gt[i])}
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
    return {"category_miou": _nanmean(iou), "per_category": {name: float(iou[i]) for i, name in enumerate(names)}}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


# Average instance size per class over the Cityscapes training set, from cityscapesscripts'
# evalPixelLevelSemanticLabeling.py: iIoU weighs each instance's pixels by avg size / its size.
CITYSCAPES_AVG_INSTANCE_SIZE = {
    "bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274, "car": 12794.0202738185,
    "person": 3462.4756337644, "truck": 27855.1264367816, "trailer": 16926.9763313609,
}


class _InstanceTables(NamedTuple):
    """Cityscapes label facts iIoU needs, as lookup tables indexed by label id (0..255)."""

    by_name: dict  # label name -> Label
    categories: tuple[str, ...]  # categories whose every label has instances (human, vehicle)
    counted: np.ndarray  # bool: instances of this label count (a known label, not ignored in evaluation)
    avg_size: np.ndarray  # float: the label's average instance size, NaN for labels without one
    category_of: np.ndarray  # int: index in `categories` of the label's category, -1 for other categories
    extra_fp: tuple[tuple[list[int], list[int]], ...]  # per category: (other categories' truth ids, its ignored ids)


@lru_cache(maxsize=1)
def _instance_tables() -> _InstanceTables:
    labels = [label for label in CITYSCAPES_LABELS if label.id >= 0]
    by_category = defaultdict(list)
    for label in labels:
        by_category[label.category].append(label)
    categories = tuple(c for c, members in by_category.items() if all(l.has_instances for l in members))
    counted, avg_size = np.zeros(256, bool), np.full(256, np.nan)
    category_of = np.full(256, -1, np.int8)
    for label in labels:
        counted[label.id] = not label.ignore_in_eval
        avg_size[label.id] = CITYSCAPES_AVG_INSTANCE_SIZE.get(label.name, np.nan)
        if label.category in categories:
            category_of[label.id] = categories.index(label.category)
    # Predictions of a category's ignored labels (caravan, trailer) on other categories' truth are
    # false positives of its iIoU in the official script, though no class column holds them.
    extra_fp = tuple(
        ([l.id for l in labels if not l.ignore_in_eval and l.category != category],
         [l.id for l in by_category[category] if l.ignore_in_eval])
        for category in categories
    )
    return _InstanceTables({l.name: l for l in labels}, categories, counted, avg_size, category_of, extra_fp)


class InstanceStats:
    """Instance-weighted true positives and false negatives for Cityscapes iIoU.

    `update` takes a prediction and a ground-truth instance map (`*_gtFine_instanceIds.png`), both
    in Cityscapes label ids; `summarize` combines them with the confusion matrix's false positives.
    Stats of separate images add up with `merge`, so images can be counted apart (in parallel) and
    summed in a fixed order, which keeps the result independent of how the work was split.
    """

    def __init__(self):
        self.tables = _instance_tables()
        categories = len(self.tables.categories)
        self.class_tp, self.class_fn = np.zeros(256), np.zeros(256)  # indexed by label id
        self.category_tp, self.category_fn = np.zeros(categories), np.zeros(categories)  # by category index
        self.category_extra_fp = np.zeros(categories)

    def update(self, pred_label_ids: np.ndarray, instance_ids: np.ndarray,
               gt_label_ids: Optional[np.ndarray] = None) -> None:
        """`gt_label_ids` (for prediction files from other tools): predictions of ignored labels of a
        category (caravan, trailer) on other categories' ground truth are false positives of that
        category's iIoU in the official script, though no class column holds them."""
        if gt_label_ids is not None:
            self.count_pairs(pair_counts(_clip_to_uint8(gt_label_ids), _clip_to_uint8(pred_label_ids)))
        self.count_instances(pred_label_ids, instance_ids)

    def count_pairs(self, pairs: np.ndarray) -> None:
        """The false positives `update` counts from `gt_label_ids`, read off a
        `pair_counts(gt label ids, predicted label ids)` histogram instead."""
        for k, (truth, predicted) in enumerate(self.tables.extra_fp):
            self.category_extra_fp[k] += float(pairs[np.ix_(truth, predicted)].sum())

    def count_instances(self, pred_label_ids: np.ndarray, instance_ids: np.ndarray) -> None:
        """Pixels of each ground-truth instance (id = label id * 1000 + k, above 1000) predicted as its
        label and as its category, weighted by the label's average instance size / the instance's size."""
        if pred_label_ids.shape != instance_ids.shape:
            raise ValueError(f"prediction shape {pred_label_ids.shape} differs from instance ids {instance_ids.shape}")
        t = self.tables
        things = np.flatnonzero(instance_ids > 1000)  # only these pixels matter: no per-instance mask
        if not things.size:
            return
        ids = instance_ids.ravel()[things]
        pred = _clip_to_uint8(pred_label_ids.ravel()[things])
        pixel_label = np.minimum(ids // 1000, 255)  # label ids above 255 are no label, and neither is 255
        pixel_category = t.category_of[pixel_label]
        in_category = (t.category_of[pred] == pixel_category) & (pixel_category >= 0)
        sizes = np.bincount(ids)
        hits = np.bincount(ids[pred == pixel_label], minlength=sizes.size)
        category_hits = np.bincount(ids[in_category], minlength=sizes.size)

        present = np.flatnonzero(sizes)
        label = present // 1000
        keep = t.counted[np.minimum(label, 255)]  # label ids above 255 are no label (counted[255] is False)
        present, label = present[keep], label[keep]
        weight = t.avg_size[label] / sizes[present]
        if np.isnan(weight).any():
            bad = int(present[np.isnan(weight)][0])
            raise ValueError(f"instance id {bad}: label id {bad // 1000} is not an instance class of the "
                             f"official iIoU ({', '.join(CITYSCAPES_AVG_INSTANCE_SIZE)})")
        # np.add.at adds in index order, so the sums do not depend on anything but the image
        np.add.at(self.class_tp, label, hits[present] * weight)
        np.add.at(self.class_fn, label, (sizes[present] - hits[present]) * weight)
        category = t.category_of[label]
        tracked = category >= 0
        np.add.at(self.category_tp, category[tracked], (category_hits[present] * weight)[tracked])
        np.add.at(self.category_fn, category[tracked], ((sizes[present] - category_hits[present]) * weight)[tracked])

    def merge(self, other: "InstanceStats") -> None:
        """Add the counts of other images (e.g. one image counted by a worker)."""
        self.class_tp += other.class_tp
        self.class_fn += other.class_fn
        self.category_tp += other.category_tp
        self.category_fn += other.category_fn
        self.category_extra_fp += other.category_extra_fp

    def summarize(self, matrix: np.ndarray, class_names: Sequence[str], categories: Sequence[str]) -> dict:
        """iIoU per class and category (official formulas), from the class-space confusion matrix."""
        n = len(class_names)
        m = matrix[:, :n].astype(np.float64)
        per_class, per_category = {}, {}
        for i, name in enumerate(class_names):
            label = self.tables.by_name.get(name)
            if label is None or not label.has_instances or label.ignore_in_eval:
                continue
            fp = m[:, i].sum() - m[i, i]
            per_class[name] = _iou(self.class_tp[label.id], fp, self.class_fn[label.id])
        for k, category in enumerate(self.tables.categories):
            columns = [i for i, c in enumerate(categories) if c == category]
            if not columns:
                continue
            others = [i for i, c in enumerate(categories) if c != category]
            fp = m[np.ix_(others, columns)].sum() + self.category_extra_fp[k]
            per_category[category] = _iou(self.category_tp[k], fp, self.category_fn[k])
        return {
            "iiou": _nanmean(np.array(list(per_class.values()) or [np.nan])),
            "per_class_iiou": per_class,
            "category_iiou": _nanmean(np.array(list(per_category.values()) or [np.nan])),
            "per_category_iiou": per_category,
        }


def _clip_to_uint8(label_ids: np.ndarray) -> np.ndarray:
    # Values outside 0..255 are no Cityscapes label; clipped, they become 0 (unlabeled: void, ignored)
    # or 255 (no label), which no instance, class or category list that iIoU reads holds either.
    return label_ids if label_ids.dtype == np.uint8 else np.clip(label_ids, 0, 255).astype(np.uint8)


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
