"""`urbanseg predict`: one output per input image per format, with predictable names.

    <stem>_color.png     class colours (exact image size, the dataset palette)
    <stem>_overlay.png   colours blended over the photo, with a legend strip underneath
    <stem>_labelIds.png  Cityscapes label ids: the official submission format
    <stem>_trainIds.png  class indices as the model predicts them
    <stem>_probs.npy     CxHxW float16 class probabilities
    <stem>_entropy.png   per-pixel softmax entropy (dark = confident, bright = uncertain)

Unreadable inputs are reported by name and skipped; the others are still written.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from .data.io import IMAGE_SUFFIXES, DataError, read_image, write_png
from .visualize import entropy_image, legend_strip, overlay

FORMATS = ("color", "overlay", "labelids", "trainids", "probs", "entropy")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{item}: the pattern matches no file")
            found += matches
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found:
        raise DataError(f"{', '.join(inputs)}: no images found")
    return list(dict.fromkeys(found))


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format: unknown format '{unknown[0] if unknown else text}' (expected {', '.join(FORMATS)})")
    return formats


def predict_files(predictor, inputs: Iterable[Path], out: Path, formats: Sequence[str], opacity: float = 0.5,
                  mode: str = "whole", scales: Sequence[float] = (1.0,), flip: bool = False,
                  progress: bool = True) -> tuple[list[Path], list[str]]:
    """Write the requested outputs for every input; returns (written files, problems)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = predictor.labels
    written, problems = [], []
    stems: dict[str, Path] = {}
    for path in tqdm(list(inputs), desc="predict", disable=not progress):
        if path.stem in stems:
            problems.append(f"{path}: same name as {stems[path.stem]}; outputs would overwrite each other, skipped")
            continue
        stems[path.stem] = path
        try:
            image = read_image(path)
        except DataError as error:
            problems.append(str(error))
            continue
        probs = predictor.predict_proba(image, mode=mode, scales=scales, flip=flip)
        pred = probs.argmax(axis=0).astype(np.uint8)
        base = out / path.stem
        for fmt in formats:
            if fmt == "color":
                target = base.with_name(f"{path.stem}_color.png")
                write_png(target, labels.colorize(pred))
            elif fmt == "overlay":
                target = base.with_name(f"{path.stem}_overlay.png")
                blended = overlay(image, labels.colorize(pred), opacity)
                legend = legend_strip(labels, np.unique(pred).tolist(), blended.shape[1])
                write_png(target, np.concatenate([blended, legend], axis=0))
            elif fmt == "labelids":
                if labels.train_to_raw is None:
                    raise ValueError("--format labelids: this model's classes have no label ids; use trainids")
                target = base.with_name(f"{path.stem}_labelIds.png")
                write_png(target, labels.train_to_raw[pred])
            elif fmt == "trainids":
                target = base.with_name(f"{path.stem}_trainIds.png")
                write_png(target, pred)
            elif fmt == "probs":
                target = base.with_name(f"{path.stem}_probs.npy")
                tmp = target.with_name(f".{target.name}.tmp.npy")
                np.save(tmp, probs.astype(np.float16))
                os.replace(tmp, target)
            else:
                target = base.with_name(f"{path.stem}_entropy.png")
                write_png(target, entropy_image(probs))
            written.append(target)
    return written, problems
