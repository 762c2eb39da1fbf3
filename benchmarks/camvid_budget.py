"""CamVid from scratch in the same wall-clock budget: a plain PyTorch loop against urbanseg's recipe.

    python benchmarks/camvid_budget.py DATA_DIR --minutes M [--recipe configs/camvid/FILE.yaml] [--scales 1.0,1.5]
                                       [--only plain|urbanseg] [--keep DIR]

DATA_DIR holds CamVid in the SegNet layout (train/ trainannot/ val/ valannot/, 11 classes, 11 =
void). In one run, one after the other on the same machine:

(a) what a user following the tutorials writes: segmentation-models-pytorch U-Net/ResNet-18 from
    random init at the full 360x480, batch 4, Adam 1e-3, random horizontal flips, fp32, every
    image decoded into memory first, trained until M minutes have passed;
(b) `urbanseg train` with the CPU recipe (`trainer.max_minutes` = M, the schedule fitted to it).

Both are then scored the same way, by `urbanseg.evaluation.evaluate_predictor` on the val split
at the full 360x480 label resolution (void ignored), which is what `urbanseg evaluate` reports;
the budget counts training only (the recipe's own evaluations during training are excluded by
the engine, and (a) evaluates once at the end). Prints steps, training images per second and the
IoU of every class for both, with the CPU kind. With `--scales`, (b)'s model is also scored
averaged over those scales (`urbanseg evaluate --scales`), in a column of its own; with `--keep`,
(b)'s cache and run stay in DIR for `urbanseg evaluate` (e.g. with `--tta flip`). Measures,
asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from urbanseg.cli import parse_scales
from urbanseg.config import load_config
from urbanseg.data import CamVid
from urbanseg.data.preset import Preset
from urbanseg.engine.precision import cpu_has_native_bf16
from urbanseg.engine.train import train
from urbanseg.evaluation import evaluate_predictor
from urbanseg.inference import Predictor, TorchBackend, load

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "camvid" / "unet_regnetx004_adamw_180x240_cpu_60min.yaml"


def plain_loop(root: Path, minutes: float, seed: int = 0) -> dict:
    """(a): the tutorial loop, timed on training steps only."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_set = CamVid(root, "train")
    pairs = [train_set.load(i) for i in range(len(train_set))]  # "data in memory"
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _ in pairs])  # uint8 N,3,H,W
    masks = torch.stack([torch.from_numpy(mask).long() for _, mask in pairs])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model = smp.Unet("resnet18", encoder_weights=None, classes=train_set.labels.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps, seen, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        for batch in np.array_split(rng.permutation(len(images)), len(images) // 4):
            x = (images[batch].float() / 255 - mean) / std
            y = masks[batch]
            flip = torch.from_numpy(rng.random(len(batch)) < 0.5)
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=train_set.labels.ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps, seen = steps + 1, seen + len(batch)
            if time.perf_counter() - start >= minutes * 60:
                break
    seconds = time.perf_counter() - start
    predictor = Predictor(TorchBackend(model, "cpu", "fp32"), train_set.labels, Preset(IMAGENET_MEAN, IMAGENET_STD))
    return {"steps": steps, "images_per_s": seen / seconds, "metrics": score(predictor, root)}


def urbanseg_recipe(root: Path, minutes: float, recipe: Path, work: Path, scales: list[float]) -> dict:
    """(b): `urbanseg train` with the recipe, the budget set to `minutes`; scored at one scale, and
    at `scales` too (under "metrics_scales") when they are not just 1.0."""
    overrides = [f"data.root={root}", f"trainer.max_minutes={minutes}"]
    if load_config(recipe).data.cache:  # a fresh cache, filled in the budget as a user's first run fills it
        overrides.append(f"data.cache={work / 'cache'}")
    cfg = load_config(recipe, overrides)
    run = work / "run"
    started = time.perf_counter()
    result = train(cfg, run)
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    seconds = max(float(r[header.index("train_seconds")]) for r in rows if r[header.index("train_seconds")])
    images = result["step"] * cfg.data.batch_size * cfg.trainer.accumulate
    predictor = load(run / "checkpoints" / "last.pt", device="cpu")  # not best.pt: chosen on this same val split
    scored = {"steps": result["step"], "images_per_s": images / seconds, "wall_s": time.perf_counter() - started,
              "metrics": score(predictor, root)}
    if list(scales) != [1.0]:
        scored["metrics_scales"] = score(predictor, root, scales)
    return scored


def score(predictor: Predictor, root: Path, scales: list[float] = (1.0,)) -> dict:
    return evaluate_predictor(predictor, CamVid(root, "val"), scales=scales, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--only", choices=["plain", "urbanseg"], help="run one side only")
    parser.add_argument("--scales", type=parse_scales, default=[1.0],
                        help="also score the recipe's model averaged over these scales, e.g. 1.0,1.5")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="train the recipe in DIR (cache and run, kept for `urbanseg evaluate`) instead of a temporary one")
    args = parser.parse_args()
    if args.keep and (args.keep / "run").exists():
        parser.error(f"--keep {args.keep}: {args.keep / 'run'} already exists; give a new directory")
    kind = "AVX-512 BF16 / AMX (native bf16)" if cpu_has_native_bf16() else "AVX2 (no native bf16)"
    print(f"CPU: {kind}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}; "
          f"budget {args.minutes:g} min of training each; recipe {args.recipe.name}", flush=True)
    results = {}
    if args.only != "urbanseg":
        results["plain PyTorch loop"] = plain_loop(args.data_dir, args.minutes)
    if args.only != "plain":
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep or Path(tmp)
            recipe = urbanseg_recipe(args.data_dir, args.minutes, args.recipe, work, args.scales)
        results["urbanseg recipe"] = recipe
        if "metrics_scales" in recipe:
            scales = ",".join(f"{v:g}" for v in args.scales)
            results[f"urbanseg recipe, --scales {scales}"] = {**recipe, "metrics": recipe["metrics_scales"]}
    names = list(next(iter(results.values()))["metrics"]["per_class"])
    rows = [("steps", [str(r["steps"]) for r in results.values()]),
            ("training img/s", [f"{r['images_per_s']:.2f}" for r in results.values()])]
    rows += [(name, [f"{r['metrics']['per_class'][name]['iou'] * 100:.1f}" for r in results.values()])
             for name in names]
    rows += [("**val mIoU**", [f"**{r['metrics']['miou'] * 100:.1f}**" for r in results.values()]),
             ("pixel accuracy", [f"{r['metrics']['pixel_accuracy'] * 100:.1f}" for r in results.values()])]
    print(f"\n| | {' | '.join(results)} |\n| --- |{' --- |' * len(results)}")
    for label, values in rows:
        print(f"| {label} | {' | '.join(values)} |")

if __name__ == "__main__":
    main()
