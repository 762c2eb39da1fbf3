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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from .data.io import IMAGE_SUFFIXES, DataError, read_image, write_png
from .data.labels import LabelSet
from .errors import ConfigError
from .files import atomic_write
from .visualize import entropy_image, legend_strip, overlay




@dataclass
class Prediction:
    """One input image and what the model made of it: what every output format is drawn from."""

    image: np.ndarray  # HxWx3 uint8 RGB
    probs: np.ndarray  # CxHxW float32
    pred: np.ndarray  # HxW uint8 class indices
    labels: LabelSet
    opacity: float


def _overlay(p: Prediction) -> np.ndarray:
    blended = overlay(p.image, p.labels.colorize(p.pred), p.opacity)
    return np.concatenate([blended, legend_strip(p.labels, np.unique(p.pred).tolist(), blended.shape[1])], axis=0)


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array))


# format -> (file name suffix, what to write, how to save it)
WRITERS: dict[str, tuple[str, Callable[[Prediction], np.ndarray], Callable[[Path, np.ndarray], None]]] = {
    "color": ("_color.png", lambda p: p.labels.colorize(p.pred), write_png),
    "overlay": ("_overlay.png", _overlay, write_png),
    "labelids": ("_labelIds.png", lambda p: p.labels.train_to_raw[p.pred], write_png),
    "trainids": ("_trainIds.png", lambda p: p.pred, write_png),
    "probs": ("_probs.npy", lambda p: p.probs.astype(np.float16), _save_npy),
    "entropy": ("_entropy.png", lambda p: entropy_image(p.probs), write_png),
}
FORMATS = tuple(WRITERS)


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
        raise ConfigError(f"--format: unknown format '{unknown[0] if unknown else text}' (expected {', '.join(FORMATS)})")
    return formats


def predict_files(predictor, inputs: Iterable[Path], out: Path, formats: Sequence[str], opacity: float = 0.5,
                  mode: str = "whole", scales: Sequence[float] = (1.0,), flip: bool = False,
                  progress: bool = True) -> tuple[list[Path], list[str]]:
    """Write the requested outputs for every input; returns (written files, problems)."""
    labels = predictor.labels
    if "labelids" in formats and labels.train_to_raw is None:
        raise ConfigError("--format labelids: this model's classes have no label ids; use trainids")
    out.mkdir(parents=True, exist_ok=True)
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
        prediction = Prediction(image, probs, probs.argmax(axis=0).astype(np.uint8), labels, opacity)
        for fmt in formats:
            suffix, render, save = WRITERS[fmt]
            target = out / f"{path.stem}{suffix}"
            save(target, render(prediction))
            written.append(target)
    return written, problems
