"""The time-budget plan (schedules.Progress) on a simulated clock: whole epochs, then steps decide."""

from __future__ import annotations

import pytest

from cifar_edge.trainer import schedules


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Model:
    stop_training = False


def _run(monkeypatch, step_s, budget_s, steps_per_epoch=20, overhead_s=5.0, cap_steps=1000, first_step_s=4.0,
         steps=10_000, fit_epochs=True):
    clock = _Clock()
    monkeypatch.setattr(schedules.time, "perf_counter", clock)
    lines = []
    progress = schedules.Progress(cap_steps, budget_s, steps_per_epoch, overhead_s, echo=lines.append,
                                  fit_epochs=fit_epochs)
    progress.set_model(_Model())
    progress.on_train_begin()
    fractions = []
    for step in range(steps):
        fractions.append(progress.fraction)
        clock.now += first_step_s if step == 0 else step_s
        progress.on_train_batch_end(step)
        if step % steps_per_epoch == steps_per_epoch - 1:
            clock.now += overhead_s
        if progress.model.stop_training:
            break
    return progress, fractions, lines


def test_budget_plans_whole_epochs_and_stops_after_them(monkeypatch):
    # 1 s a step (4 s for the first: tracing), 20 steps + 5 s validation an epoch: 25 s;
    # 110 s less the 3 s of tracing holds 4 epochs (4.7 with the allowed overrun).
    progress, fractions, lines = _run(monkeypatch, step_s=1.0, budget_s=110.0)
    assert progress.planned_epochs == 4 and progress.total_steps == 80
    assert len(fractions) == 80  # stopped after the 4th epoch's last step
    assert fractions[:schedules.PROBE_STEPS] == [0.0] * schedules.PROBE_STEPS  # the first rate while probing
    assert fractions[40] == pytest.approx(40 / 80)
    assert progress.stopped_by_budget is True
    assert lines and "4 epochs" in lines[0]


def test_epoch_cap_is_kept_and_is_not_a_budget_stop(monkeypatch):
    progress, fractions, _ = _run(monkeypatch, step_s=1.0, budget_s=1000.0, cap_steps=30)
    assert progress.total_steps == 30 and len(fractions) == 30
    assert progress.stopped_by_budget is False


def test_a_slower_machine_still_stops_on_time(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(schedules.time, "perf_counter", clock)
    progress = schedules.Progress(1000, 100.0, 10, 5.0)
    progress.set_model(_Model())
    progress.on_train_begin()
    step = 0
    while not progress.model.stop_training:
        clock.now += 1.0 if step < schedules.PROBE_STEPS else 3.0  # slows down after planning
        progress.on_train_batch_end(step)
        step += 1
        # the schedule keeps to the plan, not to the clock
        assert progress.planned_epochs is None or progress.fraction == pytest.approx(step / 70)
    assert progress.planned_epochs == 7  # 100 s / 15 s an epoch, times PLAN_OVERRUN
    assert clock.now - 1000.0 <= 100.0 + 3.0  # the budget is still a hard stop
    assert progress.stopped_by_budget and step < progress.total_steps


def test_no_budget_is_steps_over_total(monkeypatch):
    progress, fractions, _ = _run(monkeypatch, step_s=1.0, budget_s=None, cap_steps=20)
    assert progress.planned_epochs is None
    assert fractions[10] == pytest.approx(0.5) and fractions[0] == 0.0
    assert len(fractions) == 10_000  # Progress never stops an unbudgeted run: fit's epochs do


@pytest.mark.parametrize("step_s", [0.898, 0.952, 1.135, 1.373])
def test_a_preset_epoch_count_is_the_plan_whatever_the_probe(monkeypatch, step_s):
    # Probes measured on the 2-core reference VM within one hour, for edge's default: 11 epochs of
    # 88 steps in a 19-minute budget (1,077 s for training).  The preset's count is the plan for all
    # of them, so runs of one seed take the same steps; the budget only guards it.
    from cifar_edge.presets import RECIPES

    epochs = RECIPES["edge"].epochs
    progress, fractions, _ = _run(monkeypatch, step_s=step_s, budget_s=1077.0, steps_per_epoch=88,
                                  overhead_s=3.3, cap_steps=epochs * 88, first_step_s=3.0, fit_epochs=False)
    assert progress.planned_epochs == epochs == 11
    assert fractions[500] == pytest.approx(500 / (11 * 88))
    # at 1.135 s a step and more, 11 epochs do not fit: the budget stops the run in its last quarter
    assert progress.stopped_by_budget is (step_s > 1.1)
    assert len(fractions) >= 0.75 * 11 * 88
