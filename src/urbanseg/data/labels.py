"""Label tables: Cityscapes and CamVid, each written once, and the lookup tables derived from them.

Everything else (datasets, losses, metrics, palettes, reports) reads classes from a `LabelSet`,
never from constants of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import ConfigError, DataError

IGNORE_INDEX = 255


class Label(NamedTuple):
    """One row of the Cityscapes label table, field for field as in `cityscapesscripts.helpers.labels`."""

    name: str
    id: int
    train_id: int
    category: str
    cat_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS: tuple[Label, ...] = (
    #     name                    id  trainId  category       catId  hasInst  ignoreEval  color
    Label("unlabeled",             0,   255,   "void",         0,    False,   True,   (0, 0, 0)),
    Label("ego vehicle",           1,   255,   "void",         0,    False,   True,   (0, 0, 0)),
    Label("rectification border",  2,   255,   "void",         0,    False,   True,   (0, 0, 0)),
    Label("out of roi",            3,   255,   "void",         0,    False,   True,   (0, 0, 0)),
    Label("static",                4,   255,   "void",         0,    False,   True,   (0, 0, 0)),
    Label("dynamic",               5,   255,   "void",         0,    False,   True,   (111, 74, 0)),
    Label("ground",                6,   255,   "void",         0,    False,   True,   (81, 0, 81)),
    Label("road",                  7,     0,   "flat",         1,    False,   False,  (128, 64, 128)),
    Label("sidewalk",              8,     1,   "flat",         1,    False,   False,  (244, 35, 232)),
    Label("parking",               9,   255,   "flat",         1,    False,   True,   (250, 170, 160)),
    Label("rail track",           10,   255,   "flat",         1,    False,   True,   (230, 150, 140)),
    Label("building",             11,     2,   "construction", 2,    False,   False,  (70, 70, 70)),
    Label("wall",                 12,     3,   "construction", 2,    False,   False,  (102, 102, 156)),
    Label("fence",                13,     4,   "construction", 2,    False,   False,  (190, 153, 153)),
    Label("guard rail",           14,   255,   "construction", 2,    False,   True,   (180, 165, 180)),
    Label("bridge",               15,   255,   "construction", 2,    False,   True,   (150, 100, 100)),
    Label("tunnel",               16,   255,   "construction", 2,    False,   True,   (150, 120, 90)),
    Label("pole",                 17,     5,   "object",       3,    False,   False,  (153, 153, 153)),
    Label("polegroup",            18,   255,   "object",       3,    False,   True,   (153, 153, 153)),
    Label("traffic light",        19,     6,   "object",       3,    False,   False,  (250, 170, 30)),
    Label("traffic sign",         20,     7,   "object",       3,    False,   False,  (220, 220, 0)),
    Label("vegetation",           21,     8,   "nature",       4,    False,   False,  (107, 142, 35)),
    Label("terrain",              22,     9,   "nature",       4,    False,   False,  (152, 251, 152)),
    Label("sky",                  23,    10,   "sky",          5,    False,   False,  (70, 130, 180)),
    Label("person",               24,    11,   "human",        6,    True,    False,  (220, 20, 60)),
    Label("rider",                25,    12,   "human",        6,    True,    False,  (255, 0, 0)),
    Label("car",                  26,    13,   "vehicle",      7,    True,    False,  (0, 0, 142)),
    Label("truck",                27,    14,   "vehicle",      7,    True,    False,  (0, 0, 70)),
    Label("bus",                  28,    15,   "vehicle",      7,    True,    False,  (0, 60, 100)),
    Label("caravan",              29,   255,   "vehicle",      7,    True,    True,   (0, 0, 90)),
    Label("trailer",              30,   255,   "vehicle",      7,    True,    True,   (0, 0, 110)),
    Label("train",                31,    16,   "vehicle",      7,    True,    False,  (0, 80, 100)),
    Label("motorcycle",           32,    17,   "vehicle",      7,    True,    False,  (0, 0, 230)),
    Label("bicycle",              33,    18,   "vehicle",      7,    True,    False,  (119, 11, 32)),
    Label("license plate",        -1,    -1,   "vehicle",      7,    False,   True,   (0, 0, 142)),
)
# fmt: on
# Source: cityscapesscripts/helpers/labels.py (github.com/mcordts/cityscapesScripts), checked in tests.

CITYSCAPES_BY_NAME: dict[str, Label] = {label.name: label for label in CITYSCAPES_LABELS}
CITYSCAPES_BY_ID: dict[int, Label] = {label.id: label for label in CITYSCAPES_LABELS}

# CamVid, 11-class version of the SegNet tutorial: index masks 0..10, 11 = void.
CAMVID_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("sky", (128, 128, 128)),
    ("building", (128, 0, 0)),
    ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)),
    ("sidewalk", (60, 40, 222)),
    ("tree", (128, 128, 0)),
    ("sign", (192, 128, 128)),
    ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)),
    ("bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11


@dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts and how raw mask values map onto them.

    `raw_to_train[v]` is the class index (or `ignore_index`) of raw mask value `v`;
    `known_raw[v]` says whether `v` may appear in a mask at all (anything else is an error).
    """

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (num_classes, 3) uint8, RGB
    raw_to_train: np.ndarray  # (256,) uint8 lookup table
    known_raw: np.ndarray  # (256,) bool
    ignore_index: int = IGNORE_INDEX
    categories: tuple[str, ...] = field(default=())  # category of each class, when the dataset has them
    train_to_raw: np.ndarray | None = None  # (num_classes,) raw value written for each class in submissions

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def encode(self, raw_mask: np.ndarray, source: str = "mask") -> np.ndarray:
        """Map raw mask values to class indices; unknown values raise naming `source`."""
        if raw_mask.dtype != np.uint8:
            if raw_mask.size and (raw_mask.min() < 0 or raw_mask.max() > 255):
                raise DataError(f"{source}: label values outside 0..255 (got {raw_mask.min()}..{raw_mask.max()})")
            raw_mask = raw_mask.astype(np.uint8)
        unknown = ~self.known_raw[raw_mask]
        if unknown.any():
            values = sorted(int(v) for v in np.unique(raw_mask[unknown]))
            raise DataError(f"{source}: unknown label values {values[:10]} for label set '{self.name}'")
        return self.raw_to_train[raw_mask]

    def to_dict(self) -> dict:
        """Plain lists and strings (JSON- and `weights_only`-safe), for checkpoints and exported models."""
        return {
            "name": self.name, "class_names": list(self.class_names), "palette": self.palette.tolist(),
            "raw_to_train": self.raw_to_train.tolist(), "known_raw": self.known_raw.tolist(),
            "ignore_index": self.ignore_index, "categories": list(self.categories),
            "train_to_raw": None if self.train_to_raw is None else self.train_to_raw.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSet":
        """The LabelSet `to_dict` described, identical field for field."""
        return cls(
            name=data["name"], class_names=tuple(data["class_names"]), palette=np.array(data["palette"], np.uint8),
            raw_to_train=np.array(data["raw_to_train"], np.uint8), known_raw=np.array(data["known_raw"], bool),
            ignore_index=int(data["ignore_index"]), categories=tuple(data["categories"]),
            train_to_raw=None if data["train_to_raw"] is None else np.array(data["train_to_raw"], np.uint8),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.to_dict() == other.to_dict()

    def colorize(self, class_mask: np.ndarray) -> np.ndarray:
        """RGB image of a class-index mask; ignored pixels are black."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = self.palette
        return table[class_mask]


def cityscapes_label_set(classes: str | Mapping[str, Sequence[str]] = "official") -> LabelSet:
    """Label set over Cityscapes labelIds.

    `classes` is `"official"` (the 19 benchmark classes), `"all"` (every non-void label with
    id >= 7 as its own class, 27 classes), or a mapping `{class name: [cityscapes label names]}`
    that merges labels into classes in the order given; labels not named are ignored. So dropping
    rare classes or keeping more of them is configuration, not code.
    """
    if isinstance(classes, str):
        if classes == "official":
            train_labels = sorted((l for l in CITYSCAPES_LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id)
        elif classes == "all":
            train_labels = [l for l in CITYSCAPES_LABELS if l.id >= 7]
        else:
            raise ConfigError(f"data.classes: expected 'official', 'all' or a mapping, got '{classes}'")
        groups = {l.name: [l.name] for l in train_labels}
    else:
        groups = {str(k): list(v) for k, v in classes.items()}

    raw_to_train = np.full(256, IGNORE_INDEX, np.uint8)
    known_raw = np.zeros(256, bool)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            known_raw[label.id] = True
    names, palette, categories, train_to_raw = [], [], [], []
    for index, (class_name, members) in enumerate(groups.items()):
        if not members:
            raise ConfigError(f"data.classes.{class_name}: lists no Cityscapes labels")
        for member in members:
            label = CITYSCAPES_BY_NAME.get(member)
            if label is None or label.id < 0:
                raise ConfigError(f"data.classes.{class_name}: unknown Cityscapes label '{member}'")
            if raw_to_train[label.id] != IGNORE_INDEX:
                raise ConfigError(f"data.classes.{class_name}: label '{member}' is already in another class")
            raw_to_train[label.id] = index
        first = CITYSCAPES_BY_NAME[members[0]]
        names.append(class_name)
        palette.append(first.color)
        categories.append(first.category)
        train_to_raw.append(first.id)
    if len(names) >= IGNORE_INDEX:
        raise ConfigError(f"data.classes: at most {IGNORE_INDEX - 1} classes, got {len(names)}")
    return LabelSet(
        name="cityscapes",
        class_names=tuple(names),
        palette=np.array(palette, np.uint8),
        raw_to_train=raw_to_train,
        known_raw=known_raw,
        categories=tuple(categories),
        train_to_raw=np.array(train_to_raw, np.uint8),
    )


def camvid_label_set() -> LabelSet:
    """The common 11-class CamVid set; mask value 11 (void) is ignored."""
    raw_to_train = np.full(256, IGNORE_INDEX, np.uint8)
    raw_to_train[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES))
    known_raw = np.zeros(256, bool)
    known_raw[: CAMVID_VOID + 1] = True
    return LabelSet(
        name="camvid",
        class_names=tuple(name for name, _ in CAMVID_CLASSES),
        palette=np.array([color for _, color in CAMVID_CLASSES], np.uint8),
        raw_to_train=raw_to_train,
        known_raw=known_raw,
        train_to_raw=np.arange(len(CAMVID_CLASSES), dtype=np.uint8),
    )


def folder_label_set(
    classes: Sequence[str], ignore_index: int = IGNORE_INDEX, palette: Sequence[Sequence[int]] | None = None
) -> LabelSet:
    """Label set of a generic folder: mask value i is class i, `ignore_index` is ignored."""
    n = len(classes)
    if n == 0 or n >= 256:
        raise ConfigError(f"classes: expected 1..255 class names, got {n}")
    if not 0 <= ignore_index <= 255 or ignore_index < n:
        raise ConfigError(f"ignore_index: expected a value in {n}..255 (not a class index), got {ignore_index}")
    if palette is None:
        palette = default_palette(n)
    elif len(palette) != n:
        raise ConfigError(f"palette: expected {n} colours (one per class), got {len(palette)}")
    raw_to_train = np.full(256, IGNORE_INDEX, np.uint8)
    raw_to_train[:n] = np.arange(n)
    known_raw = np.zeros(256, bool)
    known_raw[:n] = True
    known_raw[ignore_index] = True
    return LabelSet(
        name="folder",
        class_names=tuple(classes),
        palette=np.asarray(palette, np.uint8).reshape(n, 3),
        raw_to_train=raw_to_train,
        known_raw=known_raw,
        train_to_raw=np.arange(n, dtype=np.uint8),
    )


def default_palette(n: int) -> np.ndarray:
    """Distinct colours for n classes (the PASCAL VOC bit-interleaving scheme)."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def cityscapes_color_image(label_ids: np.ndarray) -> np.ndarray:
    """RGB colour image of a labelIds mask, as in `*_gtFine_color.png`."""
    table = np.zeros((256, 3), np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            table[label.id] = label.color
    return table[label_ids]
