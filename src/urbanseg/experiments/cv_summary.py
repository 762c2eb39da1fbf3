"""The cross-validation summary: `cv_summary.json`, `cv_summary.md` and `cv_class_iou.png`.

Per fold: mIoU, pixel accuracy and per-class IoU of its best checkpoint on its held-out images;
then mean and standard deviation over the folds (sample std, ddof=1: the folds are a sample of
the ways the data could have been split). A class absent from a fold's held-out images and never
predicted there has no IoU in that fold; its mean and std are over the folds where it has one.
When the dataset has a separate validation split, the same for each fold's model there, plus
the fold ensemble as one more row.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.labels import LabelSet
from ..engine.checkpoint import load_labels
from ..files import atomic_write, write_json, write_text
from ..metrics import json_safe
from ..visualize import plt  # the Agg backend and the house style of every figure

HEADLINE = (("miou", "mIoU"), ("pixel_accuracy", "pixel acc."))


def row(metrics: dict) -> dict:
    """The numbers of one evaluation the summary keeps."""
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": {name: values["iou"] for name, values in metrics["per_class"].items()}}


def mean_std(rows: Sequence[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1) over `rows` of each headline number and each class's IoU (NaN-aware)."""
    def stats(values: list) -> tuple[float, float]:
        array = np.array([np.nan if v is None else v for v in values], np.float64)
        with warnings.catch_warnings():  # a class with an IoU in fewer than two folds: NaN, said as n/a
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(array)), float(np.nanstd(array, ddof=1))

    mean: dict = {"per_class_iou": {}}
    std: dict = {"per_class_iou": {}}
    for key, _ in HEADLINE:
        mean[key], std[key] = stats([r[key] for r in rows])
    for name in rows[0]["per_class_iou"]:
        mean["per_class_iou"][name], std["per_class_iou"][name] = stats([r["per_class_iou"][name] for r in rows])
    return mean, std


def write_summary(run_dir: Path, context: dict, results: Sequence[dict], ensemble: Optional[dict],
                  labels_from: Path) -> dict:
    """Write the three summary files from the fold results; returns the summary as saved."""
    held_out = [{"fold": r["fold"], "groups": r["groups"], "images": r["images"], "step": r["step"],
                 **row(r["heldout"])} for r in results]
    mean, std = mean_std(held_out)
    summary = {**context, "heldout": {"source": "each fold's best checkpoint on its held-out images, at full label "
                                                "resolution", "per_fold": held_out, "mean": mean, "std": std}}
    if context["val_split"] is not None:
        per_fold = [{"fold": r["fold"], **row(r["val"])} for r in results]
        val_mean, val_std = mean_std(per_fold)
        summary["val"] = {"split": context["val_split"], "images": context["val_images"], "per_fold": per_fold,
                          "mean": val_mean, "std": val_std, "ensemble": row(ensemble)}
    summary = json_safe(summary)
    write_json(run_dir / "cv_summary.json", summary)
    write_text(run_dir / "cv_summary.md", markdown(summary))
    plot_fold_iou(summary, load_labels(labels_from), run_dir / "cv_class_iou.png")
    return summary


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}"


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    return _pct(mean) if std is None else f"{_pct(mean)} ± {std * 100:.2f}"


def markdown(summary: dict) -> str:
    """The summary as Markdown tables (percentages)."""
    h = summary["heldout"]
    lines = [f"# Cross-validation: {summary['folds']} folds grouped by {summary['group']} (seed {summary['seed']})",
             "", f"Metrics of {h['source']} (%).", "",
             "| fold | held-out groups | images | best step | mIoU | pixel acc. |", "| --- | --- | --- | --- | --- | --- |"]
    for r in h["per_fold"]:
        groups = ", ".join(r["groups"][:6]) + (", ..." if len(r["groups"]) > 6 else "")
        lines.append(f"| {r['fold']} | {groups} | {r['images']} | {r['step']} | {_pct(r['miou'])} "
                     f"| {_pct(r['pixel_accuracy'])} |")
    lines.append(f"| mean ± std | | {sum(r['images'] for r in h['per_fold'])} | | "
                 f"{_pm(h['mean']['miou'], h['std']['miou'])} | "
                 f"{_pm(h['mean']['pixel_accuracy'], h['std']['pixel_accuracy'])} |")
    lines += ["", "## Per-class IoU on the held-out folds", ""] + _class_table(h["per_fold"], h["mean"], h["std"])
    val = summary.get("val")
    if val is None:
        if summary.get("val_skipped"):
            lines += ["", f"No separate validation split: {summary['val_skipped']}."]
        return "\n".join(lines) + "\n"
    lines += ["", f"## Validation split `{val['split']}` ({val['images']} images)", "",
              "Each fold's best checkpoint, and the fold ensemble (their softmax probabilities averaged).", "",
              "| model | mIoU | pixel acc. |", "| --- | --- | --- |"]
    lines += [f"| fold {r['fold']} | {_pct(r['miou'])} | {_pct(r['pixel_accuracy'])} |" for r in val["per_fold"]]
    lines.append(f"| mean ± std | {_pm(val['mean']['miou'], val['std']['miou'])} | "
                 f"{_pm(val['mean']['pixel_accuracy'], val['std']['pixel_accuracy'])} |")
    lines.append(f"| ensemble of {summary['folds']} folds | {_pct(val['ensemble']['miou'])} | "
                 f"{_pct(val['ensemble']['pixel_accuracy'])} |")
    lines += ["", f"### Per-class IoU on `{val['split']}`", ""]
    lines += _class_table(val["per_fold"], val["mean"], val["std"], val["ensemble"])
    return "\n".join(lines) + "\n"


def _class_table(per_fold: Sequence[dict], mean: dict, std: dict, ensemble: Optional[dict] = None) -> list[str]:
    header = ["class"] + [f"fold {r['fold']}" for r in per_fold] + ["mean ± std"] + (["ensemble"] if ensemble else [])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in mean["per_class_iou"]:
        cells = [name] + [_pct(r["per_class_iou"][name]) for r in per_fold]
        cells.append(_pm(mean["per_class_iou"][name], std["per_class_iou"][name]))
        if ensemble:
            cells.append(_pct(ensemble["per_class_iou"][name]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_fold_iou(summary: dict, labels: LabelSet, path: Path) -> Path:
    """Per-class IoU across folds: the mean as a bar in the class's colour, the std as an error
    bar, each fold's value as a dot (and the ensemble on the validation split as a diamond)."""
    h = summary["heldout"]
    names = list(h["mean"]["per_class_iou"])
    value = lambda v: np.nan if v is None else v  # noqa: E731
    means = np.array([value(h["mean"]["per_class_iou"][n]) for n in names])
    stds = np.array([value(h["std"]["per_class_iou"][n]) for n in names])
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(names) + 1.4))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(means), xerr=np.nan_to_num(stds), color=labels.palette[: len(names)] / 255.0,
            edgecolor="#333", linewidth=0.4, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333"})
    for r in h["per_fold"]:
        ax.plot([value(r["per_class_iou"][n]) for n in names], y, "o", color="#111", markersize=2.5,
                label="one fold (held out)" if r is h["per_fold"][0] else None)
    if summary.get("val"):
        ensemble = summary["val"]["ensemble"]["per_class_iou"]
        ax.plot([value(ensemble[n]) for n in names], y, "D", color="#d62728", markersize=3,
                label=f"fold ensemble on {summary['val']['split']}")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    miou, spread = h["mean"]["miou"], h["std"]["miou"]
    ax.set_title(f"Per-class IoU over {summary['folds']} folds (mIoU {_pm(miou, spread)}%)")
    try:
        return atomic_write(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
