"""`urbanseg prepare cityscapes`: check a Cityscapes tree, optionally write trainId labels and fill
the decoded-array cache, and say clearly what is wrong with it."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from .cache import DecodedCache, DirectLoader
from .cityscapes import LABEL_SUFFIX, SPLITS, TRAIN_ID_SUFFIX, find_pairs
from .io import DataError, read_mask, write_png
from .labels import cityscapes_label_set


@dataclass
class CityscapesReport:
    root: Path
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (split, city) -> paired samples
    problems: list[str] = field(default_factory=list)
    train_ids_written: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.counts)

    def format(self) -> str:
        lines = [f"Cityscapes at {self.root}", f"{'split':<7}{'city':<22}{'pairs':>7}"]
        for split in SPLITS:
            cities = sorted(c for s, c in self.counts if s == split)
            for city in cities:
                lines.append(f"{split:<7}{city:<22}{self.counts[split, city]:>7}")
            if cities:
                total = sum(self.counts[split, c] for c in cities)
                lines.append(f"{split:<7}{'(all ' + str(len(cities)) + ' cities)':<22}{total:>7}")
        if not self.counts:
            lines.append("no image/label pairs found under leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/")
        if self.train_ids_written:
            lines.append(f"wrote {self.train_ids_written} *{TRAIN_ID_SUFFIX} files")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("no problems found" if self.counts else "")
        return "\n".join(line for line in lines if line)


def check_cityscapes(
    root: str | os.PathLike,
    write_train_ids: bool = False,
    cache_dir: Optional[str | os.PathLike] = None,
    cache_size: Optional[tuple[int, int]] = None,
    progress: bool = True,
) -> CityscapesReport:
    """Decode every image and label of every split and report counts and problems."""
    root = Path(root)
    report = CityscapesReport(root)
    if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
        report.problems.append(f"{root}: expected folders leftImg8bit/ and gtFine/ (is this a Cityscapes root?)")
        return report
    labels = cityscapes_label_set("official")
    loader = DecodedCache(cache_dir, cache_size) if cache_dir else DirectLoader()
    for split in SPLITS:
        samples, unpaired_images, unpaired_labels = find_pairs(root, split)
        report.problems += [f"{p}: no matching {LABEL_SUFFIX}" for p in unpaired_images]
        report.problems += [f"{p}: no matching image in leftImg8bit/{split}" for p in unpaired_labels]
        report.counts.update(Counter((split, s.group) for s in samples))
        for sample in tqdm(samples, desc=f"checking {split}", disable=not progress or not samples, leave=False):
            try:
                _, raw = loader.pair(sample.image, sample.mask)
                if raw.ndim != 2:
                    raise DataError(f"{sample.mask}: expected a single-channel labelIds image")
                train_ids = labels.encode(np.asarray(raw), source=str(sample.mask))
                if write_train_ids:
                    if loader.size is not None:  # the cache holds a resized copy; trainIds stay full size
                        train_ids = labels.encode(read_mask(sample.mask), source=str(sample.mask))
                    write_png(str(sample.mask)[: -len(LABEL_SUFFIX)] + TRAIN_ID_SUFFIX, train_ids)
                    report.train_ids_written += 1
            except (DataError, ValueError) as error:
                report.problems.append(str(error))
    return report
