"""Label budgets (the EHRSHOT protocol): fine-tune on k labelled training examples, not all of them.

The subsample is a pure function of (split, k, seed), stratified so a small k keeps the outcome's share:
binary labels by label, survival by event flag (each class gets its proportional share of k, rounded so the
shares add up to k, and at least one example when k >= 2). Next-visit targets have no class: a plain seeded
sample. Tuning and held-out splits are never subsampled.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from ehrseq.data.supervised import LabelledSplit, NextVisitSplit
from ehrseq.errors import InputError

Split = TypeVar("Split", LabelledSplit, NextVisitSplit)


def budget_rows(classes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices (sorted) of a seeded sample of `k` rows, stratified by `classes` (S,); k must be <= S."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(classes, return_counts=True)
    picked = [rng.choice(np.flatnonzero(classes == v), size=q, replace=False)
              for v, q in zip(values, _quotas(counts, k), strict=True)]
    return np.sort(np.concatenate(picked))


def _quotas(counts: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder shares of k in proportion to `counts`, each class at least 1 while k allows."""
    exact = counts * k / counts.sum()
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: k - quota.sum()]:
        quota[i] += 1
    while k >= len(counts) and (quota == 0).any():  # a rare class would be missing: take one from the largest
        quota[np.argmax(quota)] -= 1
        quota[np.flatnonzero(quota == 0)[0]] += 1
    return quota


def subsample_rows(split: Split, k: int, seed: int) -> np.ndarray:
    """The rows (sorted) of a seeded sample of `k` of the split's examples, stratified by label (LabelledSplit)."""
    if k > len(split):
        raise InputError(f"train.label_budget: {k} labelled examples asked for, but the training split has only "
                         f"{len(split)}; use a smaller budget or null for all")
    classes = split.labels if isinstance(split, LabelledSplit) else np.zeros(len(split), dtype=bool)
    return budget_rows(classes, k, seed)


def subsample(split: Split, k: int, seed: int) -> Split:
    """The split restricted to a seeded, stratified sample of `k` of its examples (row order kept)."""
    rows = subsample_rows(split, k, seed)
    if isinstance(split, LabelledSplit):
        return split.take(rows)
    return NextVisitSplit([split.patients[i] for i in rows], split.prediction_times[rows],
                          [split.next_codes[i] for i in rows])
