"""`urbanseg evaluate`: benchmark numbers at the ground truth's full resolution.

Either a checkpoint predicts every image (whole / sliding window, flip and multi-scale TTA), or
prediction PNGs made by any tool are scored (`--predictions DIR`, files named
`<city>_<seq>_<frame>*.png` holding Cityscapes labelIds, as the official script expects). One
confusion matrix is accumulated image by image, so memory stays flat however many images there
are; for Cityscapes, instance-weighted iIoU comes from the `*_instanceIds.png` files. With a
dense CRF (`--crf`) the network runs once per image and both its plain and its CRF-refined
predictions are counted, so one run reports the metrics with and without the CRF.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .config import DataConfig
from .crf import DenseCRF, as_crf
from .data import build_dataset
from .data.dataset import SegmentationDataset
from .data.io import DataError, read_mask
from .errors import ConfigError
from .files import write_json
from .inference import load
from .metrics import ConfusionMatrix, InstanceStats, json_safe, pair_counts, summarize
from .visualize import plot_class_iou, plot_confusion


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
                       scales: Sequence[float] = (1.0,), flip: bool = False, progress: bool = True,
                       crf: Optional[DenseCRF] = None) -> dict:
    """Metrics of a Predictor on every image of `dataset` (loaded at full resolution, no transform).

    With a dense CRF (`crf`, else the predictor's own) the network's probabilities are computed
    once per image and counted twice: plain (the top-level metrics) and CRF-refined (under "crf").
    """
    crf = as_crf(crf) or predictor.crf
    labels = dataset.labels
    if predictor.labels.class_names != labels.class_names:
        raise ConfigError(f"the checkpoint predicts {predictor.labels.num_classes} classes "
                         f"({', '.join(predictor.labels.class_names[:3])}, ...) but the dataset has "
                         f"{labels.num_classes} ({', '.join(labels.class_names[:3])}, ...)")
    instance_files = _instance_files(dataset)
    plain = _Tally(labels, bool(instance_files))
    refined = _Tally(labels, bool(instance_files)) if crf else None
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        image, mask = dataset.load(index)
        probs = predictor.network_proba(image, mode=mode, scales=scales, flip=flip)
        target = torch.from_numpy(np.asarray(mask))
        instance_ids = read_mask(instance_files[index]) if instance_files else None
        plain.add(probs.argmax(axis=0).astype(np.uint8), target, instance_ids)
        if refined is not None:
            refined.add(crf.refine(image, probs).argmax(axis=0).astype(np.uint8), target, instance_ids)
    metrics = plain.summary()
    if refined is not None:
        metrics["crf"] = refined.summary()
    return metrics


class _Tally:
    """One set of predictions' confusion matrix and, where instance ids exist, iIoU stats."""

    def __init__(self, labels, with_instances: bool):
        self.labels = labels
        self.matrix = ConfusionMatrix(labels.num_classes, labels.ignore_index)
        self.instances = InstanceStats() if with_instances else None

    def add(self, pred: np.ndarray, target: torch.Tensor, instance_ids: Optional[np.ndarray]) -> None:
        self.matrix.update(torch.from_numpy(pred), target)
        if self.instances is not None:
            self.instances.update(_to_label_ids(pred, self.labels), instance_ids)

    def summary(self) -> dict:
        return _summary(self.matrix, self.labels, self.instances)


def evaluate_prediction_files(pred_dir: str | os.PathLike, dataset: SegmentationDataset,
                              progress: bool = True, workers: Optional[int] = None) -> dict:
    """Score prediction PNGs (Cityscapes labelIds) found anywhere under `pred_dir`.

    `workers` images (default: one per CPU core) are read and counted at once, each into one
    256x256 histogram of (truth, prediction) label ids plus its iIoU stats; these are summed in
    sample order, so the numbers do not depend on `workers`, and memory stays flat.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    found = _find_predictions(pred_dir, [sample.name for sample in dataset.samples])
    labels = dataset.labels
    instance_files = _instance_files(dataset)
    jobs = [(pred_dir, sample, found.get(sample.name, []), instance_files[i] if instance_files else None, labels)
            for i, sample in enumerate(dataset.samples)]
    pairs = np.zeros((256, 256), np.int64)
    instances = InstanceStats() if instance_files else None
    for image_pairs, image_instances in tqdm(_in_order(_count_prediction, jobs, workers), total=len(jobs),
                                             desc="evaluate", disable=not progress):
        pairs += image_pairs
        if instances is not None:
            instances.merge(image_instances)
    matrix = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    matrix.add_pairs(pairs, labels.raw_to_train)  # void ids -> 255 (ignored truth / 'no class' prediction)
    return _summary(matrix, labels, instances)


def _find_predictions(pred_dir: Path, names: Sequence[str]) -> dict[str, list[Path]]:
    """The `<name>*.png` files under `pred_dir` of each sample name, in walk order: one walk and a
    set look-up per file and name length, instead of matching every file against every sample."""
    wanted = set(names)
    lengths = sorted({len(name) for name in wanted})
    found: dict[str, list[Path]] = {}
    for root, _, files in os.walk(pred_dir):
        for file in files:
            for k in lengths:
                if file[:k] in wanted and file[k:].endswith(".png"):
                    found.setdefault(file[:k], []).append(Path(root) / file)
    return found


def _count_prediction(pred_dir: Path, sample, matches: list[Path], instance_file: Optional[Path], labels):
    """One image's (truth, prediction) label-id histogram and, with an instance file, its iIoU stats."""

    if not matches:
        raise DataError(f"{pred_dir}: no prediction {sample.name}*.png for {sample.mask}")
    if len(matches) > 1:
        raise DataError(f"{pred_dir}: several predictions match {sample.name}*.png ({matches[0].name}, {matches[1].name})")
    pred_ids = read_mask(matches[0])
    if pred_ids.ndim != 2:
        raise DataError(f"{matches[0]}: expected a single-channel labelIds image")
    gt_ids = read_mask(sample.mask)
    if pred_ids.shape != gt_ids.shape:
        labels.encode(gt_ids, source=str(sample.mask))  # an unknown truth value is reported first, as always
        raise DataError(f"{matches[0]}: size {pred_ids.shape[1]}x{pred_ids.shape[0]} differs from the ground "
                        f"truth {sample.mask} ({gt_ids.shape[1]}x{gt_ids.shape[0]})")
    gt_ids, pred_ids = _uint8_ids(gt_ids, sample.mask, labels), _uint8_ids(pred_ids, matches[0], labels)
    pairs = pair_counts(gt_ids, pred_ids)
    unknown = ~labels.known_raw
    for ids, path, counts in ((gt_ids, sample.mask, pairs[unknown]), (pred_ids, matches[0], pairs[:, unknown])):
        if counts.any():
            labels.encode(ids, source=str(path))  # raises, naming the file and the values
    instances = None
    if instance_file is not None:
        instance_ids = read_mask(instance_file)
        instances = InstanceStats()
        instances.count_pairs(pairs)
        try:
            instances.count_instances(pred_ids, instance_ids)
        except ValueError as error:  # a size mismatch, or instances of a class without any
            raise DataError(f"{instance_file}: {error}") from None
    return pairs, instances


def _uint8_ids(ids: np.ndarray, path: Path, labels) -> np.ndarray:
    if ids.dtype == np.uint8:
        return ids
    labels.encode(ids, source=str(path))  # rare (e.g. 16-bit PNGs): raises on values outside 0..255 or unknown
    return ids.astype(np.uint8)


def _in_order(function, jobs: Sequence[tuple], workers: Optional[int] = None):
    """`function(*job)` of each job, yielded in job order, `workers` at a time in threads (OpenCV
    decodes and NumPy counts without holding the GIL). At most 2 x `workers` jobs are submitted
    ahead, so memory stays flat; the first job to fail (in job order) raises, and jobs not yet
    started are dropped."""

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        yield from (function(*job) for job in jobs)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(function, *job))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


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
    if "crf" in metrics:
        lines += ["", _format_crf_comparison(metrics)]
    return "\n".join(lines)


def _format_crf_comparison(metrics: dict) -> str:
    """IoU per class and the summary numbers without and with the dense CRF, and the change (points)."""
    refined = metrics["crf"]
    header = f"{'dense CRF':<15}{'without':>8}{'with':>8}{'change':>8}"
    rows = [(name, values["iou"], refined["per_class"][name]["iou"]) for name, values in metrics["per_class"].items()]
    rows.append(None)
    rows += [(title, metrics[key], refined[key]) for title, key in (
        ("mIoU", "miou"), ("category mIoU", "category_miou"), ("pixel accuracy", "pixel_accuracy"),
        ("mean accuracy", "mean_accuracy"), ("fw IoU", "fw_iou")) if key in metrics]
    lines = [header, "-" * len(header)]
    for row in rows:
        if row is None:
            lines.append("-" * len(header))
            continue
        name, before, after = row
        change = after - before if _known(before) and _known(after) else None
        lines.append(f"{name:<15}{_pct(before)}{_pct(after)}"
                     + (f"{change * 100:>+8.2f}" if change is not None else f"{'n/a':>8}"))
    return "\n".join(lines)


def _known(value: Optional[float]) -> bool:
    return value is not None and value == value


def _pct(value: float) -> str:
    return f"{'n/a':>8}" if not _known(value) else f"{value * 100:>8.2f}"


def write_metrics(metrics: dict, settings: dict, out: Path) -> Path:
    return write_json(out / "metrics.json", json_safe({**metrics, "settings": settings}))


def run_evaluation(data_root: str | os.PathLike, *, split: str = "val", checkpoint: Optional[str] = None,
                   predictions: Optional[str] = None, dataset: Optional[str] = None, mode: str = "whole",
                   scales: Sequence[float] = (1.0,), flip: bool = False, out: Optional[str | os.PathLike] = None,
                   device: str = "auto", progress: bool = True, crf: Optional[DenseCRF] = None,
                   backend: str = "auto") -> tuple[dict, Path]:
    """Everything `urbanseg evaluate` does: score, write metrics.json and the two figures. With
    `crf`, metrics.json also holds the CRF-refined metrics under "crf" (the figures are without)."""
    if (checkpoint is None) == (predictions is None):
        raise ConfigError("evaluate: give either a checkpoint or --predictions DIR (not both)")
    if crf and predictions is not None:
        raise ConfigError("--crf: needs a checkpoint or .onnx model (prediction files carry no probabilities)")
    crf = as_crf(crf)  # a missing pydensecrf2 is reported before any work
    data_cfg = DataConfig(dataset=dataset or "cityscapes")
    predictor = None
    if checkpoint is not None:
        predictor = load(checkpoint, device=device, backend=backend)  # a checkpoint or an exported .onnx model
        saved = predictor.config.data  # the class set the model was trained on, at full resolution, uncached
        data_cfg = DataConfig(dataset=dataset or saved.dataset, classes=saved.classes, class_names=saved.class_names,
                              ignore_index=saved.ignore_index, palette=saved.palette)
    data_cfg.root = str(data_root)
    data_set = build_dataset(data_cfg, split)
    if predictor is not None:
        metrics = evaluate_predictor(predictor, data_set, mode, scales, flip, progress, crf)
    else:
        metrics = evaluate_prediction_files(predictions, data_set, progress)
    if out is None:  # a checkpoint's run folder (RUN/checkpoints/best.pt -> RUN/eval-val), else beside the file
        model_dir = Path(checkpoint).resolve().parent if checkpoint else None
        if model_dir is not None and model_dir.name == "checkpoints":
            model_dir = model_dir.parent
        out = model_dir / f"eval-{split}" if model_dir else Path(f"eval-{split}")
    out = Path(out)
    height, width = read_mask(data_set.samples[0].mask).shape[:2]
    settings = {"checkpoint": str(checkpoint) if checkpoint else None, "predictions": str(predictions) if predictions else None,
                "data_root": str(data_root), "split": split, "dataset": data_cfg.dataset, "images": len(data_set),
                "resolution": [height, width], "mode": mode, "scales": list(scales), "flip": flip,
                "crf": crf.to_dict() if crf else None}
    write_metrics(metrics, settings, out)
    plot_confusion(np.array(metrics["confusion_matrix"]), data_set.labels.class_names, out / "confusion_matrix.png")
    plot_class_iou(metrics, data_set.labels, out / "class_iou.png")
    return metrics, out
