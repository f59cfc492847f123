"""meds_dev_result.json figures equal what the meds-evaluation package computes from the same predictions."""

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from ehrseq.evaluation.meds_dev import evaluate_binary, meds_dev_result

pl = pytest.importorskip("polars")
meds_evaluation = pytest.importorskip("meds_evaluation.evaluate")
PredictionSchema = pytest.importorskip("meds_evaluation.schema").PredictionSchema


def predictions(rows_per_subject: np.ndarray, seed: int) -> pa.Table:
    """A predictions table (float64 probabilities, as scores come out of a model) in subject, time order."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(len(rows_per_subject)) * 7 + 3, rows_per_subject)
    times = [datetime(2021, 1, 1) + timedelta(days=int(d)) for d in np.arange(len(subjects)) % 5]
    labels = rng.random(len(subjects)) < 0.3
    probabilities = 1 / (1 + np.exp(-(rng.normal(size=len(subjects)) + labels)))
    return pa.table({"subject_id": pa.array(subjects, pa.int64()),
                     "prediction_time": pa.array(times, pa.timestamp("us")),
                     "boolean_value": labels, "predicted_boolean_value": probabilities >= 0.5,
                     "predicted_boolean_probability": pa.array(probabilities, pa.float64())})


@pytest.mark.parametrize("rows", ["one per subject", "several per subject"])
def test_figures_equal_meds_evaluation(rows):
    counts = np.ones(300, int) if rows == "one per subject" else np.random.default_rng(1).integers(1, 5, 150)
    table = predictions(counts, seed=len(counts))
    table = table.take(np.random.default_rng(5).permutation(table.num_rows))  # subjects' rows interleaved
    ours = evaluate_binary(table)
    theirs = meds_evaluation.evaluate_binary_classification(pl.from_arrow(table))
    for block in ("samples_equally_weighted", "subjects_equally_weighted"):
        assert set(ours[block]) == set(theirs[block])
        for name, value in theirs[block].items():
            assert ours[block][name] == pytest.approx(float(value), abs=1e-9), (block, name)
    if rows == "several per subject":  # the subject block really reweights
        assert ours["subjects_equally_weighted"]["brier_score"] != ours["samples_equally_weighted"]["brier_score"]


def test_result_record_has_meds_dev_fields_and_nulls_for_nan():
    table = predictions(np.ones(20, int), seed=3)
    one_class = table.set_column(2, "boolean_value", pa.array([False] * 20))
    record = meds_dev_result(one_class, "tiny", "outcome", "ehrseq/gbm", "0.1.0", datetime(2025, 1, 2))
    assert list(record) == ["dataset", "task", "model", "timestamp", "result", "version"]
    assert record["timestamp"] == "2025-01-02T00:00:00"
    assert record["result"]["samples_equally_weighted"]["roc_auc_score"] is None
    assert record["result"]["samples_equally_weighted"]["brier_score"] > 0
