"""Percentile bootstrap over subjects: the unit that was sampled is the patient, not the token."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_draws(
    metric_fn: Callable[[np.ndarray | None], dict[str, float]],
    num_subjects: int,
    *,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every metric `metric_fn(rows)` returns, once per resample of subjects (rows drawn with replacement)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(num_resamples):
        rows = rng.integers(0, num_subjects, num_subjects)
        for name, value in metric_fn(rows).items():
            draws.setdefault(name, []).append(value)
    return {name: np.asarray(v, dtype=float) for name, v in draws.items()}


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray | None], dict[str, float]],
    num_subjects: int,
    *,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% intervals for every metric `metric_fn(rows)` returns; `rows` indexes resampled subjects."""
    draws = bootstrap_draws(metric_fn, num_subjects, num_resamples=num_resamples, seed=seed)
    alpha = (1 - level) / 2
    # A resample where a metric is undefined (one class only: no AUROC) gives NaN and is skipped.
    return {name: [float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha))]
            for name, v in draws.items() if not np.isnan(v).all()}
