"""Learning-rate schedules over the whole federated run, the way transformers defines them.

The step count is global: a client's k-th local step (k = 0..K-1) of round t (t = 1..T) is optimiser step
s = (t - 1) * K + k of T * K, the same for every client whether or not it took part in earlier rounds,
and computed from the round number, so a resumed run continues the schedule exactly.

  constant  lr                                     (after warmup)
  linear    lr * (S - s) / (S - W)                 (transformers.get_linear_schedule_with_warmup)
  cosine    lr * 0.5 * (1 + cos(pi * (s - W) / (S - W)))   (get_cosine_schedule_with_warmup, 0.5 cycles)
with a linear warmup lr * s / W over the first W steps (train.warmup_steps), S = T * K.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The multiplier of the base learning rate at 0-based optimiser step `step` of `total`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def global_step(rnd: int, local_step: int, local_steps: int) -> int:
    """The 0-based optimiser step of local step `local_step` (0-based) in round `rnd` (1-based)."""
    return (rnd - 1) * local_steps + local_step
