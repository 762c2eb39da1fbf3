"""Progressive resizing (`data.resolution_schedule`): which training sizes a step uses, and what
the steps of each phase cost.

Training at a low resolution first and at a higher one at the end buys many cheap steps and a
model that has seen its objects at the detail it will be scored at (fastai's progressive
resizing; Touvron et al., "Fixing the train-test resolution discrepancy", 2019). A phase starts
at a fraction of the run's optimizer steps, so one schedule serves step-, epoch- and time-limited
runs alike. Under `trainer.max_minutes` the steps of a larger phase cost more: `units` weighs each
step by its pixels per image relative to the first phase, and `RunLength` fits the run's length
in those units, so the phases still fit in the budget (the weights are an estimate until the
larger steps are timed; each refit measures again).
"""
from __future__ import annotations

import dataclasses

from ..config import DataConfig
from ..data import config_size
from ..errors import ConfigError


class ResolutionSchedule:
    """Phase 0 is the data section's own sizes; phase i >= 1 is `data.resolution_schedule[i - 1]`."""

    def __init__(self, cfg: DataConfig):
        self.starts = [0.0]
        self.configs = [cfg]
        for index, phase in enumerate(cfg.resolution_schedule):
            key = f"data.resolution_schedule[{index}]"
            if not 0 < phase.start < 1 or phase.start <= self.starts[-1]:
                raise ConfigError(f"{key}.start: expected a fraction of the run's steps in (0, 1), after the "
                                  f"previous phase's start, got {phase.start}")
            config_size(phase.resize, f"{key}.resize")
            config_size(phase.crop, f"{key}.crop")
            if phase.resize is None and phase.crop is None:
                raise ConfigError(f"{key}: expected a resize or a crop (or both) for the phase")
            self.starts.append(phase.start)
            self.configs.append(dataclasses.replace(cfg, resize=phase.resize or cfg.resize, crop=phase.crop or cfg.crop,
                                                    resolution_schedule=[]))
        base = _pixels(cfg)
        self.costs = [(_pixels(c) / base) if base and _pixels(c) else 1.0 for c in self.configs]

    def __len__(self) -> int:
        return len(self.configs)

    def first_step(self, phase: int, total_steps: int) -> int:
        return round(self.starts[phase] * total_steps)

    def phase(self, step: int, total_steps: int) -> int:
        """The phase of the optimizer step that follows `step` steps done, in a run of `total_steps`."""
        return max(i for i in range(len(self)) if step >= self.first_step(i, total_steps))

    def data_config(self, phase: int) -> DataConfig:
        """The data section with this phase's sizes (what its training transform is built from)."""
        return self.configs[phase]

    def units(self, start: int, stop: int, total_steps: int) -> float:
        """The cost of steps [start, stop) of a run of `total_steps`, in first-phase steps."""
        cost = 0.0
        for i in range(len(self)):
            end = self.first_step(i + 1, total_steps) if i + 1 < len(self) else stop
            begin = self.first_step(i, total_steps)
            cost += self.costs[i] * max(0, min(stop, end) - max(start, begin))
        return cost


def _pixels(cfg: DataConfig) -> int:
    """Pixels of one training image: the crop, else the resize, else the loading size (0: unknown)."""
    size = cfg.crop or cfg.resize or cfg.load_size
    return int(size[0]) * int(size[1]) if size else 0
