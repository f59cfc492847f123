"""Percentile bootstrap over subjects: the unit that was sampled is the patient, not the token nor the row.

A subject with several prediction times (ACES labels) gives several correlated rows; resampling rows would
treat them as independent and make intervals too narrow, so with `groups` (each row's subject id) whole
subjects are drawn with replacement, each bringing all its rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_draws(
    metric_fn: Callable[[np.ndarray | None], dict[str, float]],
    num_subjects: int,
    *,
    num_resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every metric `metric_fn(rows)` returns, once per resample of subjects (drawn with replacement).

    `num_subjects` counts the rows; `groups` (N,) names each row's subject, so that a subject's rows are drawn
    together. Without it, or when every row is its own subject, rows are drawn one by one (the same draws)."""
    rng = np.random.default_rng(seed)
    draw_rows = _subject_sampler(num_subjects, groups)
    draws: dict[str, list[float]] = {}
    for _ in range(num_resamples):
        rows = draw_rows(rng)
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
    groups: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """95% intervals for every metric `metric_fn(rows)` returns; `rows` indexes the rows of resampled subjects."""
    draws = bootstrap_draws(metric_fn, num_subjects, num_resamples=num_resamples, seed=seed, groups=groups)
    alpha = (1 - level) / 2
    # A resample where a metric is undefined (one class only: no AUROC) gives NaN and is skipped.
    return {name: [float(np.nanquantile(v, alpha)), float(np.nanquantile(v, 1 - alpha))]
            for name, v in draws.items() if not np.isnan(v).all()}


def _subject_sampler(num_rows: int, groups: np.ndarray | None) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one resample's row indices: subjects with replacement, each with all its rows."""
    if groups is None or len(np.unique(groups)) == num_rows:
        return lambda rng: rng.integers(0, num_rows, num_rows)
    if len(groups) != num_rows:
        raise ValueError(f"groups names {len(groups)} rows, expected {num_rows}")
    _, subject = np.unique(groups, return_inverse=True)  # (N,) subject index of each row
    by_subject = np.argsort(subject, kind="stable")  # (N,) rows, grouped by subject
    counts = np.bincount(subject)  # (G,) rows per subject
    starts = np.cumsum(counts) - counts  # (G,) first position of each subject in by_subject

    def draw(rng: np.random.Generator) -> np.ndarray:
        chosen = rng.integers(0, len(counts), len(counts))  # (G,) subjects
        lengths = counts[chosen]
        offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return by_subject[np.repeat(starts[chosen], lengths) + offset]

    return draw
