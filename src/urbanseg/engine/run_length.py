"""How many optimizer steps a run takes: planned from the config, fitted to a time budget.

`planned_steps` comes from `trainer.max_steps` (or `max_epochs` x steps per epoch). With
`trainer.max_minutes`, `total_steps` is fitted to the steps that fit in the budget, and the
schedule anneals to it, so the learning rate still decays by the end; a budget may shorten the
run, never lengthen it past the plan. A resumed run keeps the length it was fitted to. When steps
differ in cost (progressive resizing, `engine.resolution`), the length is fitted in cost units,
so that the dearer steps at the end are paid for from the start; when such a phase begins, its
steps are timed afresh and the run fitted to their real price (`new_phase`).

It also keeps the run's clock: `trained_seconds()` is wall-clock time spent training, net of
evaluations and checkpoints, summed over resumes (metrics.csv logs it with every row, so curves
can be drawn against minutes), and `next_evaluation` spaces evaluations in time when a budget is
set and `trainer.eval_every` is not.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional

from .distributed import broadcast_object


class RunLength:
    """After a warm-up (data-loader start-up, first allocations), time the steps and fit the run's
    length to the budget; refitted every `refit_every` steps at the pace of the latest steps, as
    the first ones are often slower: of about `pace_share` of the budget, since windows of a few
    seconds vary by 10% and more. The run may grow or shrink at every refit until it reaches its
    end: the schedule's decay goes on from where it is to the new length (`LRSchedule.refit`), so
    the learning rate does not jump. A new resolution phase starts the warm-up, timing and cadence
    again (`new_phase`). Time spent in evaluations (`paused()`) does not count."""

    warmup_steps, timed_steps, refit_every, pace_share = 5, 20, 50, 0.1
    # evaluations under a time budget: about `curve_points` of them, costing at most `eval_share` of it
    curve_points, eval_share, probe_steps = 30, 0.05, 10

    def __init__(self, planned_steps: int, max_minutes: Optional[float] = None, start_step: int = 0,
                 fitted_steps: Optional[int] = None, trained_seconds: float = 0.0,
                 units: Optional[Callable[[int, int, int], float]] = None):
        """`units(start, stop, total_steps)`: the cost of steps [start, stop) of a run of
        `total_steps`, in steps of the first kind (`ResolutionSchedule.units`); default, one a step."""
        self.planned_steps = planned_steps
        self.units = units or (lambda start, stop, total_steps: stop - start)
        self.fitted_steps = fitted_steps
        self.total_steps = planned_steps if fitted_steps is None else min(fitted_steps, planned_steps)
        self.max_seconds = max_minutes * 60 if max_minutes else None  # the budget, kept on resume
        self.budget_seconds = self.max_seconds if fitted_steps is None else None  # still to be fitted
        self.start_step, self.start = start_step, time.perf_counter()
        self.segment_step = start_step  # where the steps being timed began: the start, or a new phase
        self.prior_seconds = trained_seconds  # trained before this process started (a resumed run)
        self.marks: list[tuple[int, float]] = []  # (step, net seconds) at the refits the pace is timed over
        self.excluded = 0.0  # seconds in evaluations since the start
        self._paused_at: Optional[float] = None
        self.last_pause = 0.0  # seconds of the latest `paused()` block
        self.next_eval_step: Optional[int] = None  # time-spaced evaluations (see `time_spaced_evaluation_due`)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begin = self._paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._paused_at = None
            self.last_pause = time.perf_counter() - begin
            self.excluded += self.last_pause

    def trained_seconds(self) -> float:
        """Wall-clock seconds of training so far, net of evaluations (frozen while paused)."""
        now = self._paused_at if self._paused_at is not None else time.perf_counter()
        return self.prior_seconds + now - self.start - self.excluded

    def time_spaced_evaluation_due(self, step: int) -> bool:
        """With a budget: whether optimizer step `step` ends with an evaluation. The first comes a
        `curve_points`-th of the budget after the start (timed over `probe_steps` steps); each
        evaluation then schedules the next (`evaluated`). Rank 0's clock decides, at steps every
        rank reaches together, so all ranks evaluate at the same step."""
        if self.next_eval_step is None and step - self.start_step == self.probe_steps:
            first = self.start_step + self._steps_for(self.max_seconds / self.curve_points, step)
            self.next_eval_step = broadcast_object(max(first, step + 1))
        return self.next_eval_step is not None and step >= self.next_eval_step

    def evaluated(self, step: int) -> None:
        """After an evaluation at `step` (the latest `paused()` block): the next one a
        `curve_points`-th of the budget later, or later still so that evaluations cost at most
        `eval_share` of the time."""
        if self.max_seconds is None:
            return
        interval = max(self.max_seconds / self.curve_points, self.last_pause * (1 - self.eval_share) / self.eval_share)
        self.next_eval_step = broadcast_object(step + self._steps_for(interval, step))

    def _steps_for(self, seconds: float, step: int) -> int:
        """Optimizer steps that take about `seconds`, at this process's average pace so far."""
        per_step = (self.trained_seconds() - self.prior_seconds) / max(step - self.start_step, 1)
        return max(1, round(seconds / max(per_step, 1e-9)))

    def new_phase(self, step: int) -> None:
        """The steps from `step` on are a new resolution phase's, priced so far by their pixels
        only: time them afresh after a warm-up (a new loader, new shapes) and fit the run to them."""
        self.segment_step = step

    def refit(self, step: int) -> Optional[int]:
        """After optimizer step `step`: the run's new length where it is (re)computed, else None.
        It may grow as well as shrink until the end: a run held to the shortest length it was
        given stops early whenever the machine speeds up later."""
        if self.budget_seconds is None or step >= self.total_steps:
            return None  # at its end the learning rate has decayed: steps added now would be wasted
        now = time.perf_counter()
        net = now - self.excluded  # a clock that stops in evaluations
        since_segment = step - self.segment_step
        if since_segment == self.warmup_steps:
            self.marks = [(step, net)]
        first_fit = self.warmup_steps + self.timed_steps
        if since_segment != first_fit and (since_segment < first_fit or since_segment % self.refit_every):
            return None
        self.marks.append((step, net))
        while len(self.marks) > 2 and net - self.marks[1][1] >= self.max_seconds * self.pace_share:
            self.marks.pop(0)  # the window still spans pace_share of the budget without it
        mark_step, mark_net = self.marks[0]
        per_unit = (net - mark_net) / max(self.units(mark_step, step, self.total_steps), 1e-9)
        elapsed = net - self.start
        fitted = self._steps_within(step, max(self.budget_seconds - elapsed, 0.0) / per_unit)
        self.total_steps = self.fitted_steps = broadcast_object(fitted)  # every rank stops at rank 0's count
        return self.total_steps

    def _steps_within(self, step: int, units: float) -> int:
        """The longest run (at most the plan) whose steps after `step` cost at most `units`."""
        low, high = step, self.planned_steps  # the cost grows with the run's length: bisect
        while low < high:
            middle = (low + high + 1) // 2
            if self.units(step, middle, middle) <= units + 1e-9:
                low = middle
            else:
                high = middle - 1
        return low

    def state_dict(self) -> dict:
        return {"fitted_steps": self.fitted_steps, "trained_seconds": self.trained_seconds()}
