"""Progressive resizing (`data.resolution_schedule`): which training sizes a step uses, and what
the steps of each phase cost.

Training at a low resolution first and at a higher one at the end buys many cheap steps and a
model that has seen its objects at the detail it will be scored at (fastai's progressive
resizing; Touvron et al., "Fixing the train-test resolution discrepancy", 2019). A phase starts
at a fraction of the run's optimizer steps (until it is entered: see below), so one schedule
serves step-, epoch- and time-limited runs alike. Under `trainer.max_minutes` the steps of a
larger phase cost more: `units` weighs each step by its pixels per image relative to the first
phase, and `RunLength` fits the run's length in those units, so the phases still fit in the
budget (the weights are an estimate until the larger steps are timed; each refit measures again).

A run never goes back to an earlier phase. Under a budget the run's length is refitted as the
steps are timed, and a dearer phase that turns out cheaper than its pixels said makes the run
longer, which would put the step the phase began at before its fraction again: the phase that
was entered stays (`follow`), and the steps each phase really began at (`entered`, kept in
checkpoints) are what the cost of the steps done and to come is counted with.
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
        self.entered = [0]  # the step each phase so far began at; the last is the run's current phase

    def __len__(self) -> int:
        return len(self.configs)

    def first_steps(self, total_steps: int) -> list[int]:
        """The step each phase begins at in a run of `total_steps`: where it began for the phases
        entered, at its fraction of the run (never before the current phase) for the others."""
        firsts = list(self.entered)
        for start in self.starts[len(firsts):]:
            firsts.append(max(round(start * total_steps), firsts[-1]))
        return firsts

    def phase(self, step: int, total_steps: int) -> int:
        """The phase of the optimizer step that follows `step` steps done, in a run of `total_steps`."""
        return max(i for i, first in enumerate(self.first_steps(total_steps)) if step >= first)

    def follow(self, step: int, total_steps: int) -> int:
        """The phase of the next optimizer step, entered (from `step` on) when it is a later one."""
        phase = self.phase(step, total_steps)
        self.entered += [step] * (phase + 1 - len(self.entered))
        return phase

    def state_dict(self) -> dict:
        return {"entered": list(self.entered)}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run's phases (a checkpoint from before `entered` was kept: from the first; a
        run resumed with fewer phases keeps those it has)."""
        self.entered = list(state.get("entered", [0]))[:len(self)] or [0]

    def data_config(self, phase: int) -> DataConfig:
        """The data section with this phase's sizes (what its training transform is built from)."""
        return self.configs[phase]

    def units(self, start: int, stop: int, total_steps: int) -> float:
        """The cost of steps [start, stop) of a run of `total_steps`, in first-phase steps."""
        firsts = self.first_steps(total_steps)
        ends = firsts[1:] + [stop]
        return sum(cost * max(0, min(stop, end) - max(start, begin))
                   for cost, begin, end in zip(self.costs, firsts, ends))


def _pixels(cfg: DataConfig) -> int:
    """Pixels of one training image: the crop, else the resize, else the loading size (0: unknown)."""
    size = cfg.crop or cfg.resize or cfg.load_size
    return int(size[0]) * int(size[1]) if size else 0
