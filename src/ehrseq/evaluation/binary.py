"""Binary-outcome metrics: discrimination (AUROC, AUPRC), accuracy of the probabilities (Brier), calibration.

AUROC is the Mann-Whitney statistic on scipy's average ranks (tied scores count 1/2, as they should); AUPRC is
scikit-learn's average precision (step-wise, one point per distinct score). Both compute what scikit-learn's
`roc_auc_score` and `average_precision_score` give (tests/library/test_supervised_metrics.py holds them equal) in a few
microseconds instead of its ~2 ms of input checks per call, which a bundle's bootstrap pays 2,000 times and a
ladder's report 4,000 times per run. A resample with a single class has no AUROC, so it gives NaN and the
bootstrap skips it.
"""

from __future__ import annotations

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted as 1/2."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    from scipy.stats import rankdata  # (scipy takes a second to import: runs without labels skip it)

    positives, negatives = int(labels.sum()), int((~labels).sum())
    rank_sum = rankdata(_finite(scores))[labels].sum()  # ties share their average rank
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise, no interpolation): the precision
    at each distinct score, weighted by the recall it adds."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-_finite(scores), kind="stable")
    ranked, hits = np.asarray(scores, dtype=float)[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last row of each distinct score
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1)
    return float(np.sum(np.diff(true_positives, prepend=0) / true_positives[-1] * precision))


def _finite(scores: np.ndarray) -> np.ndarray:
    """The scores as floats; ValueError (as scikit-learn raises) on NaN or infinity, e.g. a diverged model's."""
    scores = np.asarray(scores, dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared error of the predicted probabilities."""
    return float(np.mean((np.asarray(probabilities, dtype=float) - np.asarray(labels, dtype=float)) ** 2))


def calibration_curve(labels: np.ndarray, probabilities: np.ndarray, num_bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed rate in equal-width probability bins (empty bins left out)."""
    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    bins = np.clip((probabilities * num_bins).astype(int), 0, num_bins - 1)
    out: dict[str, list[float]] = {"predicted": [], "observed": [], "count": []}
    for b in range(num_bins):
        sel = bins == b
        if sel.any():
            out["predicted"].append(float(probabilities[sel].mean()))
            out["observed"].append(float(labels[sel].mean()))
            out["count"].append(float(sel.sum()))
    return out


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The headline figures of a binary task."""
    return {"auroc": auroc(labels, probabilities), "auprc": auprc(labels, probabilities),
            "brier": brier(labels, probabilities), "prevalence": float(np.mean(labels))}
