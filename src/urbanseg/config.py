"""Typed run configuration: dataclasses filled from YAML plus `a.b=value` overrides.

Every key is checked: an unknown key or a value of the wrong type fails with the dotted key
named. The resolved config is saved as `config.yaml` in the run directory and inside every
checkpoint, so a run can always be reproduced from what it wrote (`engine.checkpoint.resume_config`
reads it back for `--resume`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .errors import ConfigError
from .files import write_text


@dataclass
class ResolutionPhase:
    """One step of progressive resizing (`data.resolution_schedule`, see engine.resolution): from
    `start`, a fraction of the run's optimizer steps, training images are resized and cropped to
    these sizes; a size left null keeps the data section's. Once entered, a phase stays: a run
    made longer (refitted to its time budget, or resumed with more steps) does not go back."""

    start: float = 0.0
    resize: Optional[List[int]] = None
    crop: Optional[List[int]] = None


@dataclass
class DataConfig:
    dataset: str = "cityscapes"  # cityscapes | camvid | folder
    root: str = "data/cityscapes"
    train_split: str = "train"
    val_split: str = "val"
    # text files of sample names, one a line, restricting the train / val split to them (`urbanseg cv` folds)
    train_samples: Optional[str] = None
    val_samples: Optional[str] = None
    classes: Union[str, Dict[str, List[str]]] = "official"  # Cityscapes class set (see data.labels)
    # folder datasets: <root>/<split>/images and <root>/<split>/masks unless given
    class_names: Optional[List[str]] = None
    ignore_index: int = 255
    palette: Optional[List[List[int]]] = None
    group_pattern: Optional[str] = None  # regex on the sample name: what stays together in `urbanseg cv`
    cache: Optional[str] = None  # folder of the decoded-array cache
    load_size: Optional[List[int]] = None  # [height, width] images are resized to on loading (and cached at)
    batch_size: int = 8
    val_batch_size: int = 2
    workers: int = 2
    rare_class_sampling: Optional[float] = None  # temperature of rare-class sampling (e.g. 0.1); null: uniform
    # rare-class copy-paste (data.copy_paste): the chance that a training image receives the pixels of
    # these classes from another image of its batch (e.g. 0.5 and [pole, sign, pedestrian, bicyclist])
    copy_paste: Optional[float] = None
    copy_paste_classes: Optional[List[str]] = None
    # augmentation (see data.transforms.AugmentConfig)
    resize: Optional[List[int]] = None
    scale: List[float] = field(default_factory=lambda: [0.5, 2.0])
    crop: Optional[List[int]] = field(default_factory=lambda: [512, 1024])
    hflip: float = 0.5
    rotate: float = 0.0
    color_jitter: float = 0.2
    blur: float = 0.0
    val_resize: Optional[List[int]] = None  # validation during training; `evaluate` scores at full size
    # progressive resizing: e.g. [{start: 0.85, resize: [270, 360], crop: [256, 352]}] trains the last
    # 15% of the steps at a higher resolution (images must be loaded at least that large: data.load_size)
    resolution_schedule: List[ResolutionPhase] = field(default_factory=list)


@dataclass
class ModelConfig:
    name: str = "unet_scratch"
    encoder: Optional[str] = None
    encoder_weights: Optional[str] = None  # e.g. imagenet (downloads), or a local .pth/.safetensors file
    options: Dict[str, Any] = field(default_factory=dict)  # builder-specific, e.g. {dropout: 0.1}


@dataclass
class LossConfig:
    terms: Dict[str, float] = field(default_factory=lambda: {"ce": 1.0})  # ce, dice, focal, ohem
    class_weights: Optional[Union[str, List[float]]] = None  # auto | enet | median | [w, ...]
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 100_000


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay_norm_and_bias: bool = True


@dataclass
class ScheduleConfig:
    name: str = "poly"  # constant | step | multistep | poly | cosine | plateau | inverse_sqrt
    unit: str = "step"  # what step_size, milestones and warmup count: step | epoch
    step_size: int = 30
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 0.9
    min_lr: float = 0.0
    warmup: int = 0
    warmup_shape: str = "linear"  # linear | quadratic
    patience: int = 3  # plateau: evaluations without improvement before the lr drops by gamma


@dataclass
class TrainerConfig:
    max_epochs: Optional[int] = 10
    max_steps: Optional[int] = None  # when set, training is iteration-based and max_epochs is ignored
    max_minutes: Optional[float] = None  # wall-time budget for training steps; the schedule is fitted to it
    eval_every: Optional[int] = None  # optimizer steps between evaluations; None: every epoch
    eval_batches: Optional[int] = None  # limit validation to this many batches
    save_every: Optional[int] = None  # optimizer steps between last.pt saves; None: at each evaluation
    log_every: int = 10
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: Optional[bool] = None  # None: with reduced precision
    compile: bool = False  # torch.compile; on a CPU no faster for the CamVid models (configs/camvid/README.md)
    accumulate: int = 1
    clip_grad_norm: Optional[float] = None
    early_stopping: Optional[int] = None  # evaluations without improvement of the monitor
    ema_decay: Optional[float] = None
    monitor: str = "val/mIoU"  # or val/loss
    seed: int = 0
    deterministic: bool = False
    sync_batchnorm: bool = False
    device: str = "auto"  # auto | cpu | cuda
    sample_images: int = 3  # validation images drawn as image | truth | prediction | errors at each evaluation


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Config from a YAML file (or the defaults) with `a.b=value` overrides applied in order."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({yaml_problem(error)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(apply_overrides(raw, overrides))


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where ("expected ',' or ']' at line 2, column 5");
    PyYAML's own message spans several lines with a copy of the text."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Set `a.b=value` overrides (values parsed as YAML) in a nested dict, in place."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"{override}: expected an override of the form key.sub=value")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    return raw


def from_dict(raw: dict) -> Config:
    return _build(Config, raw, "")


def first_difference(old: Any, new: Any, key: str = "") -> Optional[tuple[str, Any, Any]]:
    """The first dotted key at which two config trees (dicts, nested or with dotted keys) differ,
    with its value in each; None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for sub in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(sub), new.get(sub), f"{key}.{sub}" if key else sub)
            if found is not None:
                return found
        return None
    return None if old == new else (key, old, new)


def save_config(config: Config, path: Union[str, Path]) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown key (expected one of {', '.join(fields)})")
        values[key] = _check(hints[key], value, dotted)
    return cls(**values)


def _check(hint, value, key: str):
    """Value converted to `hint`, or ConfigError naming `key`."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
        return [_check(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
        return {str(k): _check(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(_describe(a) for a in args)
    if origin in (list, List):
        return f"a list of {_describe(args[0])}"
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(hint):  # a user knows the keys, not our class's name
        return "{" + ", ".join(field.name for field in dataclasses.fields(hint)) + "}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
