"""`urbanseg evaluate`: benchmark numbers at the ground truth's full resolution.

Either a checkpoint predicts every image (whole / sliding window, flip and multi-scale TTA), or
prediction PNGs made by any tool are scored (`--predictions DIR`, files named
`<city>_<seq>_<frame>*.png` holding Cityscapes labelIds, as the official script expects). One
confusion matrix is accumulated image by image, so memory stays flat however many images there
are; for Cityscapes, instance-weighted iIoU comes from the `*_instanceIds.png` files.
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .data.dataset import SegmentationDataset
from .data.io import DataError, read_mask
from .metrics import ConfusionMatrix, InstanceStats, json_safe, summarize


def _instance_files(dataset: SegmentationDataset) -> Optional[list[Path]]:
    """The `*_gtFine_instanceIds.png` of every sample (for iIoU), or None when the tree has none.
    A tree with some but not all of them is an error: iIoU from part of the data would mislead."""
    if dataset.labels.name != "cityscapes":
        return None
    paths = [Path(str(s.mask).replace("_gtFine_labelIds.png", "_gtFine_instanceIds.png")) for s in dataset.samples]
    present = [p.exists() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise DataError(f"{missing}: missing, while other images have instance ids (needed for iIoU)")
    return paths


def _to_label_ids(pred: np.ndarray, labels) -> np.ndarray:
    return labels.train_to_raw[pred] if labels.train_to_raw is not None else pred


def evaluate_predictor(predictor, dataset: SegmentationDataset, mode: str = "whole",
                       scales: Sequence[float] = (1.0,), flip: bool = False, progress: bool = True) -> dict:
    """Metrics of a Predictor on every image of `dataset` (loaded at full resolution, no transform)."""
    labels = dataset.labels
    if predictor.labels.class_names != labels.class_names:
        raise ValueError(f"the checkpoint predicts {predictor.labels.num_classes} classes "
                         f"({', '.join(predictor.labels.class_names[:3])}, ...) but the dataset has "
                         f"{labels.num_classes} ({', '.join(labels.class_names[:3])}, ...)")
    matrix = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    instance_files = _instance_files(dataset)
    instances = InstanceStats() if instance_files else None
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        image, mask = dataset.load(index)
        pred = predictor.predict(image, mode=mode, scales=scales, flip=flip)
        matrix.update(torch.from_numpy(pred), torch.from_numpy(np.asarray(mask)))
        if instances is not None:
            instances.update(_to_label_ids(pred, labels), read_mask(instance_files[index]))
    return _summary(matrix, labels, instances)


def evaluate_prediction_files(pred_dir: str | os.PathLike, dataset: SegmentationDataset,
                              progress: bool = True) -> dict:
    """Score prediction PNGs (Cityscapes labelIds) found anywhere under `pred_dir`."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    files = [Path(root) / f for root, _, names in os.walk(pred_dir) for f in names if f.endswith(".png")]
    labels = dataset.labels
    matrix = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    instance_files = _instance_files(dataset)
    instances = InstanceStats() if instance_files else None
    for index, sample in enumerate(tqdm(dataset.samples, desc="evaluate", disable=not progress)):
        matches = [f for f in files if fnmatch.fnmatch(f.name, f"{sample.name}*.png")]
        if not matches:
            raise DataError(f"{pred_dir}: no prediction {sample.name}*.png for {sample.mask}")
        if len(matches) > 1:
            raise DataError(f"{pred_dir}: several predictions match {sample.name}*.png ({matches[0].name}, {matches[1].name})")
        pred_ids = read_mask(matches[0])
        if pred_ids.ndim != 2:
            raise DataError(f"{matches[0]}: expected a single-channel labelIds image")
        gt_raw = read_mask(sample.mask)
        gt = labels.encode(gt_raw, source=str(sample.mask))
        if pred_ids.shape != gt.shape:
            raise DataError(f"{matches[0]}: size {pred_ids.shape[1]}x{pred_ids.shape[0]} differs from the ground "
                            f"truth {sample.mask} ({gt.shape[1]}x{gt.shape[0]})")
        pred = labels.encode(pred_ids, source=str(matches[0]))  # void ids -> 255, counted as 'no class'
        matrix.update(torch.from_numpy(pred), torch.from_numpy(gt))
        if instances is not None:
            instances.update(pred_ids, read_mask(instance_files[index]), gt_raw)
    return _summary(matrix, labels, instances)


def _summary(matrix: ConfusionMatrix, labels, instances: Optional[InstanceStats]) -> dict:
    m = matrix.matrix.numpy()
    result = summarize(m, labels.class_names, labels.categories or None)
    if instances is not None:
        result.update(instances.summarize(m, labels.class_names, labels.categories))
    return result


def format_table(metrics: dict) -> str:
    """The per-class table printed after an evaluation."""
    has_iiou = "per_class_iiou" in metrics
    header = f"{'class':<15}{'IoU':>8}{'iIoU':>8}{'prec.':>8}{'recall':>8}{'F1':>8}{'pixels':>12}"
    lines = [header, "-" * len(header)]
    for name, values in metrics["per_class"].items():
        iiou = metrics["per_class_iiou"].get(name, float("nan")) if has_iiou else float("nan")
        lines.append(f"{name:<15}{_pct(values['iou'])}{_pct(iiou)}{_pct(values['precision'])}"
                     f"{_pct(values['recall'])}{_pct(values['f1'])}{values['pixels']:>12}")
    lines.append("-" * len(header))
    lines.append(f"{'mIoU':<15}{_pct(metrics['miou'])}{_pct(metrics.get('iiou', float('nan')))}")
    if "category_miou" in metrics:
        lines.append(f"{'category mIoU':<15}{_pct(metrics['category_miou'])}{_pct(metrics.get('category_iiou', float('nan')))}")
    lines.append(f"{'pixel accuracy':<15}{_pct(metrics['pixel_accuracy'])}")
    lines.append(f"{'mean accuracy':<15}{_pct(metrics['mean_accuracy'])}")
    lines.append(f"{'fw IoU':<15}{_pct(metrics['fw_iou'])}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{'n/a':>8}" if value is None or value != value else f"{value * 100:>8.2f}"


def write_metrics(metrics: dict, settings: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(json_safe({**metrics, "settings": settings}), indent=1))
    os.replace(tmp, path)
    return path


def run_evaluation(data_root: str | os.PathLike, split: str = "val", checkpoint: Optional[str] = None,
                   predictions: Optional[str] = None, dataset: Optional[str] = None, mode: str = "whole",
                   scales: Sequence[float] = (1.0,), flip: bool = False, out: Optional[str | os.PathLike] = None,
                   device: str = "auto", progress: bool = True) -> tuple[dict, Path]:
    """Everything `urbanseg evaluate` does: score, write metrics.json and the two figures."""
    from .config import DataConfig
    from .engine.data import build_dataset
    from .visualize import plot_class_iou, plot_confusion

    if (checkpoint is None) == (predictions is None):
        raise ValueError("evaluate: give either a checkpoint or --predictions DIR (not both)")
    data_cfg = DataConfig(dataset=dataset or "cityscapes")
    predictor = None
    if checkpoint is not None:
        from .engine.checkpoint import load_checkpoint
        from .inference import Predictor

        saved = load_checkpoint(checkpoint)["config"]["data"]
        data_cfg = DataConfig(dataset=dataset or saved["dataset"], classes=saved["classes"],
                              class_names=saved["class_names"], ignore_index=saved["ignore_index"],
                              palette=saved["palette"])
        predictor = Predictor.from_checkpoint(checkpoint, device=device)
    data_cfg.root = str(data_root)
    data_set = build_dataset(data_cfg, split)  # no load_size, no cache: full ground-truth resolution
    if predictor is not None:
        metrics = evaluate_predictor(predictor, data_set, mode, scales, flip, progress)
    else:
        metrics = evaluate_prediction_files(predictions, data_set, progress)
    if out is None:
        out = Path(checkpoint).resolve().parent.parent / f"eval-{split}" if checkpoint else Path(f"eval-{split}")
    out = Path(out)
    height, width = read_mask(data_set.samples[0].mask).shape[:2]
    settings = {"checkpoint": str(checkpoint) if checkpoint else None, "predictions": str(predictions) if predictions else None,
                "data_root": str(data_root), "split": split, "dataset": data_cfg.dataset, "images": len(data_set),
                "resolution": [height, width], "mode": mode, "scales": list(scales), "flip": flip}
    write_metrics(metrics, settings, out)
    plot_confusion(np.array(metrics["confusion_matrix"]), data_set.labels.class_names, out / "confusion_matrix.png")
    plot_class_iou(metrics, data_set.labels, out / "class_iou.png")
    return metrics, out
