"""Tiny training configs for engine tests (CPU, 64x128 generated scenes, a 4-channel U-Net), and a tiny CamVid tree."""
from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import numpy as np

from urbanseg.config import load_config
from urbanseg.data.io import write_png

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(root, *extra: str) -> list[str]:
    return [
        f"data.root={root}", "data.crop=[64, 128]", "data.scale=[1.0, 1.0]", "data.batch_size=4",
        "data.val_batch_size=2", "data.workers=0", "data.color_jitter=0.0",
        "model.name=unet_scratch", "model.options={base_channels: 4}",
        "optim.name=adamw", "optim.lr=0.01", "schedule.name=constant",
        "trainer.precision=fp32", "trainer.log_every=1", "trainer.max_epochs=null", *extra,
    ]


def tiny_config(root, *extra: str):
    return load_config(None, tiny_overrides(root, *extra))


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    kwargs.setdefault("cwd", REPO)  # README commands name recipes relative to the checkout
    return subprocess.run([sys.executable, "-m", "urbanseg", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


class SetClock:
    """A stand-in for the `time` module that engine/run_length.py reads: it says `now`, which the
    test sets."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class TickClock:
    """A stand-in for the `time` module that engine/run_length.py reads: every reading is `tick`
    seconds after the previous one, so a budget is spent after a fixed number of steps however busy
    the machine is (run_length reads the clock a fixed number of times per step)."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def write_camvid(root, counts: dict, size: tuple, seed: int = 0) -> None:
    """A CamVid tree in the SegNet layout of random images and labels (0..11, 11 = void):
    `counts[split]` pairs named 0001TP_000000.png, ... of `size` (height, width) per split."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for i in range(count):
            write_png(Path(root) / split / f"0001TP_{i:06d}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            write_png(Path(root) / f"{split}annot" / f"0001TP_{i:06d}.png", rng.integers(0, 12, size, dtype=np.uint8))
