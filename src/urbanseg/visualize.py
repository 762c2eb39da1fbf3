"""Pictures: colour masks, overlays, error and uncertainty maps, and matplotlib figures
(confusion matrix, per-class IoU, training curves, sample grids), in each dataset's own palette
with a legend on every colour image."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .data.labels import LabelSet  # noqa: E402

plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110})


def overlay(image: np.ndarray, color_mask: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - opacity) + color_mask.astype(np.float32) * opacity).astype(np.uint8)


def error_map(pred: np.ndarray, gt: np.ndarray, ignore_index: int) -> np.ndarray:
    """Correct pixels dark grey, wrong pixels red, ignored ground truth white."""
    out = np.full(gt.shape + (3,), 40, np.uint8)
    out[(pred != gt) & (gt != ignore_index)] = (230, 30, 30)
    out[gt == ignore_index] = (255, 255, 255)
    return out


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-pixel softmax entropy of CxHxW probabilities, normalised to 0..1 by log(C)."""
    p = np.clip(probs, 1e-8, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / math.log(probs.shape[0])).astype(np.float32)


def entropy_image(probs: np.ndarray) -> np.ndarray:
    """RGB rendering of the entropy map (inferno colour map: dark = confident, bright = unsure)."""
    return (plt.get_cmap("inferno")(entropy(probs))[..., :3] * 255).astype(np.uint8)


def legend_handles(labels: LabelSet, present: Optional[Sequence[int]] = None) -> list:
    indices = range(labels.num_classes) if present is None else present
    return [Patch(facecolor=labels.palette[i] / 255.0, edgecolor="none", label=labels.class_names[i]) for i in indices]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (each row: where the pixels of a true class went)."""
    m = np.asarray(matrix, np.float64)
    rows = m.sum(axis=1, keepdims=True)
    normalised = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(0.42 * n + 2.5, 0.42 * n + 1.8))
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            if normalised[i, j] >= 0.01:
                ax.text(j, i, f"{normalised[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true class's pixels")
    ax.set_title("Confusion matrix (row-normalised, %)")
    return _save(fig, path)


def plot_class_iou(metrics: dict, labels: LabelSet, path: Path) -> Path:
    """Horizontal bars of per-class IoU in class colours, with the mIoU as a dashed line."""
    names = list(metrics["per_class"])
    ious = [metrics["per_class"][n]["iou"] for n in names]
    values = [v if v is not None and v == v else 0.0 for v in ious]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), values, color=labels.palette[: len(names)] / 255.0, edgecolor="#333", linewidth=0.4)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    for bar, value, raw in zip(bars, values, ious):
        text = "n/a" if raw is None or raw != raw else f"{value * 100:.1f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    miou = metrics["miou"]
    if miou is not None and miou == miou:
        ax.axvline(miou, color="#444", linestyle="--", linewidth=1)
        ax.set_title(f"Per-class IoU (mIoU {miou * 100:.1f}%)")
    return _save(fig, path)


def read_curves(metrics_csv: Path) -> dict:
    curves: dict = {"train": {}, "val": {}}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("step", "epoch", "split") and value not in ("", None):
                    curves[row["split"]].setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def plot_curves(metrics_csv: Path, path: Path) -> Path:
    """Loss (train and val), validation mIoU and learning rate against the optimizer step, and
    validation mIoU against minutes of training (time to accuracy) when the run logged them."""
    curves = read_curves(metrics_csv)
    by_time = minutes_curve(curves["val"], "miou")
    fig, axes = plt.subplots(1, 4 if by_time else 3, figsize=(17.5 if by_time else 13, 3.4))
    for split, style in (("train", "-"), ("val", "o-")):
        points = curves[split].get("loss")
        if points:
            axes[0].plot(*zip(*points), style, label=f"{split} loss", markersize=3)
    axes[0].set_title("Loss")
    axes[0].legend()
    for key, label in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy")):
        points = curves["val"].get(key)
        if points:
            axes[1].plot(*zip(*points), "o-", label=label, markersize=3)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Validation")
    axes[1].legend()
    if curves["train"].get("lr"):
        axes[2].plot(*zip(*curves["train"]["lr"]))
    axes[2].set_title("Learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if by_time:
        axes[3].plot(*zip(*by_time), "o-", markersize=3)
        axes[3].set_ylim(0, 1)
        axes[3].set_title("Validation mIoU against time")
        axes[3].set_xlabel("minutes of training (net of evaluation)")
    return _save(fig, path)


def minutes_curve(split_curves: dict, key: str) -> list[tuple[float, float]]:
    """(minutes of training, value) for the rows that logged both (runs before urbanseg logged
    `train_seconds` have none)."""
    seconds = dict(split_curves.get("train_seconds", []))
    return [(seconds[step] / 60, value) for step, value in split_curves.get(key, []) if step in seconds]


def sample_grid(rows: Sequence[tuple], labels: LabelSet, path: Path, title: str = "") -> Path:
    """One row per sample: image | ground truth | prediction | error map, with a class legend."""
    columns = ("image", "ground truth", "prediction", "errors (red)")
    height, width = rows[0][0].shape[:2]
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 3.2, len(rows) * 3.2 * height / width + 0.9), squeeze=False)
    present: set = set()
    for r, (image, gt, pred) in enumerate(rows):
        present |= set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
        panels = (image, labels.colorize(gt), labels.colorize(pred), error_map(pred, gt, labels.ignore_index))
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(columns[c])
    present = sorted(i for i in present if i < labels.num_classes)
    fig.legend(handles=legend_handles(labels, present), loc="lower center", ncol=min(len(present), 7), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * math.ceil(len(present) / 7)))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def legend_strip(labels: LabelSet, present: Sequence[int], width: int) -> np.ndarray:
    """A legend as an RGB strip to append under a colour mask or overlay saved as a plain PNG."""
    present = [i for i in present if i < labels.num_classes]
    swatch, pad, column = 10, 4, 100
    per_row = max(1, (width - pad) // column)
    rows = max(1, math.ceil(len(present) / per_row))
    strip = np.full((rows * (swatch + pad) + pad, width, 3), 255, np.uint8)
    for k, index in enumerate(present):
        y = pad + (k // per_row) * (swatch + pad)
        x = pad + (k % per_row) * column
        strip[y:y + swatch, x:x + swatch] = labels.palette[index]
        cv2.putText(strip, labels.class_names[index][:14], (x + swatch + 3, y + swatch - 1),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.32, (20, 20, 20), 1, cv2.LINE_AA)
    return strip
