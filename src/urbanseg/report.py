"""The figures and the self-contained HTML report of a run (`RUN_DIR/report.html`).

The report gathers the config, the final metrics table, per-class IoU bars, the confusion
matrix, training curves and the validation sample grids; images are embedded (base64), so the
single file can be mailed or attached as it is.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

import numpy as np

from .data.labels import LabelSet
from .engine.checkpoint import load_labels
from .errors import CheckpointError, DataError
from .files import write_text
from .visualize import plot_class_iou, plot_confusion, plot_curves


def _labels_of_run(run_dir: Path) -> LabelSet:
    for name in ("last.pt", "best.pt"):
        path = run_dir / "checkpoints" / name
        if path.exists():
            return load_labels(path)
    raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint to read the class names from")


def _final_metrics(run_dir: Path) -> tuple[Optional[dict], str]:
    """The best evidence available: a full-resolution evaluation if one was run, else the last validation."""
    for path, source in ((run_dir / "eval-val" / "metrics.json", "full-resolution evaluation (urbanseg evaluate)"),
                         (run_dir / "val_metrics.json", "last validation during training")):
        if path.exists():
            return json.loads(path.read_text()), source
    return None, ""


def write_run_figures(run_dir: str | Path) -> list[Path]:
    """Curves, per-class IoU and confusion matrix as PNG under RUN_DIR/figures, then report.html."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").exists():
        raise DataError(f"{run_dir}: no metrics.csv (is this a run directory?)")
    figures = run_dir / "figures"
    written = [plot_curves(run_dir / "metrics.csv", figures / "curves.png")]
    metrics, _ = _final_metrics(run_dir)
    if metrics is not None:
        labels = _labels_of_run(run_dir)
        written.append(plot_class_iou(metrics, labels, figures / "class_iou.png"))
        written.append(plot_confusion(np.array(metrics["confusion_matrix"]), labels.class_names,
                                      figures / "confusion_matrix.png"))
    written.append(write_report(run_dir))
    return written


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _pct(value) -> str:
    return "n/a" if value is None or value != value else f"{value * 100:.2f}"


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    metrics, source = _final_metrics(run_dir)
    parts = [f"<h1>urbanseg run: {html.escape(run_dir.name)}</h1>"]
    if metrics is not None:
        headline = [("mIoU", metrics.get("miou")), ("category mIoU", metrics.get("category_miou")),
                    ("iIoU", metrics.get("iiou")), ("pixel accuracy", metrics.get("pixel_accuracy")),
                    ("mean accuracy", metrics.get("mean_accuracy"))]
        parts.append(f"<h2>Results</h2><p class=note>From the {html.escape(source)}.</p><div class=cards>")
        parts += [f"<div class=card><b>{_pct(v)}</b><span>{k}</span></div>" for k, v in headline if v is not None]
        parts.append("</div><table><tr><th>class</th><th>IoU</th><th>precision</th><th>recall</th><th>F1</th><th>pixels</th></tr>")
        for name, row in metrics["per_class"].items():
            parts.append(f"<tr><td>{html.escape(name)}</td><td>{_pct(row['iou'])}</td><td>{_pct(row['precision'])}</td>"
                         f"<td>{_pct(row['recall'])}</td><td>{_pct(row['f1'])}</td><td>{row['pixels']}</td></tr>")
        parts.append("</table>")
    figures = run_dir / "figures"
    for name, title in (("class_iou.png", "Per-class IoU"), ("confusion_matrix.png", "Confusion matrix"),
                        ("curves.png", "Training curves")):
        if (figures / name).exists():
            parts.append(f"<h2>{title}</h2>" + _img(figures / name, title))
    samples = sorted((run_dir / "samples").glob("*.png"))
    if samples:
        parts.append("<h2>Validation samples</h2>")
        parts += [_img(p, p.stem.replace("_", " ")) for p in samples[-2:]]
    config = run_dir / "config.yaml"
    if config.exists():
        parts.append(f"<h2>Config</h2><pre>{html.escape(config.read_text())}</pre>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>urbanseg report: {html.escape(run_dir.name)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    return write_text(run_dir / "report.html", page)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.6em}.card span{color:#666}.note{color:#666}
table{border-collapse:collapse;margin-top:1em}td,th{border-bottom:1px solid #eee;padding:.25em .8em;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}figcaption{color:#666}
pre{background:#f6f6f6;padding:1em;overflow:auto}
"""
