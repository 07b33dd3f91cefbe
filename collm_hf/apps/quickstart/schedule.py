"""How the quickstart's two training stages share its time budget.

The recipe's step counts suit a 2-core machine of average speed, but 2-core machines differ about 2x in speed (the
same cold run took 530 s on one and would have taken ~860 s on another), and one machine's speed swung ~20 %
between runs. So under a budget (`QuickstartRecipe.time_budget_s`) each stage gets seconds rather than steps:
stage 1 `QuickstartRecipe.pair_time_share` of the seconds left for training, stage 2 all that is left once stage 1
has run. A stage runs until its seconds or its recipe steps run out, whichever comes first, and its cosine learning
rate follows whichever runs out first (`timed_cosine_schedule`), so it always ends at zero. On a machine fast
enough for every step, the recipe runs step for step.

Why not steps: timing a few steps before training and fitting step counts to the budget (an earlier version)
misjudged what the steps then took by tens of percent, both ways, so runs stopped far short of the budget or cut a
stage needlessly. The stages' seconds and the steps they ran go into `metrics.json`.

    >>> clock = StageClock(10.0, clock=iter([100.0, 100.0, 105.0]).__next__)  # starts at the first read
    >>> clock.fraction(), clock.fraction()
    (0.0, 0.5)
"""

import math
import time
from dataclasses import asdict, dataclass


@dataclass
class Schedule:
    """What the stages ran: their steps, and the seconds each was given (None without a budget)."""

    pair_steps: int
    triplet_steps: int
    pair_available_s: float | None = None
    triplet_available_s: float | None = None  # what was left once stage 1 had run
    stopped_at_deadline: bool = False  # a stage was cut short by the hard deadline (`quickstart_training.deadline_callback`)

    def to_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class StageClock:
    """The seconds a training stage may take, counted from the first time it is read (the learning-rate
    scheduler reads it when the Trainer builds it, just before the first step). `clock` is for tests."""

    def __init__(self, seconds: float, clock=time.perf_counter):
        self.seconds, self.clock, self.start = max(1e-6, float(seconds)), clock, None

    def fraction(self) -> float:
        """Share of the seconds used so far (may pass 1)."""
        if self.start is None:
            self.start = self.clock()
        return (self.clock() - self.start) / self.seconds


def timed_cosine_schedule(optimizer, warmup_steps: int, max_steps: int, stage_clock: StageClock):
    """`transformers`' cosine schedule with linear warm-up, whose progress is the larger of the steps' and the
    time's (`stage_clock`): a stage given seconds rather than steps still ends with its learning rate at zero,
    whatever the machine's speed does meanwhile. Warm-up goes by steps."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        by_time = stage_clock.fraction()  # read at every step, so the clock starts with the scheduler
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        by_steps = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(by_steps, by_time))))

    return LambdaLR(optimizer, factor)


__all__ = ["Schedule", "StageClock", "timed_cosine_schedule"]
