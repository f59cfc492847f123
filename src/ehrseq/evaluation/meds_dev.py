"""The MEDS-DEV result file (`meds_dev_result.json`): held-out figures as the community's evaluator gives them.

meds-evaluation (github.com/kamilest/meds-evaluation, `evaluate_binary_classification`) reads a predictions
parquet, casts it to its PredictionSchema (so `predicted_boolean_probability` becomes float32), and reports two
blocks: every row weighted equally, and every subject weighted equally, the latter by drawing
`samples_per_subject` rows with replacement from each subject's rows (numpy's legacy global seed
`resampling_seed`, subjects in ascending order). This module does the same in numpy and scikit-learn, without
its polars/hydra stack, so every bundle carries the figures; tests/library/test_meds_dev.py runs the package itself on
the same file and checks they agree. MEDS-DEV wraps the blocks with dataset, task, model, timestamp, version,
and writes NaN as null.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

SAMPLES_PER_SUBJECT = 4  # meds-evaluation's defaults
RESAMPLING_SEED = 0


def binary_metrics_meds(labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """meds-evaluation's `_get_binary_classification_metrics`: the same scikit-learn calls on the same inputs.
    With one class only (where meds-evaluation raises) the ranking figures are NaN."""
    from sklearn.calibration import calibration_curve  # (a second to import: binary runs only)
    from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, f1_score, roc_auc_score

    both = bool(labels.any() and not labels.all())
    mean_gap = np.abs(np.subtract(*calibration_curve(labels, probabilities, n_bins=10))).mean()
    return {"binary_accuracy": float(accuracy_score(labels, predicted)),
            "f1_score": float(f1_score(labels, predicted, zero_division=0.0)),
            "roc_auc_score": float(roc_auc_score(labels, probabilities)) if both else math.nan,
            "average_precision_score": float(average_precision_score(labels, probabilities)) if both else math.nan,
            "calibration_error": float(mean_gap), "brier_score": float(brier_score_loss(labels, probabilities))}


def subject_resample(subject_ids: np.ndarray, samples_per_subject: int = SAMPLES_PER_SUBJECT,
                     seed: int = RESAMPLING_SEED) -> np.ndarray:
    """Row indices (S * samples_per_subject,) as meds-evaluation's `_resample` draws them: rows sorted by
    subject (stably), then `samples_per_subject` draws with replacement from each subject's rows in turn."""
    order = np.argsort(subject_ids, kind="stable")
    groups = np.split(np.arange(len(order)), np.unique(subject_ids[order], return_index=True)[1][1:])
    rng = np.random.RandomState(seed)  # the legacy global generator np.random.seed(seed) seeds, drawn alike
    return order[np.concatenate([rng.choice(g, samples_per_subject, replace=True) for g in groups])]


def evaluate_binary(table: pa.Table) -> dict[str, dict[str, float]]:
    """Both blocks for a table in the MEDS prediction layout (rows with a null `boolean_value` left out)."""
    table = table.filter(table.column("boolean_value").is_valid())
    labels = table.column("boolean_value").to_numpy(zero_copy_only=False).astype(bool)
    predicted = table.column("predicted_boolean_value").to_numpy(zero_copy_only=False).astype(bool)
    # float32 as meds-evaluation aligns them, then float64 as scikit-learn reads its polars columns
    probabilities = table.column("predicted_boolean_probability").cast(pa.float32()).to_numpy().astype(np.float64)
    rows = subject_resample(table.column("subject_id").to_numpy())
    return {"samples_equally_weighted": binary_metrics_meds(labels, predicted, probabilities),
            "subjects_equally_weighted": binary_metrics_meds(labels[rows], predicted[rows], probabilities[rows])}


def meds_dev_result(table: pa.Table, dataset: str, task: str, model: str, version: str,
                    timestamp: datetime | None = None) -> dict[str, Any]:
    """The MEDS-DEV result record for a predictions table; NaN (e.g. an AUROC on one class) becomes None."""
    result = {block: {k: None if math.isnan(v) else v for k, v in figures.items()}
              for block, figures in evaluate_binary(table).items()}
    when = (timestamp or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    return {"dataset": dataset, "task": task, "model": model, "timestamp": when, "result": result,
            "version": version}
