"""Paired bootstrap: is one model's held-out figure really different from another's on the same patients?

Both models scored the same subjects, so their errors are correlated; resampling subjects once and scoring both
models on each resample keeps that pairing, which gives a much tighter interval for the difference than two
separate intervals would. The p-value inverts the percentile interval: the smallest two-sided level at which the
interval of the difference would exclude 0, so "CI excludes 0" and "p < 0.05" agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from ehrseq.errors import InputError
from ehrseq.evaluation.bootstrap import bootstrap_draws
from ehrseq.evaluation.next_visit import NextVisitPredictions
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions

Predictions = BinaryPredictions | SurvivalPredictions | NextVisitPredictions
OUTCOMES = {BinaryPredictions: ("labels",), SurvivalPredictions: ("events", "times"),
            NextVisitPredictions: ("targets",)}  # what both runs must agree on for a shared row
MetricFn = Callable[[np.ndarray | None], dict[str, float]]


@dataclass(frozen=True)
class PairedDifference:
    metric: str
    baseline: float
    other: float
    difference: float  # other - baseline
    ci: tuple[float, float]
    p_value: float  # two-sided, H0: no difference
    num_subjects: int


def paired_bootstrap(baseline: MetricFn, other: MetricFn, num_subjects: int, *, metrics: Iterable[str] | None = None,
                     num_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                     groups: np.ndarray | None = None) -> dict[str, PairedDifference]:
    """other - baseline for each metric both give, from one resample of subjects per draw (rows index both).

    Resamples where a metric is undefined (one class only) are dropped, as in `bootstrap_ci`.
    """
    point_a, point_b = baseline(None), other(None)
    names = [m for m in (metrics if metrics is not None else point_a) if m in point_a and m in point_b]

    def difference(rows: np.ndarray | None) -> dict[str, float]:
        a, b = baseline(rows), other(rows)
        return {m: b[m] - a[m] for m in names}

    draws = bootstrap_draws(difference, num_subjects, num_resamples=num_resamples, seed=seed, groups=groups)
    out = {}
    for m in names:
        d = difference_from_draws(m, point_a[m], point_b[m], draws[m], num_subjects, level)
        if d is not None:
            out[m] = d
    return out


def difference_from_draws(metric: str, baseline: float, other: float, draws: np.ndarray, num_subjects: int,
                          level: float = 0.95) -> PairedDifference | None:
    """Interval and p-value of other - baseline from its paired draws (NaN draws dropped); None if none is left."""
    d = draws[~np.isnan(draws)]
    if not len(d):
        return None
    alpha = (1 - level) / 2
    tail = min((d <= 0).sum(), (d >= 0).sum())
    return PairedDifference(
        metric=metric, baseline=baseline, other=other, difference=other - baseline,
        ci=(float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))),
        p_value=float(min(1.0, 2 * (tail + 1) / (len(d) + 1))), num_subjects=num_subjects)


def join_predictions(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both runs' predictions on the rows they share (same subject_id and prediction_time), in one order.

    InputError when they share no row, are of different kinds, or disagree on a shared row's outcome
    (then they were not scored on the same patients, whatever the ids say).
    """
    a, b = align_predictions([a, b])
    return a, b


def align_predictions(runs: Sequence[Predictions]) -> list[Predictions]:
    """Every run's predictions on the rows all of them share, in the first run's order (see join_predictions)."""
    first = runs[0]
    for other in runs[1:]:
        if type(other) is not type(first):
            raise InputError(f"cannot pair {type(first).__name__} with {type(other).__name__}")
        if isinstance(first, NextVisitPredictions) and first.codes != other.codes:
            raise InputError("the runs predict different code vocabularies")
    indexes = [{key: i for i, key in enumerate(_keys(p))} for p in runs]
    shared = [key for key in _keys(first) if all(key in index for index in indexes[1:])]
    if not shared:
        raise InputError("the runs share no held-out (subject_id, prediction_time)")
    aligned = [_take(p, np.array([index[key] for key in shared])) for p, index in zip(runs, indexes, strict=True)]
    for other in aligned[1:]:
        for name in OUTCOMES[type(first)]:
            if not np.array_equal(getattr(aligned[0], name), getattr(other, name), equal_nan=name == "times"):
                raise InputError(f"the runs disagree on the {name} of shared subjects: not the same patients")
    return aligned


def _keys(p: Predictions) -> list[tuple[int, int]]:
    return list(zip(p.subject_ids.astype(np.int64).tolist(),
                    p.prediction_times.astype("datetime64[us]").astype(np.int64).tolist(), strict=True))


def _take(p: Predictions, rows: np.ndarray) -> Predictions:
    return replace(p, **{f.name: getattr(p, f.name)[rows] for f in fields(p)
                         if isinstance(getattr(p, f.name), np.ndarray)})
