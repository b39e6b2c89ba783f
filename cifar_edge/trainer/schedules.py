"""Learning-rate schedules and the time budget, as Keras callbacks.

The one-cycle schedule is driven by *progress*, the larger of steps done /
steps planned and time spent / time budget.  With `--time-budget` the
warm-up and the cosine anneal are therefore fitted to the minutes the user
can spare, and the run ends on time with the learning rate at its floor.
"""

from __future__ import annotations

import math
import time

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


class Progress(keras.callbacks.Callback):
    """Tracks the fraction of the run done; stops training once a time budget is spent."""

    def __init__(self, total_steps: int, budget_s: float | None = None) -> None:
        super().__init__()
        self.total_steps = max(1, total_steps)
        self.budget_s = budget_s
        self.steps = 0
        self.start = time.perf_counter()
        self.stopped_by_budget = False

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    @property
    def fraction(self) -> float:
        done = self.steps / self.total_steps
        if self.budget_s:
            done = max(done, (time.perf_counter() - self.start) / self.budget_s)
        return min(done, 1.0)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.budget_s and time.perf_counter() - self.start >= self.budget_s:
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
