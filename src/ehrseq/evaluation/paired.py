"""Paired bootstrap: is one model's held-out figure really different from another's on the same patients?

Both models scored the same subjects, so their errors are correlated; resampling subjects once and scoring both
models on each resample keeps that pairing, which gives a much tighter interval for the difference than two
separate intervals would. The p-value inverts the percentile interval: the smallest two-sided level at which the
interval of the difference would exclude 0, so "CI excludes 0" and "p < 0.05" agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
                     num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, PairedDifference]:
    """other - baseline for each metric both give, from one resample of subjects per draw (rows index both).

    Resamples where a metric is undefined (one class only) are dropped, as in `bootstrap_ci`.
    """
    point_a, point_b = baseline(None), other(None)
    names = [m for m in (metrics if metrics is not None else point_a) if m in point_a and m in point_b]

    def difference(rows: np.ndarray | None) -> dict[str, float]:
        a, b = baseline(rows), other(rows)
        return {m: b[m] - a[m] for m in names}

    draws = bootstrap_draws(difference, num_subjects, num_resamples=num_resamples, seed=seed)
    alpha = (1 - level) / 2
    out = {}
    for m in names:
        d = draws[m][~np.isnan(draws[m])]
        if not len(d):
            continue
        tail = min((d <= 0).sum(), (d >= 0).sum())
        out[m] = PairedDifference(
            metric=m, baseline=point_a[m], other=point_b[m], difference=point_b[m] - point_a[m],
            ci=(float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))),
            p_value=float(min(1.0, 2 * (tail + 1) / (len(d) + 1))), num_subjects=num_subjects)
    return out


def join_predictions(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both runs' predictions on the rows they share (same subject_id and prediction_time), in one order.

    InputError when they share no row, are of different kinds, or disagree on a shared row's outcome
    (then they were not scored on the same patients, whatever the ids say).
    """
    if type(a) is not type(b):
        raise InputError(f"cannot pair {type(a).__name__} with {type(b).__name__}")
    if isinstance(a, NextVisitPredictions) and a.codes != b.codes:
        raise InputError("the runs predict different code vocabularies")
    index = {key: i for i, key in enumerate(_keys(a))}
    pairs = [(index[key], j) for j, key in enumerate(_keys(b)) if key in index]
    if not pairs:
        raise InputError("the runs share no held-out (subject_id, prediction_time)")
    rows_a, rows_b = (np.array(r) for r in zip(*pairs, strict=True))
    a, b = _take(a, rows_a), _take(b, rows_b)
    for name in OUTCOMES[type(a)]:
        if not np.array_equal(getattr(a, name), getattr(b, name), equal_nan=name == "times"):
            raise InputError(f"the runs disagree on the {name} of shared subjects: not the same patients")
    return a, b


def _keys(p: Predictions) -> list[tuple[int, int]]:
    return list(zip(p.subject_ids.astype(np.int64).tolist(),
                    p.prediction_times.astype("datetime64[us]").astype(np.int64).tolist(), strict=True))


def _take(p: Predictions, rows: np.ndarray) -> Predictions:
    return replace(p, **{f.name: getattr(p, f.name)[rows] for f in fields(p)
                         if isinstance(getattr(p, f.name), np.ndarray)})
