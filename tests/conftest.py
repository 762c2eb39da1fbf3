"""Shared fixtures: a tiny generated Cityscapes tree (session-wide, read-only) and fresh copies.

`make test` runs the suite in one pytest-xdist worker per core (at most 4). Each worker gets an
equal share of the cores for torch, and so do the processes a test starts (OMP_NUM_THREADS), so
that workers do not oversubscribe the machine. The longest tests come first and workers that run
out of tests take the last ones queued for others (`--dist worksteal`), so none idles at the end.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    import torch

    torch.set_num_threads(_THREADS)

from urbanseg.data.synth import write_dataset

TINY_SIZE = (64, 128)


def pytest_collection_modifyitems(items):
    """The longest test first, then the other slow ones, then the rest (a stable sort: otherwise in
    file order), so that under xdist a long test never starts last while the other workers idle."""
    items.sort(key=lambda item: (item.get_closest_marker("longest") is None, item.get_closest_marker("slow") is None))


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory) -> Path:
    """A generated Cityscapes tree: 8 train (4 cities), 5 val (odd on purpose), 2 test images at 64x128. Do not modify."""
    root = tmp_path_factory.mktemp("cityscapes")
    write_dataset(root, {"train": 8, "val": 5, "test": 2}, size=TINY_SIZE, seed=7)
    return root


@pytest.fixture
def cityscapes_copy(cityscapes_root, tmp_path) -> Path:
    """A private copy of the tiny tree that a test may damage."""
    copy = tmp_path / "cityscapes"
    shutil.copytree(cityscapes_root, copy)
    return copy


@pytest.fixture(scope="session")
def tiny_checkpoint(cityscapes_root, tmp_path_factory) -> Path:
    """best.pt of a 4-channel U-Net trained for 6 steps on the tiny tree (crop = the full 64x128)."""
    from engine_helpers import tiny_config

    from urbanseg.engine.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(tiny_config(cityscapes_root, "trainer.max_steps=6", "trainer.eval_every=6", "trainer.sample_images=1"), run)
    return run / "checkpoints" / "best.pt"
