"""A run's length and evaluation cadence in epochs, turned into optimizer steps once the data is known."""

from __future__ import annotations

import math


def epoch_steps(epochs: float, num_examples: int, batch_size: int) -> int:
    """ceil(epochs x examples / batch): the steps of `epochs` passes (a batch never exceeds the examples)."""
    return math.ceil(epochs * num_examples / min(batch_size, num_examples))


def eval_interval(evals_per_epoch: int, num_examples: int, batch_size: int) -> int:
    """Steps between tuning evaluations for about `evals_per_epoch` of them per epoch (at least every step)."""
    return max(1, round(num_examples / min(batch_size, num_examples) / evals_per_epoch))
