"""What a run writes as it goes: `metrics.csv` (one row per logged event) and TensorBoard events.

On resume, rows after the checkpoint's step are dropped (they belong to the part of the run
that was lost), so the file never holds duplicated or missing steps.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional

from ..files import write_text

# train_seconds: wall-clock seconds of training up to the row, net of evaluations (`RunLength.trained_seconds`)
COLUMNS = ["step", "epoch", "split", "loss", "lr", "images_per_s", "miou", "pixel_accuracy", "mean_accuracy",
           "category_miou", "train_seconds"]


class RunLog:
    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.path = run_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            truncate_after(self.path, resume_step)
        else:
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)
        self.writer = None
        if tensorboard:
            try:  # optional: a run without the tensorboard package still writes metrics.csv
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard not installed: the CSV still has everything
                self.writer = None

    def log(self, split: str, step: int, epoch: int, values: dict) -> None:
        row = {"step": step, "epoch": epoch, "split": split}
        row.update({k: _fmt(values[k]) for k in COLUMNS[3:] if values.get(k) is not None})
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, COLUMNS).writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
        if self.writer is not None:
            for key in COLUMNS[3:]:
                if values.get(key) is not None:
                    self.writer.add_scalar(f"{split}/{key}", values[key], step)
            for name, per_class in (values.get("per_class") or {}).items():
                if per_class["iou"] == per_class["iou"]:  # not NaN
                    self.writer.add_scalar(f"{split}_iou/{name}", per_class["iou"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def truncate_after(path: Path, step: int) -> None:
    rows = [row for row in read_rows(path) if int(row["step"]) <= step]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
