"""Sample lists: text files naming samples, one a line, that restrict a split to part of it.

`data.train_samples` and `data.val_samples` name such files; `urbanseg cv` writes one pair per
fold (`fold-I/train.txt`, `fold-I/val.txt`), so a fold's run is an ordinary run of an ordinary
config. Names are sample names (`aachen_000000_000019`, the file stem shared by image and mask).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from ..files import write_text
from .dataset import SegmentationDataset


def read_sample_list(path: str | os.PathLike) -> list[str]:
    """The names in a sample list (blank lines and `#` comments skipped), in file order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: sample list not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: unreadable sample list ({error})") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"{path}: the sample list names no samples")
    return names


def write_sample_list(path: str | os.PathLike, names: Iterable[str]) -> Path:
    return write_text(path, "".join(f"{name}\n" for name in names))


def restrict_to_list(dataset: SegmentationDataset, path: str | os.PathLike) -> SegmentationDataset:
    """`dataset` keeping only the samples a sample list names, in the dataset's own order; a name
    the split lacks is an error naming the list and the name."""
    wanted = read_sample_list(path)
    present = {sample.name for sample in dataset.samples}
    missing = [name for name in wanted if name not in present]
    if missing:
        raise DataError(f"{path}: names '{missing[0]}', which the split does not hold "
                        f"({len(missing)} such name{'s' if len(missing) > 1 else ''})")
    keep = set(wanted)
    dataset.samples = [sample for sample in dataset.samples if sample.name in keep]
    return dataset
