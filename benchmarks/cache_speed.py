"""Samples/s reading Cityscapes-size PNGs with and without the decoded-array cache.

    python benchmarks/cache_speed.py [--images 24] [--root DIR]

Generates 2048x1024 procedural scenes (unless --root points at a Cityscapes tree), then reads
every (image, mask) pair through `Cityscapes` three times per setting: decoding PNGs, filling the
cache (first epoch) and reading from the cache (later epochs). Measures, asserts nothing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from urbanseg.data import Cityscapes, DecodedCache, DirectLoader
from urbanseg.data.synth import write_dataset


def epoch(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        image, mask = dataset[i]
        np.asarray(image).sum(dtype=np.uint64)  # touch every pixel, as a transform would
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "cityscapes"
            start = time.perf_counter()
            write_dataset(root, {"train": args.images}, size=(1024, 2048), workers=2)
            print(f"generated {args.images} scenes at 2048x1024 in {time.perf_counter() - start:.1f} s")
        print(f"{'setting':<44}{'samples/s':>10}")
        for size in (None, (512, 1024)):
            label = "full 2048x1024" if size is None else f"downscaled to {size[1]}x{size[0]}"
            direct = Cityscapes(root, "train", loader=DirectLoader(size))
            print(f"{'decode PNG, ' + label:<44}{epoch(direct):>10.1f}")
            cached = Cityscapes(root, "train", loader=DecodedCache(Path(tmp) / f"cache{size}", size))
            print(f"{'cache, first epoch, ' + label:<44}{epoch(cached):>10.1f}")
            print(f"{'cache, later epochs, ' + label:<44}{epoch(cached):>10.1f}")


if __name__ == "__main__":
    main()
