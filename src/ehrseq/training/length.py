"""A run's length and evaluation cadence in epochs, turned into optimizer steps once the data is known.

With few labelled examples (small k) an epoch is a handful of steps: 3 epochs at k=128 and batch 32 are 12 steps,
too few for any model to learn, and "4 evaluations per epoch with patience 4" then stops a run after 5 of them.
So a run set in epochs makes at least `min_steps` optimizer steps: each epoch is one pass over the examples, or
min_steps / epochs steps where that is longer, and evaluations, patience and warm-up, counted per epoch or as a
share of the run, stretch with it. Patience cannot end a run before `min_steps` either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Length:
    steps: int  # optimizer steps of the run
    eval_every: int  # steps between tuning evaluations (0: only at the end)
    patience: int | None  # tuning evaluations in a row without improvement before stopping (None: never)
    min_steps: int  # patience cannot stop the run before this step
    warmup_steps: int  # then linear decay over the rest of `steps`


def epoch_length(num_examples: int, batch_size: int, epochs: float | None = None, min_steps: int = 0) -> float:
    """Steps per epoch: one pass over the examples (a batch never exceeds them); for a run of `epochs`, at least
    min_steps / epochs, so that the run reaches min_steps."""
    one_pass = num_examples / min(batch_size, num_examples)
    return max(one_pass, min_steps / epochs) if epochs else one_pass


def run_length(num_examples: int, batch_size: int, max_steps: int, *, epochs: float | None = None,
               min_steps: int = 0, evals_per_epoch: int | None = None, eval_every: int = 0,
               patience: int | None = None, patience_epochs: float | None = None,
               warmup_steps: int | None = None) -> Length:
    """The train section's length fields (ehrseq_runner TrainSpec) in optimizer steps for `num_examples`.

    With `epochs`: max(ceil(epochs x examples / batch), min_steps) steps, max_steps an upper bound; without,
    max_steps and no floor. `evals_per_epoch` replaces `eval_every`, `patience_epochs` replaces `patience`
    (both per epoch as stretched, at least every step / one evaluation); warm-up defaults to 10% of the steps.
    """
    epoch = epoch_length(num_examples, batch_size, epochs, min_steps)
    floor = min_steps if epochs else 0
    steps = min(max_steps, max(math.ceil(epochs * num_examples / min(batch_size, num_examples)), floor)) \
        if epochs else max_steps
    if evals_per_epoch:
        eval_every = max(1, round(epoch / evals_per_epoch))
    if patience_epochs is not None:
        patience = max(1, round(patience_epochs * epoch / eval_every)) if eval_every else None
    return Length(steps, eval_every, patience, floor,
                  warmup_steps if warmup_steps is not None else max(1, steps // 10))
