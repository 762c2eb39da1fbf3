"""Everything a training run works on, built once: `build_training(cfg, ...) -> TrainState`.

Settings are checked before anything is written (`check_settings`); then data, model, loss,
optimiser, schedule, EMA and the run's length are built, a checkpoint's state restored when
resuming, and the model wrapped for data parallelism (torchrun) and `torch.compile` if asked.
"""
from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, save_config
from ..data import SegmentationDataset
from ..data.copy_paste import CopyPaste, copy_paste_for
from ..data.labels import LabelSet
from ..data.preset import Preset, preset_for
from ..errors import CheckpointError, ConfigError
from ..files import write_json
from ..losses import build_loss, class_weights_from_counts
from ..optim import build_optimizer
from ..schedules import LRSchedule
from .checkpoint import Checkpoint, restore_rng_state
from .data import ShardedSampler, build_train_val, label_statistics, make_loader, rare_class_weights
from .distributed import DistInfo, barrier, broadcast_object
from .model import build_model
from .precision import Precision, pick_precision
from .resolution import ResolutionSchedule
from .run_length import RunLength
from .run_log import RunLog

# trainer.monitor -> (key in the validation metrics, higher is better)
MONITORS = {"val/mIoU": ("miou", True), "val/loss": ("loss", False), "val/pixel_accuracy": ("pixel_accuracy", True),
            "val/mean_accuracy": ("mean_accuracy", True), "val/category_mIoU": ("category_miou", True)}


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    steps_in_epoch: int = 0  # optimizer steps of this epoch already done (to resume mid-epoch)
    best: Optional[float] = None  # best monitored value so far
    evals_without_improvement: int = 0
    last_eval_step: int = -1


@dataclass
class TrainState:
    cfg: Config
    run_dir: Path
    device: torch.device
    dist: DistInfo
    precision: Precision
    labels: LabelSet
    preset: Preset
    val_set: SegmentationDataset
    train_sampler: ShardedSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    model: nn.Module  # the bare model: what checkpoints hold
    forward_model: nn.Module  # the model as trained: DDP-wrapped and/or compiled when asked
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    length: RunLength
    progress: Progress
    log: Optional[RunLog]  # rank 0 only
    resolution: ResolutionSchedule
    copy_paste: Optional[CopyPaste] = None  # applied to each training batch (data.copy_paste)
    phase: int = 0  # the resolution phase the training data is in (its transform and loader)
    on_evaluation: Optional[Callable[[int, dict], None]] = None  # see `train.train`; main process only

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and `load_model` returns: the EMA of the weights when kept."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def monitor(self) -> tuple[str, bool]:
        return MONITORS[self.cfg.trainer.monitor]


def check_settings(cfg: Config) -> None:
    """The trainer settings that can be checked before anything is read or written."""
    t = cfg.trainer
    if t.accumulate < 1:
        raise ConfigError(f"trainer.accumulate: expected at least 1, got {t.accumulate}")
    if t.sample_images < 0:
        raise ConfigError(f"trainer.sample_images: expected 0 (no sample grids) or more, got {t.sample_images}")
    if t.max_steps is None and t.max_epochs is None:
        raise ConfigError("trainer.max_steps: set max_steps or max_epochs")
    for key in ("max_steps", "max_epochs", "eval_every", "save_every", "log_every"):
        value = getattr(t, key)
        if value is not None and value < 1:
            raise ConfigError(f"trainer.{key}: expected at least 1 (or null), got {value}")
    if t.max_minutes is not None and not t.max_minutes > 0:
        raise ConfigError(f"trainer.max_minutes: expected a number of minutes > 0 (or null), got {t.max_minutes}")
    if t.monitor not in MONITORS:
        raise ConfigError(f"trainer.monitor: expected one of {', '.join(MONITORS)}, got '{t.monitor}'")
    if cfg.data.rare_class_sampling is not None and cfg.data.rare_class_sampling <= 0:
        raise ConfigError(f"data.rare_class_sampling: expected a temperature > 0, got {cfg.data.rare_class_sampling}")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_training(cfg: Config, run_dir: Path, resume_from: Optional[Checkpoint], device: torch.device,
                   dist: DistInfo) -> TrainState:
    """Data, model, optimisation and the run's length, in the order that checks every setting
    before the run directory is written."""
    t = cfg.trainer
    seed_everything(t.seed + dist.rank, t.deterministic)
    precision = pick_precision(t.precision, device, t.channels_last)
    resolution = ResolutionSchedule(cfg.data)
    train_set, val_set = build_train_val(cfg.data)
    labels = train_set.labels
    if t.monitor == "val/category_mIoU" and not labels.categories:
        raise ConfigError(f"trainer.monitor: {t.monitor} needs a dataset with categories (Cityscapes)")
    copy_paste = copy_paste_for(cfg.data, labels)
    batches_per_epoch = len(train_set) // dist.world_size // cfg.data.batch_size
    if batches_per_epoch < t.accumulate:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} x trainer.accumulate {t.accumulate} "
                          f"x {dist.world_size} process(es) is more than the {len(train_set)} training images")
    steps_per_epoch = batches_per_epoch // t.accumulate  # leftover batches that make no full step are skipped

    # a resumed model gets its weights from the checkpoint: no pretrained download first
    model = build_model(cfg.model, labels.num_classes, pretrained=resume_from is None).to(device)
    model = _batch_norm_for(model, t.sync_batchnorm, device, dist)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model)
    progress, run_length = _progress_of(resume_from, run_dir)
    if resume_from is not None:
        resolution.load_state_dict(resume_from.training.get("resolution", {}))  # the phases it entered
    planned_steps = t.max_steps if t.max_steps is not None else t.max_epochs * steps_per_epoch
    length = RunLength(planned_steps, t.max_minutes, progress.step, run_length.get("fitted_steps"),
                       run_length.get("trained_seconds", 0.0), resolution.units)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, length.total_steps, steps_per_epoch)
    _prepare_run_dir(cfg, run_dir, resumed=resume_from is not None, dist=dist)

    statistics = functools.cache(lambda: label_statistics(train_set))  # read the labels at most once
    criterion = build_loss(cfg.loss, labels.ignore_index, _class_weights(cfg, labels, run_dir, dist, statistics))
    train_sampler = ShardedSampler(len(train_set), dist.rank, dist.world_size, shuffle=True, seed=t.seed,
                                   seeded=True, weights=_sampling_weights(cfg, dist, statistics))
    val_sampler = ShardedSampler(len(val_set), dist.rank, dist.world_size, shuffle=False, pad=False)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, train_sampler, cfg.data.batch_size, cfg.data.workers, True, pin)
    val_loader = make_loader(val_set, val_sampler, cfg.data.val_batch_size, cfg.data.workers, False, pin)
    ema = None
    if t.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    if resume_from is not None:
        _restore(resume_from, model, optimizer, schedule, scaler, ema, dist)

    forward_model = model
    if dist.enabled:
        forward_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        forward_model = torch.compile(forward_model)
    log = RunLog(run_dir, progress.step if resume_from is not None else None) if dist.is_main else None
    return TrainState(cfg, run_dir, device, dist, precision, labels, preset_for(cfg.data, model), val_set,
                      train_sampler, train_loader, val_loader, steps_per_epoch, model, forward_model, ema,
                      criterion.to(device), optimizer, schedule, scaler, length, progress, log, resolution,
                      copy_paste)


def _prepare_run_dir(cfg: Config, run_dir: Path, resumed: bool, dist: DistInfo) -> None:
    """Never overwrite a run by accident (rank 0 decides, so all ranks agree); save the config."""
    exists = broadcast_object((run_dir / "checkpoints" / "last.pt").exists() if dist.is_main else None)
    if exists and not resumed:
        raise ConfigError(f"{run_dir}: already holds a run; continue it with --resume or choose another --run-dir")
    if dist.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()


def _batch_norm_for(model: nn.Module, sync: bool, device: torch.device, dist: DistInfo) -> nn.Module:
    """SyncBatchNorm when several CUDA processes train together; one process has nothing to sync."""
    if not sync:
        return model
    if not dist.enabled:
        if dist.is_main:
            tqdm.write("note: trainer.sync_batchnorm: a single process has nothing to synchronise; "
                       "training with plain batch norm")
        return model
    if device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm: SyncBatchNorm runs on CUDA devices only; set it to false "
                          "for several CPU processes")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _progress_of(checkpoint: Optional[Checkpoint], run_dir: Path) -> tuple[Progress, dict]:
    """Where a resumed run stands (step, epoch, best value, ...) and its `RunLength.state_dict()`
    (the length it was fitted to, the seconds it has trained)."""
    if checkpoint is None:
        return Progress(), {}
    if checkpoint.training is None:
        raise CheckpointError(f"{run_dir / 'checkpoints' / 'last.pt'}: holds no training state; cannot resume")
    return Progress(**checkpoint.training["progress"]), dict(checkpoint.training["run_length"])


def _restore(checkpoint: Checkpoint, model: nn.Module, optimizer, schedule: LRSchedule, scaler, ema,
             dist: DistInfo) -> None:
    """Load a checkpoint's weights and training state into the freshly built objects."""
    training = checkpoint.training
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(training["optimizer"])
    schedule.load_state_dict(training["schedule"])
    scaler.load_state_dict(training["scaler"])
    if ema is not None and checkpoint.ema is not None:
        ema.module.load_state_dict(checkpoint.ema)
        ema.n_averaged.fill_(training["ema_updates"])
    rngs = training["rng"]
    restore_rng_state(rngs[min(dist.rank, len(rngs) - 1)])


def _class_weights(cfg: Config, labels: LabelSet, run_dir: Path, dist: DistInfo, statistics) -> Optional[list]:
    """Class weights as configured; `auto`/`enet`/`median` are computed on rank 0 (from
    `statistics()`, see `label_statistics`) and saved with the run."""
    spec = cfg.loss.class_weights
    if spec is None or isinstance(spec, list):
        if spec is not None and len(spec) != labels.num_classes:
            raise ConfigError(f"loss.class_weights: expected {labels.num_classes} weights, got {len(spec)}")
        return spec
    saved = run_dir / "class_weights.json"
    weights = None
    if dist.is_main:
        if saved.exists():
            weights = json.loads(saved.read_text())["weights"]
        else:
            pixel_counts, image_pixels, _ = statistics()
            weights = class_weights_from_counts(pixel_counts, image_pixels, spec)
            write_json(saved, {"method": spec, "classes": list(labels.class_names), "weights": weights,
                               "pixels": pixel_counts.tolist()})
    return broadcast_object(weights)


def _sampling_weights(cfg: Config, dist: DistInfo, statistics) -> Optional[np.ndarray]:
    """Image probabilities of rare-class sampling (`data.rare_class_sampling`), the same on every rank."""
    if cfg.data.rare_class_sampling is None:
        return None
    weights = None
    if dist.is_main:
        pixel_counts, _, presence = statistics()
        weights = rare_class_weights(pixel_counts, presence, cfg.data.rare_class_sampling)
    return broadcast_object(weights)
