"""`urbanseg demo`: the whole job on procedural data, with no download and no data from the user.

generate a Cityscapes-layout dataset -> check it -> train the CPU recipe -> evaluate on the
validation split at full label resolution -> predict a few images (colour, overlay, entropy)
-> HTML report -> a short summary of where everything is.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import load_config
from .data.prepare import check_cityscapes
from .data.synth import write_dataset
from .engine import precision
from .engine.train import train as train_model
from .errors import ConfigError, DataError
from .evaluation import run_evaluation
from .inference import load
from .predict import predict_files
from .report import write_run_figures

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "synthetic"
RECIPE = RECIPES / "unet_resnet18_adamw_96x192_cpu.yaml"  # CUDA, or a CPU with native bf16
RECIPE_FP32 = RECIPES / "unet_regnetx002_adamw_96x192_cpu_fp32.yaml"  # a CPU that trains in fp32 only
MARKER = ".urbanseg-demo"


def _fresh_output(out: Path) -> None:
    """Reuse `out` only if it is empty or an earlier demo's folder, so nothing else is overwritten."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out}: exists and is not a demo folder; choose another --out")
    for part in ("data", "run", "predictions"):
        shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by urbanseg demo; the demo may replace this folder's contents\n")


MINUTES = 5.75  # the whole demo, generation to report; the training gets what the other steps leave
AFTER_TRAINING_SECONDS = 20  # training set-up, final validation, evaluation, predictions, report: ~15 s
GENERATION_SECONDS_PER_MEGAPIXEL = 0.6  # with 2 workers on a 2-core CPU (900 scenes at 96x192: 10-11 s)


def run_demo(out: Path, minutes: Optional[float] = None, train: int = 800, val: int = 100,
             size: tuple[int, int] = (96, 192), overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Run the demo into `out` in about `minutes`; returns the evaluation metrics and the paths written."""
    started, minutes = time.perf_counter(), MINUTES if minutes is None else minutes
    megapixels = (train + val) * size[0] * size[1] / 1e6
    training_budget(minutes, megapixels * GENERATION_SECONDS_PER_MEGAPIXEL)  # fail before writing anything
    recipe = demo_recipe()
    if not recipe.exists():
        raise ConfigError(f"{recipe}: the demo recipe is missing (run the demo from a source checkout)")
    out = Path(out)
    _fresh_output(out)
    data_root, run_dir = out / "data", out / "run"
    write_dataset(data_root, {"train": train, "val": val}, size=size, seed=0, workers=2)
    report = check_cityscapes(data_root, progress=False)
    if not report.ok:
        raise DataError(f"{data_root}: the generated data did not pass the checks:\n{report.format()}")
    print(f"[1/5] generated {train} training and {val} validation scenes at {size[0]}x{size[1]} in {data_root} "
          f"({time.perf_counter() - started:.0f} s)")

    training_minutes = training_budget(minutes, time.perf_counter() - started)
    cfg = load_config(recipe, [f"data.root={data_root}", f"trainer.max_minutes={training_minutes:.3f}", *overrides])
    print(f"[2/5] training {cfg.model.name}/{cfg.model.encoder or 'scratch'} ({recipe.name}) "
          f"for {training_minutes:.1f} min")
    train_model(cfg, run_dir)

    checkpoint = run_dir / "checkpoints" / "best.pt"
    metrics, eval_dir = run_evaluation(data_root, split="val", checkpoint=str(checkpoint), out=run_dir / "eval-val",
                                       progress=progress)
    print(f"[3/5] evaluated {val} validation images at full resolution: {eval_dir / 'metrics.json'}")

    images = sorted((data_root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))[:4]
    predictions = out / "predictions"
    predict_files(load(checkpoint), images, predictions, ["color", "overlay", "entropy"], progress=False)
    print(f"[4/5] predicted {len(images)} images (colour, overlay, entropy): {predictions}")

    write_run_figures(run_dir)
    print(f"[5/5] report: {run_dir / 'report.html'}")
    print(summary(metrics, time.perf_counter() - started))
    return {"metrics": metrics, "report": run_dir / "report.html", "predictions": predictions, "run_dir": run_dir}


def demo_recipe() -> Path:
    """The recipe that learns most in a few minutes on this machine.

    A CPU without native bf16 (AVX-512 BF16 or AMX) trains in fp32, several times slower: on a 2-core
    AVX2 CPU, U-Net/ResNet-18 managed ~320 steps in the demo's budget (44-45% mIoU), and U-Net with a
    RegNetX-200MF encoder cut after its 1/16 stage and a slim decoder that stops at 1/2 resolution
    manages ~1000-1100 (~60%). With native bf16 on 2 cores the ResNet-18 recipe trains ~950-1400 steps
    (depending on the machine) to 60-63% (configs/synthetic/README.md).
    """
    return RECIPE if torch.cuda.is_available() or precision.cpu_has_native_bf16() else RECIPE_FP32


def training_budget(minutes: float, elapsed_seconds: float) -> float:
    """Minutes left for training when the demo should end after `minutes` in all."""
    if not math.isfinite(minutes) or minutes <= 0:
        raise ConfigError(f"--minutes {minutes:g}: expected a positive number of minutes")
    left = (minutes * 60 - elapsed_seconds - AFTER_TRAINING_SECONDS) / 60
    if left < 0.5:
        raise ConfigError(f"--minutes {minutes:g}: too short; generating the data takes {elapsed_seconds:.0f} s "
                         f"and training needs at least 30 s more (try --minutes {math.ceil(minutes + 1)})")
    return left


def summary(metrics: dict, seconds: float) -> str:
    by_size = sorted(metrics["per_class"].items(), key=lambda item: -item[1]["pixels"])
    present = [(name, row) for name, row in by_size if row["pixels"] > 0]

    def line(items) -> str:
        return ", ".join(f"{name} {_pct(row['iou'])}" for name, row in items)

    return "\n".join([
        f"validation mIoU {_pct(metrics['miou'])}, pixel accuracy {_pct(metrics['pixel_accuracy'])} "
        f"({len(present)} classes present; {seconds / 60:.1f} min in all)",
        f"  five largest classes:  {line(present[:5])}",
        f"  five smallest classes: {line(present[-5:])}",
    ])


def _pct(value) -> str:
    return "n/a" if value is None or value != value else f"{value * 100:.1f}%"
