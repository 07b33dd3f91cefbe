"""Fit the quickstart's training schedule into its time budget on the machine at hand.

The recipe's step counts are sized for a 2-core machine of average speed; 2-core machines differ about 2x in
speed (the same cold run took 530 s on one and would have taken ~860 s on another). Before training, `fit_schedule` times a few
steps of each stage on a throwaway copy of the model and, where the recipe's steps would not fit in the seconds
left, shortens both stages by one factor (in 5 % steps, so that run-to-run jitter rarely changes the schedule).
Where they fit, the recipe runs unchanged, step for step. Stage 2 then gets the seconds really left rather than
a step count (`quickstart_training.timed_cosine_schedule`: at most the recipe's steps, its cosine learning rate
following the steps or the time, whichever ends first): a step timed here before training misjudged what it then
took both ways (this machine: stage 2 timed 0.13-0.14 s and ran 0.16-0.17 s; timed again after stage 1, once
0.15 s and once 0.215 s against 0.167 s run, and that run ended 87 s early).
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
from dataclasses import asdict, dataclass

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
    triplet_available_s: float | None = None  # seconds given to stage 2 once stage 1 had run
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
    # stage then ran, in bursts; an estimate too low here costs stage 2 time (it takes what is left), not the budget.
    pair_s = time_steps(model, pair_batches, recipe.learning_rate, min) * STEP_TIME_MARGIN
    triplet_s = time_steps(model, triplet_batches, recipe.learning_rate, min) * STEP_TIME_MARGIN
    estimated = recipe.pair_steps * pair_s + recipe.triplet_steps * triplet_s
    scale = scale_for(estimated, max(0.0, available_s))
    return Schedule(max(1, round(recipe.pair_steps * scale)), max(1, round(recipe.triplet_steps * scale)), scale,
                    pair_s, triplet_s, estimated, available_s)


__all__ = ["Schedule", "fit_schedule", "scale_for", "time_steps"]
