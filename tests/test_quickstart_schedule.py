"""`quickstart_schedule`: a stage given seconds follows the steps or the time, whichever runs out first."""

import doctest

import pytest
import torch

from collm_hf.apps.quickstart import schedule as quickstart_schedule
from collm_hf.apps.quickstart.schedule import Schedule, StageClock, timed_cosine_schedule


def test_doctests():
    assert doctest.testmod(quickstart_schedule).failed == 0


def test_timed_cosine_schedule_follows_the_steps_or_the_time_whichever_is_further():
    from transformers import get_cosine_schedule_with_warmup

    now = [10.0]
    optimizer = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = timed_cosine_schedule(optimizer(), 2, 12, StageClock(100.0, clock=lambda: now[0])).lr_lambdas[0]
    reference = get_cosine_schedule_with_warmup(optimizer(), 2, 12).lr_lambdas[0]
    assert [factor(step) for step in range(13)] == pytest.approx([reference(step) for step in range(13)])  # no time used
    assert factor(7) == pytest.approx(0.5)  # half the steps after warm-up
    now[0] = 60.0  # half the seconds used
    assert factor(3) == pytest.approx(0.5) and factor(10) == pytest.approx(reference(10))  # steps further on: steps
    assert factor(1) == pytest.approx(0.5)  # warm-up goes by steps
    now[0] = 110.0
    assert factor(3) == pytest.approx(0.0)


def test_stage_clock_starts_when_first_read_and_never_divides_by_zero():
    now = [5.0]
    clock = StageClock(0.0, clock=lambda: now[0])
    assert clock.fraction() == 0.0
    now[0] = 5.5
    assert clock.fraction() > 1.0


def test_schedule_rounds_seconds_for_metrics_json():
    schedule = Schedule(640, 1500, 226.54321, None, False)
    assert schedule.to_dict() == {"pair_steps": 640, "triplet_steps": 1500, "pair_available_s": 226.5,
                                  "triplet_available_s": None, "stopped_at_deadline": False}
