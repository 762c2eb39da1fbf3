"""Objects in the street, each a function that draws itself at a depth: poles, signs, traffic
lights, trees, fences, cars, trucks, buses, trams, motorcycles, bicycles, persons and riders.

Sizes are in metres and go through the camera, so every object has the scale its depth implies.
`street_furniture`, `traffic` and `people` return `(depth, draw)` pairs that the scene sorts far
to near before drawing, which is what makes partial occlusion come out right.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from .camera import Camera
from .canvas import Canvas, convex_hull, ellipse

Placed = list[tuple[float, Callable[[Canvas], None]]]


# ---------------------------------------------------------------- street furniture and greenery
def street_furniture(cam: Camera, street, rng: np.random.Generator) -> Placed:
    placed: Placed = []
    for x in (street.road_left - 0.5, street.road_right + 0.5):
        z = rng.uniform(3.0, 15.0)
        while z < 120:
            kind = rng.choice(["lamp", "sign", "light", "plain", "tree"], p=[0.3, 0.3, 0.15, 0.1, 0.15])
            placed.append((z, partial(_pole_with, kind, cam, x, z, np.sign(x), rng)))
            z += rng.uniform(10.0, 30.0)
    return placed


def _pole_with(kind: str, cam: Camera, x: float, z: float, side: float, rng: np.random.Generator, canvas: Canvas) -> None:
    if kind == "tree":
        tree(canvas, cam, x + side * 0.3, z, rng)
        return
    grey = (115, 115, 118) if rng.random() < 0.7 else (70, 80, 75)
    height = {"lamp": rng.uniform(6, 9), "sign": rng.uniform(2.6, 3.4), "light": rng.uniform(3.5, 5.0)}.get(kind, rng.uniform(3, 6))
    r = 0.08
    canvas.region("pole", cam.front(x - r, x + r, z, 0, height), grey)
    if kind == "lamp":
        arm = -side * rng.uniform(1.0, 2.5)
        canvas.region("pole", cam.front(min(x, x + arm), max(x, x + arm), z, height - 0.15, height), grey)
    elif kind == "sign":
        _sign(canvas, cam, x, z, height - 0.35, rng)
    elif kind == "light":
        box = cam.front(x - 0.18, x + 0.18, z, height - 0.05, height + 0.95)
        canvas.region("traffic light", box, (30, 32, 30))
        lit = int(rng.integers(3))
        for i, colour in enumerate([(230, 40, 30), (240, 170, 20), (40, 220, 90)]):
            cx, cy = cam.project(x, height + 0.75 - 0.3 * i, z)
            s = cam.scale(z) * 0.1
            canvas.paint(ellipse(cx, cy, s, s, 8), colour if i == lit else (45, 45, 40))


def _sign(canvas: Canvas, cam: Camera, x: float, z: float, y: float, rng: np.random.Generator) -> None:
    cx, cy = cam.project(x, y, z)
    s = cam.scale(z) * rng.uniform(0.3, 0.4)
    shape = rng.integers(3)
    if shape == 0:  # round prohibition sign
        canvas.region("traffic sign", ellipse(cx, cy, s, s, 16), (200, 30, 30))
        canvas.paint(ellipse(cx, cy, s * 0.75, s * 0.75, 16), (235, 235, 235))
    elif shape == 1:  # warning triangle
        canvas.region("traffic sign", [(cx, cy - s), (cx + s, cy + s * 0.8), (cx - s, cy + s * 0.8)], (200, 30, 30))
        canvas.paint([(cx, cy - s * 0.55), (cx + s * 0.6, cy + s * 0.55), (cx - s * 0.6, cy + s * 0.55)], (235, 235, 230))
    else:  # blue information sign
        canvas.region("traffic sign", [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)], (30, 70, 170))
        canvas.paint([(cx - s * 0.4, cy - s * 0.5), (cx + s * 0.4, cy - s * 0.5), (cx, cy + s * 0.5)], (235, 235, 235))


def tree(canvas: Canvas, cam: Camera, x: float, z: float, rng: np.random.Generator) -> None:
    """Trunk and crown, both 'vegetation' as Cityscapes labels them."""
    trunk, radius = rng.uniform(1.8, 3.5), rng.uniform(1.5, 3.5)
    canvas.region("vegetation", cam.front(x - 0.15, x + 0.15, z, 0, trunk + radius * 0.5), (75, 60, 45))
    cx, cy = cam.project(x, trunk + radius, z)
    r = cam.scale(z) * radius
    green = np.array([60, 95, 40]) + rng.uniform(-20, 25, size=3)
    canvas.region("vegetation", ellipse(cx, cy, r, r * 0.9, 20, 0.12, rng), green)
    for _ in range(4):  # lighter and darker clumps inside the crown
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * r
        canvas.paint(ellipse(cx + d * np.cos(a), cy + d * np.sin(a), r * 0.35, r * 0.3, 10), green * rng.uniform(0.7, 1.3))


def tree_row(canvas: Canvas, cam: Camera, x: float, z1: float, z2: float, rng: np.random.Generator) -> None:
    z = z2
    while z > z1:
        if rng.random() < 0.5:  # a hedge
            canvas.region("vegetation", cam.wall(x, z - 6, z, 0, rng.uniform(0.8, 1.6)), (55, 85, 35))
        tree(canvas, cam, x + rng.uniform(-1, 1), z, rng)
        z -= rng.uniform(4.0, 9.0)


def fence(canvas: Canvas, cam: Camera, x: float, z1: float, z2: float, rng: np.random.Generator) -> None:
    height = rng.uniform(0.9, 1.8)
    colour = np.array([120, 110, 95]) + rng.uniform(-25, 25, size=3)
    canvas.region("fence", cam.wall(x, z1, z2, 0, height), colour)
    z = z1
    while z < z2:  # posts
        canvas.paint_line([cam.project(x, 0, z), cam.project(x, height, z)], colour * 0.6, cam.scale(z) * 0.06)
        z += 0.4
    canvas.paint_line([cam.project(x, height * 0.9, z1), cam.project(x, height * 0.9, z2)], colour * 0.6, cam.scale(z1) * 0.06)


# ---------------------------------------------------------------- vehicles
def traffic(cam: Camera, street, rng: np.random.Generator) -> Placed:
    placed: Placed = []
    for lane in street.lanes():
        oncoming = lane < -1.0 and rng.random() < 0.7
        z = rng.uniform(5.0, 20.0)
        while z < 110:
            kind = rng.choice(["car", "truck", "bus", "motorcycle", "bicycle"], p=[0.68, 0.1, 0.1, 0.06, 0.06])
            placed.append((z, partial(_DRAW_VEHICLE[kind], cam, lane + rng.uniform(-0.4, 0.4), z, oncoming, rng)))
            z += rng.uniform(9.0, 35.0)
    for edge, side in ((street.road_left, -1), (street.road_right, 1)):  # parked cars
        if rng.random() < 0.55:
            z, end = rng.uniform(2.0, 15.0), rng.uniform(25.0, 80.0)
            while z < end:
                placed.append((z, partial(car, cam, edge - side * 1.1, z, False, rng)))
                z += rng.uniform(5.2, 9.0)
    if rng.random() < 0.12:  # a tram down the middle of the street
        z = rng.uniform(15.0, 60.0)
        placed.append((z, partial(tram, cam, (street.road_left + street.road_right) / 2, z, rng)))
    return placed


def _box(cam: Camera, x: float, z: float, width: float, length: float, y1: float, y2: float):
    return [cam.project(x + dx, y, z + dz) for dx in (-width / 2, width / 2) for y in (y1, y2) for dz in (0.0, length)]


def _vehicle(canvas: Canvas, cam: Camera, label: str, x: float, z: float, width: float, length: float,
             boxes: list, colour, oncoming: bool, rng: np.random.Generator) -> None:
    """A vehicle seen from behind (or from the front when oncoming): silhouette from its boxes,
    then faces, windows, wheels and lights painted on top."""
    corners = [p for (bx, bw, bz, bl, y1, y2) in boxes for p in _box(cam, x + bx, z + bz, bw, bl, y1, y2)]
    canvas.region(label, convex_hull(corners), colour, canvas.new_instance(label))
    near_side = x - width / 2 if x > 0 else x + width / 2
    y2 = boxes[0][5]  # height of the main body
    if abs(x) > width / 2:  # straight ahead, neither side shows
        canvas.paint(cam.wall(near_side, z, z + length, 0.3, y2), np.asarray(colour) * 0.8)  # side
        for dz in (length * 0.15, length * 0.85):  # wheels on the visible side
            cx, cy = cam.project(near_side, 0.33, z + dz)
            s = cam.scale(z + dz) * 0.33
            canvas.paint(ellipse(cx, cy, s * 0.45, s, 10), (20, 20, 22))
    canvas.paint(cam.front(x - width / 2, x + width / 2, z, 0.3, y2), colour)  # back (or front)
    canvas.paint(cam.front(x - width / 2, x + width / 2, z, 0.0, 0.3), (25, 25, 28))  # underbody and tyres
    lights = (235, 235, 200) if oncoming else (200, 20, 20)
    for lx in (x - width / 2 + 0.1, x + width / 2 - 0.35):
        canvas.paint(cam.front(lx, lx + 0.25, z, 0.75, 0.95), lights)


def car(cam: Camera, x: float, z: float, oncoming: bool, rng: np.random.Generator, canvas: Canvas) -> None:
    width, length = rng.uniform(1.7, 1.95), rng.uniform(4.0, 4.9)
    roof = rng.uniform(1.4, 1.65)
    colour = rng.choice(np.array([[30, 30, 35], [200, 200, 205], [120, 125, 130], [140, 30, 30], [30, 50, 110], [230, 230, 230]]))
    colour = np.clip(colour + rng.uniform(-15, 15, 3), 0, 255)
    boxes = [(0, width, 0, length, 0.0, 0.95), (0, width - 0.25, length * 0.25, length * 0.5, 0.95, roof)]
    _vehicle(canvas, cam, "car", x, z, width, length, boxes, colour, oncoming, rng)
    canvas.paint(cam.front(x - width / 2 + 0.2, x + width / 2 - 0.2, z + length * 0.25, 1.0, roof - 0.08), (45, 55, 65))


def truck(cam: Camera, x: float, z: float, oncoming: bool, rng: np.random.Generator, canvas: Canvas) -> None:
    width, length, height = 2.5, rng.uniform(6.5, 10.0), rng.uniform(3.0, 3.8)
    colour = np.array([200, 200, 195]) if rng.random() < 0.5 else rng.uniform(60, 220, 3)
    boxes = [(0, width, 0, length - 2.2, 0.0, height), (0, width, length - 2.2, 2.2, 0.0, 2.9)]
    _vehicle(canvas, cam, "truck", x, z, width, length, boxes, colour, oncoming, rng)
    canvas.paint_line([cam.project(x, 0.9, z), cam.project(x, height - 0.1, z)], colour * 0.6, cam.scale(z) * 0.05)


def bus(cam: Camera, x: float, z: float, oncoming: bool, rng: np.random.Generator, canvas: Canvas) -> None:
    width, length, height = 2.55, rng.uniform(11.0, 13.0), 3.1
    colour = rng.choice(np.array([[230, 200, 40], [200, 40, 40], [240, 240, 235], [40, 90, 160]]))
    _vehicle(canvas, cam, "bus", x, z, width, length, [(0, width, 0, length, 0.0, height)], colour, oncoming, rng)
    near_side = x - width / 2 if x > 0 else x + width / 2
    canvas.paint(cam.wall(near_side, z + 0.5, z + length - 0.5, 1.3, 2.6), (40, 50, 60))  # window band
    canvas.paint(cam.front(x - width / 2 + 0.2, x + width / 2 - 0.2, z, 1.5, 2.7), (40, 50, 60))


def tram(cam: Camera, x: float, z: float, rng: np.random.Generator, canvas: Canvas) -> None:
    """Cityscapes' 'train' class is mostly trams."""
    width, length, height = 2.4, rng.uniform(25.0, 32.0), 3.4
    colour = np.array([235, 235, 230]) if rng.random() < 0.6 else np.array([200, 40, 40])
    _vehicle(canvas, cam, "train", x, z, width, length, [(0, width, 0, length, 0.0, height)], colour, True, rng)
    for near_side in (x - width / 2, x + width / 2):
        canvas.paint(cam.wall(near_side, z + 1, z + length - 1, 1.2, 2.5), (45, 55, 65))
    canvas.paint(cam.front(x - 0.9, x + 0.9, z, 1.4, 2.8), (45, 55, 65))


def two_wheeler(cam: Camera, x: float, z: float, oncoming: bool, rng: np.random.Generator, canvas: Canvas,
                label: str = "bicycle", with_rider: bool = True) -> None:
    """A bicycle or motorcycle from behind (narrow) or crossing (side view), usually with its rider."""
    motor = label == "motorcycle"
    crossing = rng.random() < 0.35
    s = cam.scale(z)
    gx, gy = cam.project(x, 0, z)
    wheel = (0.32 if motor else 0.35) * s
    colour = rng.uniform(20, 200, 3)
    instance = canvas.new_instance(label)
    if crossing:
        half = (0.7 if motor else 0.55) * s
        for wx in (gx - half, gx + half):
            canvas.region(label, ellipse(wx, gy - wheel, wheel, wheel, 14), (25, 25, 25), instance)
            canvas.paint(ellipse(wx, gy - wheel, wheel * 0.7, wheel * 0.7, 14), (120, 120, 120))
        body = [(gx - half, gy - wheel), (gx, gy - wheel * (2.6 if motor else 2.3)), (gx + half, gy - wheel), (gx, gy - wheel * 0.9)]
        canvas.region(label, body, colour, instance)
        seat_y, rider_x = gy - wheel * 2.5, gx - 0.1 * s
    else:
        width = (0.75 if motor else 0.5)
        canvas.region(label, convex_hull(_box(cam, x, z, width, 1.8, 0.0, 1.05 if motor else 0.95)), colour, instance)
        canvas.paint(cam.front(x - 0.05, x + 0.05, z, 0.0, 0.7), (20, 20, 20))
        seat_y, rider_x = cam.project(x, 0.95, z)[1], gx
    if with_rider:
        _human(canvas, "rider", rider_x, seat_y, 1.75 * s, rng, seated=True)


def motorcycle(cam, x, z, oncoming, rng, canvas):
    two_wheeler(cam, x, z, oncoming, rng, canvas, label="motorcycle")


_DRAW_VEHICLE = {"car": car, "truck": truck, "bus": bus, "motorcycle": motorcycle, "bicycle": two_wheeler}


# ---------------------------------------------------------------- people
def people(cam: Camera, street, rng: np.random.Generator) -> Placed:
    placed: Placed = []
    for inner, outer in ((street.road_left, street.sidewalk_left), (street.road_right, street.sidewalk_right)):
        for _ in range(rng.poisson(4.0)):
            z, x = rng.uniform(3.0, 60.0), rng.uniform(min(inner, outer) + 0.3, max(inner, outer) - 0.3)
            placed.append((z, partial(person, cam, x, z, rng)))
        for _ in range(rng.poisson(0.4)):  # parked bicycles
            z, x = rng.uniform(4.0, 40.0), outer + np.sign(inner) * 0.6
            placed.append((z, partial(two_wheeler, cam, x, z, False, rng, label="bicycle", with_rider=False)))
    if street.crosswalk_z is not None:
        for _ in range(rng.poisson(2.5)):
            z = street.crosswalk_z + rng.uniform(0.5, 3.5)
            placed.append((z, partial(person, cam, rng.uniform(street.road_left, street.road_right), z, rng)))
    return placed


def person(cam: Camera, x: float, z: float, rng: np.random.Generator, canvas: Canvas) -> None:
    gx, gy = cam.project(x, 0.15, z)
    _human(canvas, "person", gx, gy, rng.uniform(1.55, 1.95) * cam.scale(z), rng)


def _human(canvas: Canvas, label: str, x: float, ground: float, height: float, rng: np.random.Generator,
           seated: bool = False) -> None:
    """A figure `height` pixels tall (standing) whose feet, or seat when seated, are at (x, ground)."""
    if height < 3:
        return
    h, instance = height, canvas.new_instance(label)
    shirt, trousers = rng.uniform(20, 230, 3), rng.uniform(20, 160, 3)
    skin = np.array([225, 185, 150]) * rng.uniform(0.45, 1.0)
    hip = ground if seated else ground - 0.5 * h
    shoulder_w, hip_w = 0.13 * h, 0.1 * h
    if seated:
        legs = [[(x - hip_w, hip), (x + hip_w, hip), (x + 0.05 * h, hip + 0.3 * h), (x - 0.05 * h, hip + 0.3 * h)]]
    else:
        stride = rng.uniform(0.0, 0.12) * h
        legs = [[(x + side * 0.02 * h, hip), (x + side * hip_w, hip), (x + side * (0.05 * h + stride), ground),
                 (x + side * stride * 0.5, ground)] for side in (-1, 1)]
    top = hip - 0.33 * h
    torso = [(x - hip_w, hip), (x + hip_w, hip), (x + shoulder_w, top + 0.03 * h), (x + shoulder_w * 0.6, top),
             (x - shoulder_w * 0.6, top), (x - shoulder_w, top + 0.03 * h)]
    for leg in legs:
        canvas.region(label, leg, trousers, instance)
    canvas.region(label, torso, shirt, instance)
    head = 0.065 * h
    canvas.region(label, ellipse(x, top - head * 1.05, head * 0.85, head, 12), skin, instance)
    canvas.paint(ellipse(x, top - head * 1.5, head * 0.85, head * 0.55, 10, start=np.pi, stop=2 * np.pi), skin * 0.4)
