"""The training loop, readable top to bottom.

    urbanseg train --config configs/synthetic/unet-scratch_cpu.yaml trainer.max_steps=200
    torchrun --nproc_per_node=2 -m urbanseg train --config FILE     # data parallel (gloo on CPU, NCCL on GPU)

Run directory: config.yaml, metrics.csv, tensorboard/, checkpoints/{last.pt,best.pt}
(+ class_weights.json when computed). Works on CPU and CUDA; the device is picked, never assumed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, save_config
from ..losses import build_loss, class_weights_from_counts
from ..metrics import json_safe
from ..models import create_model
from ..optim import build_optimizer
from ..report import write_run_figures
from ..schedules import LRSchedule
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .data import ShardedSampler, build_train_val, label_statistics, make_loader, rare_class_weights
from .distributed import (
    DistInfo, all_reduce_sum, barrier, broadcast_buffers, broadcast_object, init_distributed, shutdown_distributed,
)
from .evaluate import save_sample_grid, validate
from .precision import pick_device, pick_precision
from .run_log import RunLog


MONITORS = {"val/mIoU": "miou", "val/loss": "loss", "val/pixel_accuracy": "pixel_accuracy",
            "val/mean_accuracy": "mean_accuracy", "val/category_mIoU": "category_miou"}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what was kept."""


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed (for mid-epoch resume)
    best: Optional[float] = None
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    fitted_total_steps: Optional[int] = None  # set by trainer.max_minutes; kept on resume


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    return create_model(cfg.model.name, num_classes, encoder=cfg.model.encoder,
                        encoder_weights=cfg.model.encoder_weights, **cfg.model.options)


def resolve_class_weights(cfg: Config, train_set, run_dir: Path, dist: DistInfo, statistics) -> Optional[list]:
    """Class weights as configured; `auto`/`enet`/`median` are computed on rank 0 (from
    `statistics()`, see `label_statistics`) and saved with the run."""
    spec = cfg.loss.class_weights
    if spec is None or isinstance(spec, list):
        if spec is not None and len(spec) != train_set.labels.num_classes:
            raise ValueError(f"loss.class_weights: expected {train_set.labels.num_classes} weights, got {len(spec)}")
        return spec
    saved = run_dir / "class_weights.json"
    weights = None
    if dist.is_main:
        if saved.exists():
            weights = json.loads(saved.read_text())["weights"]
        else:
            pixel_counts, image_pixels, _ = statistics()
            weights = class_weights_from_counts(pixel_counts, image_pixels, spec)
            saved.write_text(json.dumps({"method": spec, "classes": list(train_set.labels.class_names),
                                         "weights": weights, "pixels": pixel_counts.tolist()}, indent=1))
    return broadcast_object(weights)


def resolve_sampling_weights(cfg: Config, dist: DistInfo, statistics) -> Optional[np.ndarray]:
    """Image probabilities of rare-class sampling (`data.rare_class_sampling`), the same on every rank."""
    if cfg.data.rare_class_sampling is None:
        return None
    weights = None
    if dist.is_main:
        pixel_counts, _, presence = statistics()
        weights = rare_class_weights(pixel_counts, presence, cfg.data.rare_class_sampling)
    return broadcast_object(weights)


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train as configured; returns the last validation metrics and where the checkpoints are.

    With `resume`, training continues from `run_dir/checkpoints/last.pt` at its step; `cfg` should
    then be the run's own config (see `config.resume_config`), possibly with a longer schedule.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    state = load_checkpoint(ckpt_dir / "last.pt") if resume else None
    device = pick_device(cfg.trainer.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{dist.local_rank}")
    try:
        return _train(cfg, run_dir, ckpt_dir, state, device, dist)
    finally:
        shutdown_distributed()


def _train(cfg: Config, run_dir: Path, ckpt_dir: Path, resume_state: Optional[dict], device, dist: DistInfo) -> dict:
    tcfg = cfg.trainer
    seed_everything(tcfg.seed + dist.rank, tcfg.deterministic)
    precision = pick_precision(tcfg.precision, device, tcfg.channels_last)
    if tcfg.accumulate < 1:
        raise ValueError(f"trainer.accumulate: expected at least 1, got {tcfg.accumulate}")
    if tcfg.sample_images < 0:
        raise ValueError(f"trainer.sample_images: expected 0 (no sample grids) or more, got {tcfg.sample_images}")
    # never overwrite a run by accident; rank 0 decides, so all ranks agree
    if broadcast_object((ckpt_dir / "last.pt").exists() if dist.is_main else None) and resume_state is None:
        raise ValueError(f"{run_dir}: already holds a run; continue it with --resume or choose another --run-dir")
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()

    train_set, val_set = build_train_val(cfg.data)
    labels = train_set.labels
    statistics = functools.cache(lambda: label_statistics(train_set))  # read the labels at most once
    train_sampler = ShardedSampler(len(train_set), dist.rank, dist.world_size, shuffle=True, seed=tcfg.seed,
                                   seeded=True, weights=resolve_sampling_weights(cfg, dist, statistics))
    val_sampler = ShardedSampler(len(val_set), dist.rank, dist.world_size, shuffle=False, pad=False)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, train_sampler, cfg.data.batch_size, cfg.data.workers, True, pin)
    val_loader = make_loader(val_set, val_sampler, cfg.data.val_batch_size, cfg.data.workers, False, pin)
    batches_per_epoch = len(train_set) // dist.world_size // cfg.data.batch_size
    if batches_per_epoch < tcfg.accumulate:
        raise ValueError(f"data.batch_size: {cfg.data.batch_size} x trainer.accumulate {tcfg.accumulate} "
                         f"x {dist.world_size} process(es) is more than the {len(train_set)} training images")
    steps_per_epoch = batches_per_epoch // tcfg.accumulate
    if tcfg.max_steps is None and tcfg.max_epochs is None:
        raise ValueError("trainer.max_steps: set max_steps or max_epochs")
    total_steps = tcfg.max_steps if tcfg.max_steps is not None else tcfg.max_epochs * steps_per_epoch
    planned_steps = total_steps  # a time budget may shorten the run, never lengthen it past this

    model = build_model(cfg, labels.num_classes).to(device)
    if tcfg.sync_batchnorm and device.type != "cuda":
        raise ValueError("trainer.sync_batchnorm: SyncBatchNorm runs on CUDA devices only; set it to false on CPU")
    if tcfg.sync_batchnorm and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    class_weights = resolve_class_weights(cfg, train_set, run_dir, dist, statistics)
    criterion = build_loss(cfg.loss, labels.ignore_index, class_weights).to(device)
    optimizer = build_optimizer(cfg.optim, model)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    ema = None
    if tcfg.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tcfg.ema_decay), use_buffers=True)
    monitor_key = MONITORS.get(tcfg.monitor)
    if monitor_key is None:
        raise ValueError(f"trainer.monitor: expected one of {', '.join(MONITORS)}, got '{tcfg.monitor}'")
    if monitor_key == "category_miou" and not labels.categories:
        raise ValueError(f"trainer.monitor: {tcfg.monitor} needs a dataset with categories (Cityscapes)")
    higher_is_better = monitor_key != "loss"
    progress = Progress()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["schedule"])
        scaler.load_state_dict(resume_state["scaler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        progress = Progress(**resume_state["progress"])
        restore_rng_state(resume_state["rng"][min(dist.rank, len(resume_state["rng"]) - 1)])

    forward_model = model
    if dist.enabled:
        forward_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        forward_model = torch.compile(forward_model)

    log = RunLog(run_dir, progress.step if resume_state is not None else None) if dist.is_main else None
    label_info = {"name": labels.name, "class_names": list(labels.class_names), "palette": labels.palette.tolist(),
                  "ignore_index": labels.ignore_index, "categories": list(labels.categories),
                  "train_to_raw": labels.train_to_raw.tolist() if labels.train_to_raw is not None else None}

    def checkpoint(name: str) -> None:
        # every rank's RNG state is gathered so that each resumes its own random stream
        rngs = _gather(rng_state(), dist)
        if dist.is_main:
            save_checkpoint(ckpt_dir / name, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "progress": vars(progress).copy(), "rng": rngs, "config": cfg.to_dict(), "labels": label_info,
                "precision": precision.name,
            })

    def evaluate_and_save() -> dict:
        eval_model = ema.module if ema is not None else model
        if dist.enabled:
            broadcast_buffers(eval_model)
        metrics = validate(eval_model, val_loader, criterion, labels, device, precision, tcfg.eval_batches)
        progress.last_eval_step = progress.step
        value = metrics[monitor_key]
        improved = progress.best is None or (value > progress.best if higher_is_better else value < progress.best)
        if improved:
            progress.best, progress.evals_without_improvement = value, 0
        else:
            progress.evals_without_improvement += 1
        schedule.observe(value, higher_is_better)
        if log is not None:
            log.log("val", progress.step, progress.epoch, metrics)
            (run_dir / "val_metrics.json").write_text(json.dumps(json_safe({"step": progress.step, **metrics}), indent=1))
            if tcfg.sample_images:
                save_sample_grid(eval_model, val_set, tcfg.sample_images, device, precision,
                                 run_dir / "samples" / f"step_{progress.step:07d}.png", f"step {progress.step}")
            tqdm.write(f"step {progress.step}: val loss {metrics['loss']:.4f}  mIoU {metrics['miou']:.4f}"
                       f"  pixel acc {metrics['pixel_accuracy']:.4f}" + ("  (best)" if improved else ""))
        if improved:
            checkpoint("best.pt")
        checkpoint("last.pt")
        return metrics

    metrics: dict = {}
    micro_per_epoch = steps_per_epoch * tcfg.accumulate  # leftover batches that make no full step are skipped
    bar = tqdm(total=total_steps, initial=progress.step, disable=not dist.is_main, desc="train", dynamic_ncols=True)
    model.train()
    done = progress.step >= total_steps
    window_images, window_start = 0, time.perf_counter()
    budget = _TimeBudget(tcfg.max_minutes if progress.fitted_total_steps is None else None, progress.step)
    if progress.fitted_total_steps is not None:  # a resumed time-budgeted run keeps its fitted length
        total_steps = schedule.total_steps = bar.total = min(progress.fitted_total_steps, planned_steps)
        done = progress.step >= total_steps
    while not done:
        train_sampler.set_epoch(progress.epoch, start=progress.batches_in_epoch * cfg.data.batch_size)
        for images, masks in train_loader:
            if progress.batches_in_epoch >= micro_per_epoch:
                break
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            lr = schedule.apply(optimizer, progress.step)
            progress.batches_in_epoch += 1
            stepping = progress.batches_in_epoch % tcfg.accumulate == 0
            # gradients are all-reduced only on the micro-batch that completes an optimizer step
            sync = contextlib.nullcontext() if stepping or not dist.enabled else forward_model.no_sync()
            with sync:
                with precision.autocast():
                    logits = forward_model(images)
                loss = criterion(logits, masks)  # every loss term computes in float32
                # a CPU-GPU sync point, once per micro-batch: worth it to stop at the first bad step;
                # under DDP all ranks agree first, so no rank is left waiting in an all-reduce
                if not _all_finite(loss, dist):
                    raise TrainingError(f"non-finite loss ({loss.item()}) at step {progress.step + 1}; stopped. "
                                        f"The last good checkpoint is {ckpt_dir / 'last.pt'}")
                scaler.scale(loss / tcfg.accumulate).backward()
            window_images += images.shape[0] * dist.world_size
            if not stepping:
                continue
            if tcfg.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            progress.step += 1
            bar.update(1)
            fitted = budget.fit(progress.step, total_steps, planned_steps)
            if fitted is not None and fitted != total_steps:
                total_steps = schedule.total_steps = bar.total = progress.fitted_total_steps = fitted
                bar.refresh()

            if progress.step % tcfg.log_every == 0 or progress.step == total_steps:
                speed = window_images / max(time.perf_counter() - window_start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                if log is not None:
                    log.log("train", progress.step, progress.epoch, {"loss": loss.item(), "lr": lr, "images_per_s": speed})
                window_images, window_start = 0, time.perf_counter()
            epoch_ends = progress.batches_in_epoch >= micro_per_epoch
            if tcfg.eval_every and progress.step % tcfg.eval_every == 0 or not tcfg.eval_every and epoch_ends:
                with budget.paused():
                    metrics = evaluate_and_save()
            elif tcfg.save_every and progress.step % tcfg.save_every == 0:
                with budget.paused():
                    checkpoint("last.pt")
            if progress.step >= total_steps or _early_stop(tcfg, progress, dist):
                done = True
                break
        if progress.batches_in_epoch >= micro_per_epoch:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    if progress.last_eval_step != progress.step:
        metrics = evaluate_and_save()
    if log is not None:
        log.close()
        write_run_figures(run_dir)
    barrier()
    return {"metrics": metrics, "step": progress.step, "epoch": progress.epoch, "run_dir": str(run_dir),
            "best": str(ckpt_dir / "best.pt"), "last": str(ckpt_dir / "last.pt")}


class _TimeBudget:
    """`trainer.max_minutes`: after a warm-up (data-loader start-up, first allocations), time the
    steps and set the run's length, and its schedule's so the learning rate still anneals, to the
    steps that fit in the budget. Refitted every `refit_every` steps from the latest steps, as the
    first ones are often slower; time spent in evaluations does not count."""

    warmup_steps, timed_steps, refit_every = 5, 20, 50

    def __init__(self, minutes: Optional[float], start_step: int):
        self.seconds = minutes * 60 if minutes else None
        self.start_step, self.start = start_step, time.perf_counter()
        self.timer_step, self.timer_start, self.timer_excluded = None, 0.0, 0.0
        self.excluded = 0.0  # seconds in evaluations since the start

    @contextlib.contextmanager
    def paused(self):
        begin = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - begin

    def fit(self, step: int, total_steps: int, planned_steps: int) -> Optional[int]:
        """The run's new length at the steps where it is (re)computed, else None. It may grow only
        in the first half of the budget: later, a longer poly schedule would raise the learning
        rate again near the end."""
        if self.seconds is None:
            return None
        now = time.perf_counter()
        since_start = step - self.start_step
        if since_start == self.warmup_steps:
            self.timer_step, self.timer_start, self.timer_excluded = step, now, self.excluded
        first_fit = self.warmup_steps + self.timed_steps
        if since_start != first_fit and (since_start < first_fit or since_start % self.refit_every):
            return None
        per_step = (now - self.timer_start - (self.excluded - self.timer_excluded)) / (step - self.timer_step)
        self.timer_step, self.timer_start, self.timer_excluded = step, now, self.excluded  # the next window
        elapsed = now - self.start - self.excluded
        fitted = min(step + max(int((self.seconds - elapsed) / per_step), 0), planned_steps)
        if since_start != first_fit and elapsed > self.seconds / 2:
            fitted = min(fitted, total_steps)
        return broadcast_object(fitted)  # every rank stops at rank 0's count


def _all_finite(loss: torch.Tensor, dist: DistInfo) -> bool:
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if dist.enabled:
        all_reduce_sum(bad)
    return bool(bad.item() == 0)


def _early_stop(tcfg, progress: Progress, dist: DistInfo) -> bool:
    if not tcfg.early_stopping or progress.evals_without_improvement < tcfg.early_stopping:
        return False
    if dist.is_main:
        tqdm.write(f"early stopping at step {progress.step}: {tcfg.monitor} did not improve "
                   f"for {tcfg.early_stopping} evaluations")
    return True


def _gather(value, dist: DistInfo) -> list:
    if not dist.enabled:
        return [value]
    import torch.distributed as tdist

    gathered = [None] * dist.world_size
    tdist.all_gather_object(gathered, value)
    return gathered
