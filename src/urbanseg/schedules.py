"""Learning-rate schedules as closed-form functions of the optimizer step.

`LRSchedule.lr(step)` gives the learning rate after `step` optimizer steps: an optional warmup
(linear or quadratic, from 0 to the base lr) in front of step, multistep, poly, cosine,
constant, plateau (drops by `gamma` after `patience` evaluations without improvement) or
inverse-square-root decay, never below `min_lr` after warmup. Counting happens in optimizer
steps; recipes may give step sizes, milestones and warmup in epochs (`unit: epoch`).

Poly and cosine decay over the run's steps. When a time budget changes the run's length midway
(`refit`), the decay goes on from where it is to the new end: its progress is linear in the
steps between the latest change and the end, so the learning rate never jumps up when the run
lengthens, nor down when it shortens. Without changes that is the closed form.
"""
from __future__ import annotations

import math
from typing import Optional

from .errors import ConfigError

SCHEDULES = ("constant", "step", "multistep", "poly", "cosine", "plateau", "inverse_sqrt")


class LRSchedule:
    def __init__(self, cfg, base_lr: float, total_steps: int, steps_per_epoch: int = 1):
        if cfg.name not in SCHEDULES:
            raise ConfigError(f"schedule.name: unknown schedule '{cfg.name}' (expected one of {', '.join(SCHEDULES)})")
        if cfg.unit not in ("step", "epoch"):
            raise ConfigError(f"schedule.unit: expected 'step' or 'epoch', got '{cfg.unit}'")
        if cfg.warmup_shape not in ("linear", "quadratic"):
            raise ConfigError(f"schedule.warmup_shape: expected 'linear' or 'quadratic', got '{cfg.warmup_shape}'")
        per = steps_per_epoch if cfg.unit == "epoch" else 1
        self.cfg = cfg
        self.base_lr = base_lr
        self.total_steps = max(int(total_steps), 1)
        self.warmup = int(cfg.warmup * per)
        self.step_size = max(int(cfg.step_size * per), 1)
        self.milestones = sorted(int(m * per) for m in cfg.milestones)
        self.plateau_drops = 0
        self.plateau_best: Optional[float] = None
        self.plateau_waited = 0
        # (step, progress of the decay there) a refitted run goes on from (`refit`); None: the
        # closed form from the end of warmup, which a resumed run recomputes from its own config
        self.anchor: Optional[tuple[int, float]] = None

    def refit(self, total_steps: int, step: int) -> None:
        """The run now ends after `total_steps` (a time budget refitted it after `step` steps)."""
        if step > self.warmup:
            self.anchor = (step, self.progress(step))
        self.total_steps = max(int(total_steps), 1)

    def progress(self, step: int) -> float:
        """The fraction of the decay done after `step`, 0 at the end of warmup and 1 at the end."""
        anchor_step, anchor_progress = self.anchor or (self.warmup, 0.0)
        done = max(step - anchor_step, 0) / max(self.total_steps - anchor_step, 1)
        return min(anchor_progress + (1 - anchor_progress) * done, 1.0)

    def lr(self, step: int) -> float:
        cfg, base = self.cfg, self.base_lr
        if step < self.warmup:
            fraction = (step + 1) / self.warmup
            return base * (fraction**2 if cfg.warmup_shape == "quadratic" else fraction)
        if cfg.name == "constant":
            lr = base
        elif cfg.name == "step":
            lr = base * cfg.gamma ** (step // self.step_size)
        elif cfg.name == "multistep":
            lr = base * cfg.gamma ** sum(step >= m for m in self.milestones)
        elif cfg.name == "poly":
            lr = cfg.min_lr + (base - cfg.min_lr) * (1 - self.progress(step)) ** cfg.power
        elif cfg.name == "cosine":
            lr = cfg.min_lr + (base - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))
        elif cfg.name == "plateau":
            lr = base * cfg.gamma**self.plateau_drops
        else:  # inverse_sqrt: continues the warmup peak, decaying as 1/sqrt(step)
            lr = base * math.sqrt(max(self.warmup, 1) / max(step + 1, 1))
        return max(lr, cfg.min_lr)

    def observe(self, value: float, higher_is_better: bool) -> None:
        """Report a monitored value after an evaluation (only the plateau schedule uses it)."""
        if self.cfg.name != "plateau":
            return
        better = self.plateau_best is None or (value > self.plateau_best if higher_is_better else value < self.plateau_best)
        if better:
            self.plateau_best, self.plateau_waited = value, 0
        else:
            self.plateau_waited += 1
            if self.plateau_waited > self.cfg.patience:
                self.plateau_drops += 1
                self.plateau_waited = 0

    def apply(self, optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"plateau_drops": self.plateau_drops, "plateau_best": self.plateau_best,
                "plateau_waited": self.plateau_waited, "anchor": list(self.anchor) if self.anchor else None}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_drops = state["plateau_drops"]
        self.plateau_best = state["plateau_best"]
        self.plateau_waited = state["plateau_waited"]
        anchor = state.get("anchor")  # absent in checkpoints from before refits were anchored
        self.anchor = (int(anchor[0]), float(anchor[1])) if anchor else None
