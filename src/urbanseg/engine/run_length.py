"""How many optimizer steps a run takes: planned from the config, fitted to a time budget.

`planned_steps` comes from `trainer.max_steps` (or `max_epochs` x steps per epoch). With
`trainer.max_minutes`, `total_steps` is fitted to the steps that fit in the budget, and the
schedule anneals to it, so the learning rate still decays by the end; a budget may shorten the
run, never lengthen it past the plan. A resumed run keeps the length it was fitted to.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

from .distributed import broadcast_object


class RunLength:
    """After a warm-up (data-loader start-up, first allocations), time the steps and fit the run's
    length to the budget; refitted every `refit_every` steps from the latest steps, as the first
    ones are often slower. Time spent in evaluations (`paused()`) does not count."""

    warmup_steps, timed_steps, refit_every = 5, 20, 50

    def __init__(self, planned_steps: int, max_minutes: Optional[float] = None, start_step: int = 0,
                 fitted_steps: Optional[int] = None):
        self.planned_steps = planned_steps
        self.fitted_steps = fitted_steps
        self.total_steps = planned_steps if fitted_steps is None else min(fitted_steps, planned_steps)
        self.budget_seconds = max_minutes * 60 if max_minutes and fitted_steps is None else None
        self.start_step, self.start = start_step, time.perf_counter()
        self.timer_step: Optional[int] = None
        self.timer_start, self.timer_excluded = 0.0, 0.0
        self.excluded = 0.0  # seconds in evaluations since the start

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - begin

    def refit(self, step: int) -> Optional[int]:
        """After optimizer step `step`: the run's new length where it is (re)computed, else None.
        It may grow only in the first half of the budget: later, a longer poly schedule would
        raise the learning rate again near the end."""
        if self.budget_seconds is None:
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
        fitted = min(step + max(int((self.budget_seconds - elapsed) / per_step), 0), self.planned_steps)
        if since_start != first_fit and elapsed > self.budget_seconds / 2:
            fitted = min(fitted, self.total_steps)
        self.total_steps = self.fitted_steps = broadcast_object(fitted)  # every rank stops at rank 0's count
        return self.total_steps

    def state_dict(self) -> dict:
        return {"fitted_steps": self.fitted_steps}
