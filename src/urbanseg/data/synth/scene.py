"""One procedural street scene: the static street (sky, skyline, road, sidewalks, roadside) and
the things on it, drawn back to front so nearer objects occlude farther ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import things
from .camera import Camera
from .canvas import Canvas, ellipse

FAR_Z = 220.0  # where the street ends in a skyline
LANE = 3.5


@dataclass
class Street:
    """Lateral layout in metres (negative = left of the camera)."""

    road_left: float
    road_right: float
    sidewalk_left: float  # outer edge of the left sidewalk
    sidewalk_right: float
    line_left: float  # building line
    line_right: float
    crosswalk_z: float | None

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Street":
        lanes_left, lanes_right = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        road_left = -LANE * (lanes_left - 0.5) - rng.uniform(0.0, 0.6)
        road_right = LANE * (lanes_right + 0.5) + rng.uniform(0.0, 0.6)
        sidewalk_left = road_left - rng.uniform(2.0, 5.0)
        sidewalk_right = road_right + rng.uniform(2.0, 5.0)
        terrain = rng.uniform(1.0, 5.0, size=2) * (rng.random(2) < 0.5)
        return cls(
            road_left, road_right, sidewalk_left, sidewalk_right,
            line_left=sidewalk_left - terrain[0], line_right=sidewalk_right + terrain[1],
            crosswalk_z=rng.uniform(9.0, 30.0) if rng.random() < 0.3 else None,
        )

    def lanes(self) -> list[float]:
        """Lane centres."""
        centres, x = [], self.road_left + LANE / 2
        while x + LANE / 2 <= self.road_right + 0.7:
            centres.append(x)
            x += LANE
        return centres


def draw_scene(canvas: Canvas, rng: np.random.Generator) -> None:
    cam = Camera.random(rng, canvas.height, canvas.width)
    street = Street.random(rng)
    draw_sky_and_skyline(canvas, cam, rng)
    draw_ground(canvas, cam, street, rng)
    for side in (-1, 1):
        draw_roadside(canvas, cam, street, side, rng)
    placed = things.street_furniture(cam, street, rng) + things.traffic(cam, street, rng) + things.people(cam, street, rng)
    for _, draw in sorted(placed, key=lambda item: -item[0]):
        draw(canvas)
    draw_ego_hood(canvas, rng)


def draw_sky_and_skyline(canvas: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    w, h = canvas.width, canvas.height
    overcast = rng.random()
    sky = np.array([85, 140, 200]) * (1 - overcast) + np.array([190, 195, 200]) * overcast
    canvas.region("sky", [(0, 0), (w, 0), (w, h), (0, h)], sky)
    ground = cam.project(0, 0, FAR_Z)[1]
    canvas.region("terrain", [(0, ground), (w, ground), (w, h), (0, h)], (95, 120, 70))
    x = -FAR_Z
    while x < FAR_Z:  # a row of distant buildings and trees across the end of the street
        span = rng.uniform(8.0, 30.0)
        if rng.random() < 0.65:
            canvas.region("building", cam.front(x, x + span, FAR_Z, 0, rng.uniform(6, 35)), _facade_colour(rng) * 0.9)
        else:
            cx, top = cam.project(x + span / 2, rng.uniform(6, 12), FAR_Z)
            r = cam.scale(FAR_Z) * span / 2
            canvas.region("vegetation", ellipse(cx, top, r, r * 0.8, 12, 0.15, rng) + [(cx + r, ground), (cx - r, ground)],
                          (70, 95, 45))
        x += span


def draw_ground(canvas: Canvas, cam: Camera, street: Street, rng: np.random.Generator) -> None:
    near = 0.5
    for x_out, x_in in ((street.line_left, street.sidewalk_left), (street.sidewalk_right, street.line_right)):
        if abs(x_out - x_in) > 0.01:
            canvas.region("terrain", cam.ground(x_out, x_in, near, FAR_Z), _jitter(rng, (110, 140, 75), 20))
    paving = _jitter(rng, (150, 145, 140), 20)
    curb_height = 0.15
    for x_out, x_in in ((street.sidewalk_left, street.road_left), (street.road_right, street.sidewalk_right)):
        canvas.region("sidewalk", cam.ground(x_out, x_in, near, FAR_Z, curb_height), paving)
        edge = street.road_left if x_in == street.road_left else street.road_right
        canvas.region("sidewalk", cam.wall(edge, near, FAR_Z, 0, curb_height), paving * 1.15)  # curb face
        z = 1.0
        while z < 40:  # paving joints
            a, b = cam.project(x_out, curb_height, z), cam.project(x_in, curb_height, z)
            canvas.paint_line([a, b], paving * 0.8, cam.scale(z) * 0.04)
            z += 1.5
    asphalt = _jitter(rng, (82, 80, 84), 12)
    canvas.region("road", cam.ground(street.road_left, street.road_right, near, FAR_Z), asphalt)
    draw_markings(canvas, cam, street, rng)


def draw_markings(canvas: Canvas, cam: Camera, street: Street, rng: np.random.Generator) -> None:
    white = (225, 225, 215) if rng.random() < 0.8 else (215, 190, 60)
    width = 0.15
    for edge in (street.road_left + 0.3, street.road_right - 0.3):
        canvas.paint(cam.ground(edge - width / 2, edge + width / 2, 0.5, FAR_Z), white)
    x = street.road_left + LANE
    while x < street.road_right - 1.0:
        z = rng.uniform(0.0, 9.0)
        while z < 120:
            if cam.scale(z) * 3.0 >= 1.0:
                canvas.paint(cam.ground(x - width / 2, x + width / 2, z, z + 3.0), white)
            z += 9.0
        x += LANE
    if street.crosswalk_z is not None:
        z = street.crosswalk_z
        x = street.road_left + 0.3
        while x < street.road_right - 0.5:
            canvas.paint(cam.ground(x, x + 0.5, z, z + 4.0), white)
            x += 1.0


def draw_roadside(canvas: Canvas, cam: Camera, street: Street, side: int, rng: np.random.Generator) -> None:
    """Buildings, walls, hedges and trees along one building line, drawn far to near."""
    line = street.line_right if side > 0 else street.line_left
    segments, z = [], rng.uniform(-5.0, 3.0)
    while z < FAR_Z:
        length = rng.uniform(8.0, 28.0) * (1 + z / 80)
        segments.append((z, z + length, rng.choice(["building", "trees", "wall", "open"], p=[0.62, 0.2, 0.08, 0.1])))
        z += length + (rng.uniform(2.0, 8.0) if rng.random() < 0.3 else 0.0)
    shade = rng.uniform(0.75, 1.0)  # the sunny and the shady side of the street
    for z1, z2, kind in reversed(segments):
        if kind == "building":
            draw_building(canvas, cam, line, side, z1, z2, shade, rng)
        elif kind == "trees":
            things.tree_row(canvas, cam, line + side * rng.uniform(0.5, 3.0), z1, z2, rng)
        elif kind == "wall":
            things.tree_row(canvas, cam, line + side * 3.0, z1, z2, rng)
            canvas.region("wall", cam.wall(line, z1, z2, 0, rng.uniform(1.2, 3.0)), _jitter(rng, (160, 150, 135), 30) * shade)
    if rng.random() < 0.3:  # a fence along the outer edge of the sidewalk
        z1 = rng.uniform(2.0, 30.0)
        things.fence(canvas, cam, street.sidewalk_left if side < 0 else street.sidewalk_right, z1, z1 + rng.uniform(10, 60), rng)


def draw_building(canvas: Canvas, cam: Camera, line: float, side: int, z1: float, z2: float,
                  shade: float, rng: np.random.Generator) -> None:
    height = rng.uniform(6.0, 28.0)
    colour = _facade_colour(rng) * shade
    depth = line + side * 15.0
    canvas.region("building", cam.quad([(line, 0, z1), (line, height, z1), (depth, height, z1), (depth, 0, z1)]), colour * 0.8)
    canvas.region("building", cam.wall(line, z1, z2, 0, height), colour)
    glass = _jitter(rng, (60, 70, 85), 20)
    if cam.scale(z1) * 3.0 < 2.0:
        return  # too far for windows to show
    storey, bay = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.5)
    canvas.paint(cam.wall(line, z1, z2, 0, min(height, 3.2)), colour * 0.7)  # ground-floor shop band
    floor = 4.0
    while floor + 1.6 < height:
        z = z1 + 0.8
        while z + 1.3 < z2:
            if cam.scale(z) * 1.3 >= 1.5:
                lit = rng.random() < 0.1
                canvas.paint(cam.wall(line, z, z + 1.3, floor, floor + 1.6), (200, 180, 120) if lit else glass)
            z += bay
        floor += storey


def draw_ego_hood(canvas: Canvas, rng: np.random.Generator) -> None:
    """The bonnet of the recording car along the bottom edge, labelled 'ego vehicle' as in Cityscapes."""
    w, h = canvas.width, canvas.height
    top = h * rng.uniform(0.86, 0.93)
    curve = [(x, top + (h - top) * 0.6 * ((2 * x / w - 1) ** 2)) for x in np.linspace(-0.05 * w, 1.05 * w, 17)]
    colour = _jitter(rng, (40, 40, 45), 25)
    canvas.region("ego vehicle", curve + [(1.05 * w, h + 1), (-0.05 * w, h + 1)], colour)
    reflection = [(x, y + (h - top) * 0.15) for x, y in curve[5:12]]
    canvas.paint_line(reflection, colour + 50, (h - top) * 0.08)


def _facade_colour(rng: np.random.Generator) -> np.ndarray:
    palette = np.array([[150, 140, 125], [175, 160, 135], [130, 80, 65], [200, 195, 185], [110, 110, 115], [160, 120, 90]])
    return _jitter(rng, palette[rng.integers(len(palette))], 20)


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, size=3), 0, 255)
