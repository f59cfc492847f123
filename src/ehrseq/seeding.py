"""Independent random streams derived from (seed, purpose, index), so no stream depends on history."""

from __future__ import annotations

import numpy as np

EPOCH_ORDER, TRAIN_STEP, EVALUATION, REPLICATE, LABEL_BUDGET, TUNING_BUDGET = 0, 1, 2, 3, 4, 5  # purposes


def derive_seed(seed: int, purpose: int, index: int = 0) -> int:
    """A 63-bit seed for the `index`-th use of `purpose` (e.g. the masks and dropout of step 1234)."""
    return int(np.random.SeedSequence([seed, purpose, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))
