"""Checkpoints: written atomically, read without executing pickled code.

A checkpoint holds everything needed to continue a run at the same step (model, optimizer,
schedule, grad scaler, EMA weights, step/epoch, RNG states) and to use the model on its own
(the resolved config and the label set: class names, palette, ignore index).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` to `path` via a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, not a torch file at all
        raise ValueError(f"{path}: not a readable urbanseg checkpoint ({error.__class__.__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not an urbanseg checkpoint (no model weights or config inside)")
    return state


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(value: Optional[Any]):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
