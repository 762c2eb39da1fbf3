"""Pinhole camera over a flat street: world X right, Y up, Z forward (metres)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAREST_Z = 0.8  # points nearer than this are clamped so that polygons stay finite


@dataclass(frozen=True)
class Camera:
    focal: float  # pixels
    cx: float  # column of the vanishing point
    horizon: float  # row of the horizon
    height: float  # metres above the road
    width: int
    rows: int

    @classmethod
    def random(cls, rng: np.random.Generator, height: int, width: int) -> "Camera":
        return cls(
            focal=width * rng.uniform(0.9, 1.1),
            cx=width * rng.uniform(0.45, 0.55),
            horizon=height * rng.uniform(0.40, 0.47),
            height=rng.uniform(1.2, 1.6),
            width=width,
            rows=height,
        )

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        z = max(z, NEAREST_Z)
        return self.cx + self.focal * x / z, self.horizon - self.focal * (y - self.height) / z

    def quad(self, corners) -> list[tuple[float, float]]:
        return [self.project(*c) for c in corners]

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / max(z, NEAREST_Z)

    def nearest_visible_z(self) -> float:
        """Depth of the ground at the bottom image row."""
        return self.focal * self.height / max(self.rows - self.horizon, 1.0)

    def wall(self, x: float, z1: float, z2: float, y1: float, y2: float):
        """A vertical plane parallel to the road (a facade, a fence) between depths z1 and z2."""
        return self.quad([(x, y1, z1), (x, y2, z1), (x, y2, z2), (x, y1, z2)])

    def ground(self, x1: float, x2: float, z1: float, z2: float, y: float = 0.0):
        """A horizontal strip of the ground between two lateral positions."""
        return self.quad([(x1, y, z1), (x2, y, z1), (x2, y, z2), (x1, y, z2)])

    def front(self, x1: float, x2: float, z: float, y1: float, y2: float):
        """A vertical plane facing the camera (the back of a car, a facade across the street)."""
        return self.quad([(x1, y1, z), (x2, y1, z), (x2, y2, z), (x1, y2, z)])
