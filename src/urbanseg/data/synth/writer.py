"""Write a procedural dataset as a Cityscapes tree:

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,instanceIds,color}.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json

The same seed gives byte-identical files: every image draws from its own generator seeded by
(seed, split, index), so images can also be made in parallel.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ..io import write_png
from ..labels import cityscapes_color_image
from .canvas import Canvas
from .scene import draw_scene

# Cities per split, as in Cityscapes: no city appears in two splits.
CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne"),
    "val": ("frankfurt", "lindau"),
    "test": ("berlin", "bielefeld"),
}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def render_scene(seed: int, height: int = 256, width: int = 512) -> dict:
    """Arrays of one scene: image (HxWx3 uint8), label_ids (HxW uint8), instance_ids (HxW uint16), polygons."""
    rng = np.random.default_rng(seed)
    canvas = Canvas(height, width)
    draw_scene(canvas, rng)
    arrays = canvas.finish(rng)
    arrays["polygons"] = {"imgHeight": height, "imgWidth": width, "objects": canvas.objects}
    return arrays


def write_dataset(
    out: str | os.PathLike,
    counts: dict[str, int],
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    workers: int = 1,
) -> dict[str, int]:
    """Write `counts[split]` scenes per split under `out`; returns the counts written."""
    out = Path(out)
    for split in counts:
        if split not in CITIES:
            raise ConfigError(f"split: expected one of {', '.join(CITIES)}, got '{split}'")
    height, width = size
    if height < 32 or width < 32:
        raise ConfigError(f"size: expected at least 32x32, got {height}x{width}")
    jobs = [(out, split, i, seed, height, width) for split, n in counts.items() for i in range(n)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=4))
    else:
        for job in jobs:
            _write_one(job)
    return dict(counts)


def _write_one(job) -> None:
    out, split, index, seed, height, width = job
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index // len(cities):06d}_{19 + index:06d}"
    scene_seed = np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1)[0]
    scene = render_scene(int(scene_seed), height, width)
    image_dir, gt_dir = out / "leftImg8bit" / split / city, out / "gtFine" / split / city
    write_png(image_dir / f"{stem}_leftImg8bit.png", scene["image"])
    write_png(gt_dir / f"{stem}_gtFine_labelIds.png", scene["label_ids"])
    write_png(gt_dir / f"{stem}_gtFine_instanceIds.png", scene["instance_ids"])
    colour = cityscapes_color_image(scene["label_ids"])
    alpha = np.full(colour.shape[:2] + (1,), 255, np.uint8)
    write_png(gt_dir / f"{stem}_gtFine_color.png", np.concatenate([colour, alpha], axis=2))
    (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(scene["polygons"]))
