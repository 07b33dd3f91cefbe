"""`quickstart_schedule`: the recipe's steps where they fit the budget, both stages shortened alike where not."""

import doctest
import random
from types import SimpleNamespace

import pytest
import torch

from collm_hf import quickstart_schedule
from collm_hf.quickstart_schedule import MIN_SCALE, fit_schedule, scale_for


class LossModel(torch.nn.Module):
    """The smallest thing `time_steps` can train: `model(**batch).loss`; it also draws from the torch RNG."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        noise = torch.randn_like(x)
        return SimpleNamespace(loss=(self.linear(x + noise) ** 2).mean())


RECIPE = SimpleNamespace(pair_steps=750, triplet_steps=1900, learning_rate=1e-3)


def batches(n=4):
    return [lambda: {"x": torch.ones(16, 8)} for _ in range(n)]


def test_doctests():
    assert doctest.testmod(quickstart_schedule).failed == 0


@pytest.mark.parametrize("estimated, available, expected", [
    (100.0, 100.0, 1.0), (100.0, 99.0, 0.95), (200.0, 100.0, 0.5), (100.0, 0.0, MIN_SCALE), (100.0, -5.0, MIN_SCALE),
])
def test_scale_for(estimated, available, expected):
    assert scale_for(estimated, available) == pytest.approx(expected)


def test_no_budget_runs_the_recipe_untimed():
    schedule = fit_schedule(RECIPE, LossModel(), [], [], None)
    assert (schedule.pair_steps, schedule.triplet_steps, schedule.scale) == (750, 1900, 1.0)
    assert schedule.pair_step_s is None and schedule.estimated_training_s is None


def test_an_ample_budget_keeps_every_step():
    schedule = fit_schedule(RECIPE, LossModel(), batches(), batches(), 1e9)
    assert (schedule.pair_steps, schedule.triplet_steps, schedule.scale) == (750, 1900, 1.0)
    assert schedule.pair_step_s > 0 and schedule.triplet_step_s > 0
    assert schedule.estimated_training_s == pytest.approx(750 * schedule.pair_step_s + 1900 * schedule.triplet_step_s)


def test_a_short_budget_shortens_both_stages_by_one_factor():
    schedule = fit_schedule(RECIPE, LossModel(), batches(), batches(), 0.0)
    assert schedule.scale == MIN_SCALE
    assert (schedule.pair_steps, schedule.triplet_steps) == (round(750 * MIN_SCALE), round(1900 * MIN_SCALE))
    assert set(schedule.to_dict()) >= {"pair_steps", "triplet_steps", "scale", "estimated_training_s", "available_s"}


def test_timing_leaves_the_model_and_the_random_streams_as_they_were():
    model = LossModel()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    random.seed(5)
    fit_schedule(RECIPE, model, batches(), batches(), 1.0)
    after = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    assert torch.equal(after[0], torch.rand(3)) and after[1] == random.random()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
