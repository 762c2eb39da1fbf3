"""The training loop, readable top to bottom: `train` -> `fit` -> `train_step` / `evaluate_and_checkpoint`.

    urbanseg train --config configs/synthetic/unet_regnetx002_adamw_96x192_cpu_fp32.yaml trainer.max_steps=200
    torchrun --nproc_per_node=2 -m urbanseg train --config FILE     # data parallel (gloo on CPU, NCCL on GPU)

Run directory: config.yaml, metrics.csv, val_metrics.json, tensorboard/, samples/,
checkpoints/{last.pt,best.pt} (+ class_weights.json when computed). `train` returns results and
draws no report: the caller does (`report.write_run_figures`). Works on CPU and CUDA; the device
is picked, never assumed.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config
from ..data.transforms import train_transform
from ..errors import TrainingError
from ..files import write_json
from ..metrics import json_safe
from .checkpoint import Checkpoint, load_checkpoint, rng_state, save_checkpoint
from .data import augment_config, make_loader
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, init_distributed, shutdown_distributed
from .evaluate import save_sample_grid, validate
from .precision import pick_device
from .state import TrainState, build_training, check_settings


def train(cfg: Config, run_dir: str | Path, resume: bool = False,
          on_evaluation: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train as configured; returns the last validation metrics and where the checkpoints are.

    With `resume`, training continues from `run_dir/checkpoints/last.pt` at its step; `cfg` should
    then be the run's own config (see `checkpoint.resume_config`), possibly with a longer schedule.
    `on_evaluation(step, metrics)` runs on the main process after each evaluation, once its
    checkpoints are written (`experiments.tune` reports to Optuna there); an exception it raises
    stops the run, leaving the run directory as it is after any evaluation.
    """
    check_settings(cfg)
    run_dir = Path(run_dir)
    resume_from = load_checkpoint(run_dir / "checkpoints" / "last.pt") if resume else None
    device = pick_device(cfg.trainer.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{dist.local_rank}")
    try:
        state = build_training(cfg, run_dir, resume_from, device, dist)
        state.on_evaluation = on_evaluation
        with contextlib.closing(state.log) if state.log is not None else contextlib.nullcontext():
            return fit(state)  # the log is closed when fit stops early too (an error, a pruned trial)
    finally:
        shutdown_distributed()


def fit(s: TrainState) -> dict:
    """Optimizer steps until the run's length (or early stopping), evaluating and checkpointing
    on the way; a final evaluation when the last step had none."""
    p = s.progress
    throughput = Throughput()
    metrics: dict = {}
    s.model.train()
    follow_resolution_schedule(s)  # a resumed run continues in its phase
    # closed on errors too, so an error message starts on a line of its own
    with tqdm(total=s.length.total_steps, initial=p.step, disable=not s.dist.is_main, desc="train",
              dynamic_ncols=True) as bar:
        while p.step < s.length.total_steps and not stops_early(s):
            for micro_batches in epoch_steps(s):
                loss, lr = train_step(s, micro_batches)
                throughput.add(sum(len(images) for images, _ in micro_batches) * s.dist.world_size)
                metrics = after_step(s, bar, loss, lr, throughput) or metrics
                if p.step >= s.length.total_steps or stops_early(s) or follow_resolution_schedule(s):
                    break  # a new resolution phase goes on with this epoch in a new loader
            if p.steps_in_epoch >= s.steps_per_epoch:
                p.epoch, p.steps_in_epoch = p.epoch + 1, 0
    if p.last_eval_step != p.step:
        metrics = evaluate_and_checkpoint(s)
    if s.log is not None:
        s.log.close()
    barrier()
    return {"metrics": metrics, "step": p.step, "epoch": p.epoch, "run_dir": str(s.run_dir),
            "best": str(s.checkpoint_dir / "best.pt"), "last": str(s.checkpoint_dir / "last.pt"),
            "main_process": s.dist.is_main}


def after_step(s: TrainState, bar: tqdm, loss: torch.Tensor, lr: float, throughput: "Throughput") -> Optional[dict]:
    """The bookkeeping between two steps: the run's length, the log, evaluation or a checkpoint;
    returns the validation metrics when it evaluated."""
    p, t = s.progress, s.cfg.trainer
    if s.length.refit(p.step) is not None:  # a time budget fitted the run's length again
        s.schedule.refit(s.length.total_steps, p.step)
        bar.total = s.length.total_steps
    bar.update(1)
    if p.step % t.log_every == 0 or p.step == s.length.total_steps:
        log_training(s, bar, loss.item(), lr, throughput.take())  # .item(): a CPU-GPU sync, only when logging
    if evaluation_due(s):
        with s.length.paused():
            metrics = evaluate_and_checkpoint(s)
        s.length.evaluated(p.step)  # spaces the next one when a time budget does
        return metrics
    if t.save_every and p.step % t.save_every == 0:
        with s.length.paused():
            save_training_checkpoint(s, "last.pt")
    return None


def epoch_steps(s: TrainState) -> Iterator[list]:
    """The rest of this epoch's optimizer steps, each a list of `trainer.accumulate` micro-batches
    (a resumed run starts where its epoch stopped; leftover batches that make no step are skipped)."""
    accumulate = s.cfg.trainer.accumulate
    s.train_sampler.set_epoch(s.progress.epoch, start=s.progress.steps_in_epoch * accumulate * s.cfg.data.batch_size)
    batches = iter(s.train_loader)
    for _ in range(s.steps_per_epoch - s.progress.steps_in_epoch):
        yield [next(batches) for _ in range(accumulate)]


def follow_resolution_schedule(s: TrainState) -> bool:
    """Switch the training data to the resolution phase of the next step (`data.resolution_schedule`);
    True when it switched. The loader is built again, since loader processes hold a copy of the
    dataset, and the epoch goes on where it was (`epoch_steps`). Every rank switches at the same
    step: the phase follows from the step, the run's length, which rank 0 fits for all, and the
    steps the phases so far were entered at, the same on every rank."""
    phase = s.resolution.follow(s.progress.step, s.length.total_steps)
    if phase == s.phase:
        return False
    data = s.resolution.data_config(phase)
    dataset = s.train_loader.dataset
    dataset.transform = train_transform(augment_config(data), s.labels.ignore_index, s.preset)
    s.train_loader = make_loader(dataset, s.train_sampler, data.batch_size, data.workers, True, s.device.type == "cuda")
    s.phase = phase
    s.length.new_phase(s.progress.step)  # its steps are timed afresh
    if s.dist.is_main:
        tqdm.write(f"step {s.progress.step}: resolution phase {phase}: resize {data.resize}, crop {data.crop}")
    return True


def train_step(s: TrainState, micro_batches: list) -> tuple[torch.Tensor, float]:
    """One optimizer step over its micro-batches; returns the last micro-batch's loss and the lr."""
    lr = s.schedule.apply(s.optimizer, s.progress.step)
    for index, (images, masks) in enumerate(micro_batches):
        images, masks = images.to(s.device, non_blocking=True), masks.to(s.device, non_blocking=True)
        if s.copy_paste is not None:
            images, masks = s.copy_paste(images, masks)
        completes_step = index == len(micro_batches) - 1
        # under DDP, gradients are all-reduced only on the micro-batch that completes the step
        no_sync = s.dist.enabled and not completes_step
        with s.forward_model.no_sync() if no_sync else contextlib.nullcontext():
            loss = s.criterion(s.precision.forward(s.forward_model, images), masks)  # losses compute in fp32
            check_finite(loss, s)
            s.scaler.scale(loss / len(micro_batches)).backward()
    if s.cfg.trainer.clip_grad_norm:
        s.scaler.unscale_(s.optimizer)
        nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.trainer.clip_grad_norm)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    s.progress.step += 1
    s.progress.steps_in_epoch += 1
    return loss.detach(), lr


def check_finite(loss: torch.Tensor, s: TrainState) -> None:
    """Stop at the first non-finite loss. A CPU-GPU sync point, once per micro-batch: worth it to
    stop at the first bad step; under DDP all ranks agree first, so no rank is left waiting in an
    all-reduce."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if s.dist.enabled:
        all_reduce_sum(bad)
    if bad.item():
        raise TrainingError(f"non-finite loss ({loss.item()}) at step {s.progress.step + 1}; stopped. "
                            f"The last good checkpoint is {s.checkpoint_dir / 'last.pt'}")


def evaluation_due(s: TrainState) -> bool:
    """Every `trainer.eval_every` steps; else, with `trainer.max_minutes`, spaced in time (about 30
    times per budget, at most ~5% of it: `RunLength`); else at the end of each epoch."""
    every = s.cfg.trainer.eval_every
    if every:
        return s.progress.step % every == 0
    if s.cfg.trainer.max_minutes:
        return s.length.time_spaced_evaluation_due(s.progress.step)
    return s.progress.steps_in_epoch == s.steps_per_epoch


def evaluate_and_checkpoint(s: TrainState) -> dict:
    """Validate, track the monitored value, log, draw the samples, and save last.pt (and best.pt
    when the monitored value improved). Every rank takes part."""
    p, t = s.progress, s.cfg.trainer
    if s.dist.enabled:
        broadcast_buffers(s.eval_model)
    metrics = validate(s.eval_model, s.val_loader, s.criterion, s.labels, s.device, s.precision, t.eval_batches)
    p.last_eval_step = p.step
    key, higher_is_better = s.monitor
    value = metrics[key]
    improved = p.best is None or (value > p.best if higher_is_better else value < p.best)
    if improved:
        p.best, p.evals_without_improvement = value, 0
    else:
        p.evals_without_improvement += 1
    s.schedule.observe(value, higher_is_better)
    if s.dist.is_main:
        s.log.log("val", p.step, p.epoch, {**metrics, "train_seconds": s.length.trained_seconds()})
        write_json(s.run_dir / "val_metrics.json", json_safe({"step": p.step, **metrics}))
        if t.sample_images:
            save_sample_grid(s.eval_model, s.val_set, t.sample_images, s.device, s.precision, s.preset,
                             s.run_dir / "samples" / f"step_{p.step:07d}.png", f"step {p.step}")
        tqdm.write(f"step {p.step}: val loss {metrics['loss']:.4f}  mIoU {metrics['miou']:.4f}"
                   f"  pixel acc {metrics['pixel_accuracy']:.4f}" + ("  (best)" if improved else ""))
        if stops_early(s):
            tqdm.write(f"early stopping at step {p.step}: {t.monitor} did not improve for {t.early_stopping} evaluations")
    if improved:
        save_training_checkpoint(s, "best.pt")
    save_training_checkpoint(s, "last.pt")
    if s.on_evaluation is not None and s.dist.is_main:
        s.on_evaluation(p.step, metrics)
    return metrics


def stops_early(s: TrainState) -> bool:
    patience = s.cfg.trainer.early_stopping
    return bool(patience) and s.progress.evals_without_improvement >= patience


def save_training_checkpoint(s: TrainState, name: str) -> None:
    """Everything needed to use the model and to continue the run at this step (rank 0 writes)."""
    rngs = _gather(rng_state(), s.dist)  # every rank's RNG state, so that each resumes its own stream
    if not s.dist.is_main:
        return
    training = {"optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
                "scaler": s.scaler.state_dict(), "ema_updates": int(s.ema.n_averaged) if s.ema is not None else 0,
                "progress": vars(s.progress).copy(), "run_length": s.length.state_dict(), "rng": rngs,
                "resolution": s.resolution.state_dict(), "precision": s.precision.name}
    save_checkpoint(s.checkpoint_dir / name, Checkpoint(
        config=s.cfg.to_dict(), labels=s.labels, preset=s.preset, model=s.model.state_dict(),
        ema=s.ema.module.state_dict() if s.ema is not None else None, training=training))


def log_training(s: TrainState, bar: tqdm, loss: float, lr: float, images_per_s: float) -> None:
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
    if s.log is not None:
        s.log.log("train", s.progress.step, s.progress.epoch, {"loss": loss, "lr": lr, "images_per_s": images_per_s,
                                                               "train_seconds": s.length.trained_seconds()})


class Throughput:
    """Training images per second since the last `take()`."""

    def __init__(self) -> None:
        self.images, self.start = 0, time.perf_counter()

    def add(self, images: int) -> None:
        self.images += images

    def take(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.images, self.start = 0, now
        return rate


def _gather(value, dist: DistInfo) -> list:
    if not dist.enabled:
        return [value]
    gathered = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered
