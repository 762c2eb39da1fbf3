"""A drawing surface that keeps the photo, the label ids, the instance ids and the polygons in step.

Labels are drawn exactly as cityscapesscripts' `json2labelImg` draws them: PIL polygons with
integer vertices, filled in list order. So the `*_gtFine_polygons.json` we write rasterises, with
the official tool, to the very `*_gtFine_labelIds.png` we write, and `labelTrainIds` made by the
official tool can be compared pixel for pixel with ours.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..labels import CITYSCAPES_BY_NAME

Point = tuple[float, float]

# Per-label texture strength (std of added noise, fine and coarse), by Cityscapes label id.
_FINE_NOISE = np.full(256, 4.0, np.float32)
_COARSE_NOISE = np.full(256, 3.0, np.float32)
for _name, _fine, _coarse in (
    ("road", 5, 6), ("sidewalk", 7, 5), ("building", 6, 8), ("vegetation", 22, 18),
    ("terrain", 14, 12), ("sky", 1.5, 4), ("wall", 6, 6), ("fence", 5, 4),
):
    _FINE_NOISE[CITYSCAPES_BY_NAME[_name].id] = _fine
    _COARSE_NOISE[CITYSCAPES_BY_NAME[_name].id] = _coarse


class Canvas:
    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.rgb = Image.new("RGB", (width, height), (0, 0, 0))
        self.ids = Image.new("L", (width, height), CITYSCAPES_BY_NAME["unlabeled"].id)
        self.instances = Image.new("I", (width, height), 0)
        self._draw_rgb = ImageDraw.Draw(self.rgb)
        self._draw_ids = ImageDraw.Draw(self.ids)
        self._draw_instances = ImageDraw.Draw(self.instances)
        self.objects: list[dict] = []
        self._instance_count: dict[int, int] = defaultdict(int)

    def new_instance(self, label: str) -> int:
        """Cityscapes instance id for a new object of a 'thing' class: labelId * 1000 + running index."""
        label_id = CITYSCAPES_BY_NAME[label].id
        index = self._instance_count[label_id]
        self._instance_count[label_id] += 1
        return label_id * 1000 + index

    def region(self, label: str, polygon: Sequence[Point], color, instance: Optional[int] = None) -> None:
        """A labelled polygon: drawn into the photo (flat colour), the label and instance maps, and the JSON."""
        points = self._visible_points(polygon)
        if points is None:
            return
        label_id = CITYSCAPES_BY_NAME[label].id
        self._draw_ids.polygon(points, fill=label_id)
        self._draw_instances.polygon(points, fill=instance if instance is not None else label_id)
        self._draw_rgb.polygon(points, fill=_rgb(color))
        self.objects.append({"label": label, "polygon": [list(p) for p in points]})

    def paint(self, polygon: Sequence[Point], color) -> None:
        """Photo-only detail (windows, lane markings, lights): the labels do not change."""
        points = self._visible_points(polygon)
        if points is not None:
            self._draw_rgb.polygon(points, fill=_rgb(color))

    def paint_line(self, points: Sequence[Point], color, width: float) -> None:
        if width >= 0.7:
            self._draw_rgb.line([(round(x), round(y)) for x, y in points], fill=_rgb(color), width=max(1, round(width)))

    def _visible_points(self, polygon: Sequence[Point]) -> Optional[list[tuple[int, int]]]:
        points = [(int(round(x)), int(round(y))) for x, y in polygon]
        if len(points) < 3:
            return None
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if max(xs) < 0 or max(ys) < 0 or min(xs) >= self.width or min(ys) >= self.height:
            return None
        if len(set(points)) < 3:
            return None
        return points

    def finish(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Texture, lighting, blur and sensor noise on the photo; return all arrays."""
        ids = np.asarray(self.ids)
        photo = np.asarray(self.rgb).astype(np.float32)
        h, w = ids.shape
        fine = rng.standard_normal((h, w), dtype=np.float32)
        coarse = cv2.resize(rng.standard_normal((h // 8 + 1, w // 8 + 1), dtype=np.float32), (w, h))
        texture = fine * _FINE_NOISE[ids] + coarse * _COARSE_NOISE[ids]
        photo += texture[..., None] * rng.uniform(0.7, 1.3, size=3).astype(np.float32)

        sky = ids == CITYSCAPES_BY_NAME["sky"].id
        row_gain = np.linspace(0.85, 1.1, h, dtype=np.float32)  # sky darkens towards the zenith
        photo[sky] *= row_gain[np.nonzero(sky)[0], None]

        gain = rng.uniform(0.65, 1.25)  # overall exposure: dusk to bright noon
        cast = rng.uniform(0.92, 1.08, size=3)  # colour temperature
        photo = photo * gain * cast
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        radius = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 4
        photo *= (1.0 - rng.uniform(0.0, 0.25) * radius)[..., None]  # lens vignetting
        if rng.random() < 0.35:
            photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.4, 1.2) * max(1.0, w / 1024))
        photo += rng.standard_normal(photo.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
        image = np.clip(photo, 0, 255).astype(np.uint8)
        return {
            "image": image,
            "label_ids": ids.copy(),
            "instance_ids": np.asarray(self.instances).astype(np.uint16),
        }


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16, jitter: float = 0.0,
            rng: Optional[np.random.Generator] = None, start: float = 0.0, stop: float = 2 * math.pi) -> list[Point]:
    """Points on an ellipse (or an arc of it), optionally with radial jitter for organic shapes."""
    points = []
    closed = abs(stop - start - 2 * math.pi) < 1e-9
    for i in range(n):
        t = start + (stop - start) * i / (n if closed else n - 1)
        r = 1.0 + (rng.uniform(-jitter, jitter) if jitter and rng is not None else 0.0)
        points.append((cx + rx * r * math.cos(t), cy + ry * r * math.sin(t)))
    return points


def convex_hull(points: Iterable[Point]) -> list[Point]:
    """Monotone-chain convex hull (for vehicle silhouettes from projected box corners)."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _rgb(color) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c)))) for c in color)
