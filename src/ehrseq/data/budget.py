"""Label budgets (the EHRSHOT k-shot protocol): k labelled training patients, and k tuning patients for every
choice made on the tuning split (early stopping, the kept checkpoint, a baseline's setting, the best baseline).

A budget counts patients: a patient with several prediction times (label rows) brings all of them, so no
patient is half in. The sample is a pure function of (split, k, seed), stratified so a small k keeps the
outcome's share: binary labels by label, survival by event flag, a patient by whether any of its rows is
positive (each class gets its proportional share of k, rounded so the shares add up to k, and at least one
patient when k >= 2). Next-visit targets have no class: a plain seeded sample. Held-out is never subsampled.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from ehrseq.data.supervised import LabelledSplit, NextVisitSplit
from ehrseq.errors import InputError

Split = TypeVar("Split", LabelledSplit, NextVisitSplit)


def budget_rows(classes: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices (sorted) of the rows of a seeded sample of `k` groups (default: each row its own), stratified by
    `classes` (S,), a group's class being its largest (True over False); k must be <= the number of groups."""
    groups = np.arange(len(classes)) if groups is None else groups
    _, group_of = np.unique(groups, return_inverse=True)
    group_class = np.zeros(group_of.max(initial=-1) + 1, classes.dtype)
    np.maximum.at(group_class, group_of, classes)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(group_class, return_counts=True)
    picked = [rng.choice(np.flatnonzero(group_class == v), size=q, replace=False)
              for v, q in zip(values, _quotas(counts, k), strict=True)]
    return np.flatnonzero(np.isin(group_of, np.concatenate(picked)))


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


def num_patients(split: Split) -> int:
    return len(np.unique(split.subject_ids))


def subsample_rows(split: Split, k: int, seed: int, name: str = "train") -> np.ndarray:
    """The rows (sorted) of a seeded sample of `k` of the split's patients with all their examples, stratified by
    label (LabelledSplit). The training split must hold k patients; a smaller tuning split is kept whole."""
    n = num_patients(split)
    if k > n and name == "train":
        raise InputError(f"train.label_budget: {k} labelled patients asked for, but the training split has only "
                         f"{n}; use a smaller budget or null for all")
    classes = split.labels if isinstance(split, LabelledSplit) else np.zeros(len(split), dtype=bool)
    return budget_rows(classes, min(k, n), seed, split.subject_ids)


def take(split: Split, rows: np.ndarray) -> Split:
    """The split's examples at `rows`, in that order."""
    if isinstance(split, LabelledSplit):
        return split.take(rows)
    return NextVisitSplit(None if split.patients is None else [split.patients[i] for i in rows],
                          split.prediction_times[rows], [split.next_codes[i] for i in rows], split.subject_ids[rows])
