"""Binary-outcome metrics: discrimination (AUROC, AUPRC), accuracy of the probabilities (Brier), calibration.

AUROC and AUPRC come from scikit-learn (AUROC counts tied scores as half, as it should); a resample with a
single class has no AUROC, so it gives NaN and the bootstrap skips it.
"""

from __future__ import annotations

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted as 1/2."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # (scikit-learn takes a second to import: runs without labels skip it)

    return float(roc_auc_score(labels, scores))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise, no interpolation)."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


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
