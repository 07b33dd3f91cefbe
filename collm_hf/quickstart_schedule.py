"""Fit the quickstart's training schedule into its time budget on the machine at hand.

The recipe's step counts are sized for a 2-core machine of average speed; 2-core machines differ about 2x in
speed (the same cold run took 530 s on one and would have taken ~860 s on another). Before training, `fit_schedule` times a few
steps of each stage on a throwaway copy of the model and, where the recipe's steps would not fit in the seconds
left, shortens both stages by one factor (in 5 % steps, so that run-to-run jitter rarely changes the schedule).
Where they fit, the recipe runs unchanged, step for step. Before stage 2, `refit_triplet_steps` times its steps
again on the stage-1 model and gives stage 2 the steps that fit in the seconds really left (at most the recipe's):
timed before training, right after the world is written, a step measured up to 40 % dearer than it ran (this
machine, seed 1: 0.19 s per stage-2 step timed, 0.14 s run), and the run ended 100 s early. (Not pending disk
writes: a throwaway probe found none left and a sync before the timing changed nothing; the cause is not known.)
The chosen schedule goes into `metrics.json`.

    >>> scale_for(estimated_s=756.0, available_s=500.0)
    0.65
    >>> scale_for(estimated_s=400.0, available_s=500.0)
    1.0
"""

import copy
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch

# Steps timed per stage after one warm-up step, and the margin over the measured per-step time (the Trainer's
# own work per step: logging, the scheduler, saving the stage-1 model). A step is timed with its rows read and
# collated, as the Trainer's dataloader does: timed without them, stage 2 ran 15 % over its estimate (collation)
# and stage 1 25 % (reading the pairs decodes their images).
TIMED_STEPS = 5
STEP_TIME_MARGIN = 1.05
SCALE_QUANTUM = 0.05
MIN_SCALE = 0.25


@dataclass
class Schedule:
    """The steps the stages will run and why: `scale` = the fraction of the recipe's steps kept."""

    pair_steps: int
    triplet_steps: int
    scale: float
    pair_step_s: float | None = None  # measured seconds per step (None when nothing was measured)
    triplet_step_s: float | None = None
    estimated_training_s: float | None = None  # of the recipe's full schedule
    available_s: float | None = None
    triplet_refit_step_s: float | None = None  # stage 2's step time measured again before it ran
    triplet_available_s: float | None = None  # seconds left for stage 2 then
    stopped_at_deadline: bool = False  # a stage was cut short by the hard deadline (`quickstart_training.deadline_callback`)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def scale_for(estimated_s: float, available_s: float) -> float:
    """The largest multiple of `SCALE_QUANTUM` (at most 1) that brings `estimated_s` within `available_s`."""
    if estimated_s <= available_s:
        return 1.0
    scale = math.floor(available_s / estimated_s / SCALE_QUANTUM + 1e-9) * SCALE_QUANTUM
    return round(max(MIN_SCALE, scale), 2)


def time_steps(model, batches: list, learning_rate: float, statistic=statistics.median) -> float:
    """Seconds of a training step over `batches[1:]` (their median, or `statistic`) on a copy of `model`: `batch()`
    (each item of `batches` is a function that collates one batch, as the Trainer's dataloader does every step),
    forward, backward, AdamW.

    The copy is thrown away and the RNG states are restored, so the real training is unchanged by the timing.
    """
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    try:
        trial = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW([p for p in trial.parameters() if p.requires_grad], lr=learning_rate)
        times = []
        for batch in batches:
            start = time.perf_counter()
            trial(**batch()).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        del trial, optimizer
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
    return statistic(times[1:] or times)


def fit_schedule(recipe, model, pair_batches: list, triplet_batches: list, available_s: float | None) -> Schedule:
    """The schedule to run: the recipe's, or both stages shortened by one factor to fit `available_s`.

    Args:
        recipe: a `QuickstartRecipe` (its `pair_steps`, `triplet_steps`, `learning_rate`).
        model: the freshly built model (copied for the timing, never changed).
        pair_batches / triplet_batches: `1 + TIMED_STEPS` functions per stage, each collating one batch.
        available_s: seconds the two stages may take; None = no budget (the recipe's steps, nothing timed).
    """
    if available_s is None:
        return Schedule(recipe.pair_steps, recipe.triplet_steps, 1.0)
    # The fastest step, not the median: right after the world is written, steps timed up to 40 % dearer than the
    # stage then ran, in bursts; an estimate too low here costs stage 2 steps (`refit_triplet_steps`), not the budget.
    pair_s = time_steps(model, pair_batches, recipe.learning_rate, min) * STEP_TIME_MARGIN
    triplet_s = time_steps(model, triplet_batches, recipe.learning_rate, min) * STEP_TIME_MARGIN
    estimated = recipe.pair_steps * pair_s + recipe.triplet_steps * triplet_s
    scale = scale_for(estimated, max(0.0, available_s))
    return Schedule(max(1, round(recipe.pair_steps * scale)), max(1, round(recipe.triplet_steps * scale)), scale,
                    pair_s, triplet_s, estimated, available_s)


def refit_triplet_steps(schedule: Schedule, recipe, model, triplet_batches: list, available_s: float | None) -> Schedule:
    """Stage 2's steps re-fitted, once stage 1 has run, to the `available_s` seconds left for it: timed again on
    the stage-1 `model` (copied, never changed); the largest multiple of `SCALE_QUANTUM` of the recipe's steps (at
    most all of them, at least `MIN_SCALE`) that fits. Without a budget (`schedule.available_s` None) nothing changes.
    """
    if schedule.available_s is None or available_s is None:
        return schedule
    triplet_s = time_steps(model, triplet_batches, recipe.learning_rate) * STEP_TIME_MARGIN
    scale = scale_for(recipe.triplet_steps * triplet_s, max(0.0, available_s))
    return replace(schedule, triplet_steps=max(1, round(recipe.triplet_steps * scale)), triplet_refit_step_s=triplet_s,
                   triplet_available_s=available_s)


__all__ = ["Schedule", "fit_schedule", "refit_triplet_steps", "scale_for", "time_steps"]
