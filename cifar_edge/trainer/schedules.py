"""Learning-rate schedules and the time budget, as Keras callbacks.

The one-cycle schedule is driven by *progress*, steps done / steps planned.
With `--time-budget` alone the run times its first steps and plans the whole
epochs that fit, so the warm-up and the cosine anneal are fitted to the minutes
the user can spare and the run ends on time with the learning rate at its
floor.  With an epoch count as well (a preset's or `--epochs`) the count is the
plan and the budget a hard stop, which on a slow machine ends the run early.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import keras

WARMUP_FRACTION = 0.15
FINAL_LR_FRACTION = 0.0


def one_cycle_lr(progress: float, peak: float) -> float:
    """Linear warm-up from peak/10 to peak, then cosine down to peak * FINAL_LR_FRACTION."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP_FRACTION:
        return peak * (0.1 + 0.9 * progress / WARMUP_FRACTION)
    t = (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION)
    low = peak * FINAL_LR_FRACTION
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * t))


PROBE_STEPS = 12  # steps a budgeted run times, at the schedule's first rate, before it plans
# A plan may overrun the budget by this factor: the probe's estimate wanders by +-10 % on a shared
# VM, and an epoch count that flips with it would make two runs of one seed differ.  An overrun
# is cut by the hard stop after >= 91 % of the schedule, where one-cycle's rate is < 3 % of peak.
PLAN_OVERRUN = 1.1


class Progress(keras.callbacks.Callback):
    """Tracks the fraction of the run done; fits whole epochs to a time budget and stops on time.

    Without a budget, progress is steps done / `total_steps`.  With one, the first
    `PROBE_STEPS` steps are timed (the first, which traces the graph, left out) and the run
    plans the whole epochs that fit the budget (give or take `PLAN_OVERRUN`), counting
    `epoch_overhead_s` (validation) per epoch; from then on progress is steps done / planned
    steps, so the schedule depends on the plan, not on the clock, and two runs that plan the
    same epochs take the same steps.  The budget stays a hard stop should the machine slow down.  With `fit_epochs=False` the plan is
    `total_steps` whatever the probe says (a preset's own epoch count: the budget only guards it),
    so runs of one seed take the same steps even when the machine's speed wanders.
    """

    def __init__(self, total_steps: int, budget_s: float | None = None, steps_per_epoch: int = 1,
                 epoch_overhead_s: float = 0.0, echo: Callable[[str], None] | None = None,
                 fit_epochs: bool = True) -> None:
        super().__init__()
        self.total_steps = self.cap_steps = max(1, total_steps)
        self.fit_epochs = fit_epochs
        self.echo = echo
        self.budget_s = budget_s
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epoch_overhead_s = epoch_overhead_s
        self.planned_epochs: int | None = None
        self.steps = 0
        self.start = self._first_step_end = time.perf_counter()
        self.stopped_by_budget = False

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    @property
    def fraction(self) -> float:
        if self.budget_s and self.planned_epochs is None:
            return 0.0  # still probing
        return min(self.steps / self.total_steps, 1.0)

    def _plan(self, now: float) -> None:
        timed = self.steps - 1
        step_s = (now - self._first_step_end) / timed if timed else now - self.start
        epoch_s = self.steps_per_epoch * step_s + self.epoch_overhead_s
        # the probe's own steps at the measured rate; what tracing cost beyond that is gone
        available = self.budget_s - (now - self.start) + self.steps * step_s
        fitting = max(1, int(available * PLAN_OVERRUN // epoch_s)) if self.fit_epochs else math.inf
        self.total_steps = min(self.cap_steps, fitting * self.steps_per_epoch)
        self.planned_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if self.echo:
            self.echo(f"plan: {self.planned_epochs} epochs of {self.steps_per_epoch} steps "
                      f"({step_s:.3f}s a step, ~{epoch_s:.0f}s an epoch with validation)")

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if not self.budget_s:
            return
        now = time.perf_counter()
        if self.steps == 1:
            self._first_step_end = now
        if self.planned_epochs is None and self.steps >= min(PROBE_STEPS, self.steps_per_epoch):
            self._plan(now)
        if self.planned_epochs is not None and self.steps >= self.total_steps:
            self.stopped_by_budget = self.total_steps < self.cap_steps  # the plan, not the epoch cap, ended it
            self.model.stop_training = True
        if now - self.start >= self.budget_s:
            self.stopped_by_budget = True
            self.model.stop_training = True


class OneCycle(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch from `progress.fraction`."""

    def __init__(self, progress: Progress, peak: float) -> None:
        super().__init__()
        self.progress = progress
        self.peak = peak

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(one_cycle_lr(self.progress.fraction, self.peak))
