"""Seconds per image scoring Cityscapes labelIds prediction PNGs: urbanseg against the official script.

    python benchmarks/eval_predictions_speed.py [--images 40] [--root DIR] [--workers N]

Generates `--images` 2048x1024 procedural val scenes (unless --root already holds them), writes
imperfect predictions (the truth with blocks of wrong, void and ignored ids plus 2% pixel noise),
then scores them with `evaluate_prediction_files` (one worker, then all cores) and with
`cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling.evaluateImgLists`, and prints seconds
per image and the largest differences between the two. Measures, asserts nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from urbanseg.data import Cityscapes
from urbanseg.data.io import read_mask, write_png
from urbanseg.data.synth import write_dataset
from urbanseg.evaluation import evaluate_prediction_files

VALID_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def write_predictions(root: Path, out: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """`<stem>_leftImg8bit_pred.png` for every val labelIds file; returns (predictions, truths)."""
    rng = np.random.default_rng(seed)
    predictions, truths = [], []
    for label in sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png")):
        truth = read_mask(label)
        pred = truth.copy()
        height, width = truth.shape
        for _ in range(60):  # void (0, 4) and ignored vehicle ids (29, 30) exercise the special cases
            y, x = rng.integers(0, height - 64), rng.integers(0, width - 128)
            pred[y:y + rng.integers(8, 64), x:x + rng.integers(8, 128)] = rng.choice(VALID_IDS + [0, 4, 29, 30])
        pred[rng.random(truth.shape) < 0.02] = rng.choice(VALID_IDS)
        predictions.append(str(out / f"{label.name[: -len('_gtFine_labelIds.png')]}_leftImg8bit_pred.png"))
        truths.append(str(label))
        write_png(predictions[-1], pred)
    return predictions, truths


def official_module(export_dir: str):
    os.environ["CITYSCAPES_EXPORT_DIR"] = export_dir  # read at import; JSONOutput is off anyway
    if not hasattr(np, "in1d"):  # cityscapesscripts 2.3.0 still calls np.in1d, removed in NumPy 2.4
        np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel()
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    official.args.quiet = True
    official.args.JSONOutput = False
    official.args.evalInstLevelScore = True
    official.args.evalPixelAccuracy = False
    return official


def max_difference(ours: dict, theirs: dict) -> float:
    """Largest |ours - theirs| over the names both have (NaN on both sides is equal, on one side inf)."""
    worst = 0.0
    for name, value in ours.items():
        if name not in theirs:
            continue
        if math.isnan(value) or math.isnan(theirs[name]):
            if math.isnan(value) != math.isnan(theirs[name]):
                return math.inf  # scored on one side only
            continue
        worst = max(worst, abs(value - theirs[name]))
    return worst


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--root", type=Path, help="a Cityscapes tree to use (generated there if it has no val split)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with open("/proc/cpuinfo") as handle:
        cpuinfo = handle.read()
    print(f"CPU: {'avx512_bf16' if 'avx512_bf16' in cpuinfo else 'no avx512_bf16'}, "
          f"{len(os.sched_getaffinity(0))} cores usable")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "cityscapes"
        if not (root / "gtFine" / "val").is_dir():
            _, seconds = timed(lambda: write_dataset(root, {"val": args.images}, size=(1024, 2048), seed=0, workers=2))
            print(f"generated {args.images} scenes at 2048x1024 in {seconds:.1f} s")
        predictions, truths = write_predictions(root, Path(tmp) / "pred")
        dataset = Cityscapes(root, "val")
        n = len(dataset)
        print(f"{'scorer':<50}{'s/image':>10}{'total s':>10}")
        for workers in dict.fromkeys((1, args.workers)):
            ours, seconds = timed(lambda: evaluate_prediction_files(Path(tmp) / "pred", dataset, progress=False,
                                                                    workers=workers))
            name = f"urbanseg evaluate_prediction_files, {workers} worker(s)"
            print(f"{name:<50}{seconds / n:>10.4f}{seconds:>10.2f}")
        official = official_module(tmp)
        theirs, seconds = timed(lambda: official.evaluateImgLists(predictions, truths, official.args))
        print(f"{'cityscapesscripts evaluateImgLists':<50}{seconds / n:>10.4f}{seconds:>10.2f}")

    print(f"\nmax |urbanseg - official| over {n} images:")
    rows = [
        ("class IoU", {k: v["iou"] for k, v in ours["per_class"].items()}, theirs["classScores"]),
        ("category IoU", ours["per_category"], theirs["categoryScores"]),
        ("class iIoU", ours["per_class_iiou"], theirs["classInstScores"]),
        ("category iIoU", ours["per_category_iiou"], theirs["categoryInstScores"]),
        ("mIoU / category mIoU / iIoU / category iIoU",
         {"a": ours["miou"], "b": ours["category_miou"], "c": ours["iiou"], "d": ours["category_iiou"]},
         {"a": theirs["averageScoreClasses"], "b": theirs["averageScoreCategories"],
          "c": theirs["averageScoreInstClasses"], "d": theirs["averageScoreInstCategories"]}),
    ]
    for name, mine, reference in rows:
        print(f"  {name:<46}{max_difference(mine, reference):.2e}")
    print(f"  (mIoU {ours['miou']:.4f}, category mIoU {ours['category_miou']:.4f}, iIoU {ours['iiou']:.4f}, "
          f"category iIoU {ours['category_iiou']:.4f})")


if __name__ == "__main__":
    main()
