"""The checkpoint format, its one owner: written atomically, read without executing pickled code.

A checkpoint is a dict of tensors and plain values (`torch.load(..., weights_only=True)` reads it):

    format, version     "urbanseg-checkpoint", FORMAT_VERSION
    config              the resolved run config (`Config.to_dict()`)
    labels              the label set (`LabelSet.to_dict()`): names, palette, ignore index, id tables
    preset              the preprocessing preset (`Preset.to_dict()`)
    model               the trained weights
    ema                 the EMA of the weights (same keys as `model`), or None
    training            what continuing the run needs: optimizer, schedule, grad scaler, EMA update
                        count, progress, run length, the resolution phases entered, every rank's
                        RNG states, precision; or None

`save_checkpoint` writes it, `load_checkpoint` reads and checks it, `load_model` turns it into a
model ready for use, `resume_config` gives the config to continue a run with. No other module
reads a checkpoint (`files.read_torch_file` is the one `torch.load`, with `weights_only=True`).
"""
from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import Config, apply_overrides, first_difference, from_dict
from ..data.labels import LabelSet
from ..data.preset import Preset
from ..errors import CheckpointError, ConfigError, OutputError
from ..files import atomic_write, read_torch_file
from .model import build_model

FORMAT = "urbanseg-checkpoint"
FORMAT_VERSION = 1
SECTIONS = ("config", "labels", "preset", "model", "ema", "training")


@dataclass
class Checkpoint:
    config: dict
    labels: LabelSet
    preset: Preset
    model: dict
    ema: Optional[dict] = None
    training: Optional[dict] = None

    @property
    def weights(self) -> dict:
        """The weights validation scored: the EMA's when the run kept one."""
        return self.ema if self.ema is not None else self.model


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    config: Config
    labels: LabelSet
    preset: Preset


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically; a failed write leaves the previous file as it was.

    The state is serialised in memory first: torch.save streaming into a file on a full disk
    fails with an opaque `inline_container.cc ... unexpected pos` error, while a plain write
    of the bytes says what went wrong (no space left on device).
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": checkpoint.config,
                "labels": checkpoint.labels.to_dict(), "preset": checkpoint.preset.to_dict(),
                "model": checkpoint.model, "ema": checkpoint.ema, "training": checkpoint.training}, buffer)
    try:
        atomic_write(path, lambda handle: handle.write(buffer.getbuffer()), durable=True)
    except OutputError as error:
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"{error}{kept}") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint; a foreign or older layout fails naming the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = read_torch_file(path, mmap=True)  # tensors are read when used
    except Exception as error:  # truncated file, foreign pickle, not a torch file at all
        raise CheckpointError(f"{path}: not a readable urbanseg checkpoint ({error.__class__.__name__})") from None
    if isinstance(state, dict) and "format" not in state and {"model", "config"} <= state.keys():
        raise CheckpointError(f"{path}: written by an older urbanseg (no format version inside); retrain, or "
                              f"load it with the urbanseg that wrote it")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an urbanseg checkpoint (no '{FORMAT}' format marker inside)")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')}, this urbanseg reads "
                              f"version {FORMAT_VERSION}; retrain, or load it with the urbanseg that wrote it")
    missing = [key for key in SECTIONS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    try:
        labels, preset = LabelSet.from_dict(state["labels"]), Preset.from_dict(state["preset"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable labels or preset ({error.__class__.__name__}: {error})") from None
    return Checkpoint(state["config"], labels, preset, state["model"], state["ema"], state["training"])


def load_model(path: str | os.PathLike) -> LoadedModel:
    """The model of a checkpoint with its config, label set and preprocessing, ready for use."""
    checkpoint = load_checkpoint(path)
    try:
        config = from_dict(checkpoint.config)
    except ConfigError as error:
        raise CheckpointError(f"{path}: its config does not fit this urbanseg ({error})") from None
    model = build_model(config.model, checkpoint.labels.num_classes, pretrained=False)
    try:
        model.load_state_dict(checkpoint.weights)
    except RuntimeError as error:  # a checkpoint of another model under this config
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit {config.model.name} ({first})") from None
    return LoadedModel(model.eval(), config, checkpoint.labels, checkpoint.preset)


def load_labels(path: str | os.PathLike) -> LabelSet:
    """The label set of a checkpoint (memory-mapped: the tensors are not read)."""
    return load_checkpoint(path).labels


# What a resumed run must keep: the model and the classes it predicts.
FROZEN_ON_RESUME = ("model", "data.dataset", "data.classes", "data.class_names")


def resume_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """The config of the run in `run_dir` (from its last checkpoint) with `overrides` applied.

    Overrides of the schedule's length, the evaluation cadence, the loader and so on are taken;
    one that changes the model or the class set is an error naming the key and the run's value,
    since the saved weights would no longer fit.
    """
    path = Path(run_dir) / "checkpoints" / "last.pt"
    saved = load_checkpoint(path).config
    config = from_dict(apply_overrides(_copy(saved), overrides))
    before, after = from_dict(_copy(saved)).to_dict(), config.to_dict()
    for key in FROZEN_ON_RESUME:
        changed = first_difference(_get(before, key), _get(after, key), key)
        if changed is not None:
            dotted, old, new = changed
            raise ConfigError(f"{dotted}: the run in {run_dir} was trained with {old!r}, not {new!r}; "
                              f"a resumed run keeps its model and classes (start a new run to change them)")
    return config


def _copy(value):
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


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
