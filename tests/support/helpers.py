"""Constants and plain helpers the tests import (`from support.helpers import ...`); fixtures live in conftest.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from ehrseq.evaluation.bootstrap import bootstrap_ci
from ehrseq.evaluation.predictions import predictions_from_table

REPO = Path(__file__).resolve().parents[2]
SMALL_SPEC = REPO / "jobs" / "behrt_small.yaml"


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from ehrseq_runner.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_summary_matches_predictions(table, summary, seed: int) -> None:
    """Every held-out figure and interval in summary.json is what the predictions file gives."""
    assert table.num_rows == summary["data"]["examples"]["held_out"]
    recomputed = predictions_from_table(table)
    assert recomputed.metrics() == pytest.approx(summary["metrics"], nan_ok=True)
    assert bootstrap_ci(recomputed.metrics, table.num_rows, seed=seed) == summary["metrics_ci"]
    for name, (low, high) in summary["metrics_ci"].items():
        assert low <= summary["metrics"][name] <= high, name


def assert_meds_dev_matches(folder: Path, summary: dict) -> None:
    """The bundle's meds_dev_result.json is what the meds-evaluation package computes from its predictions file
    (which validates, strictly, against its PredictionSchema), and for binary tasks its AUROC, AP and Brier are
    summary.json's within 1e-6."""
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pl = pytest.importorskip("polars")
    evaluate = pytest.importorskip("meds_evaluation.evaluate")
    schema = pytest.importorskip("meds_evaluation.schema").PredictionSchema
    table = pq.read_table(folder / "predictions" / "held_out.parquet")
    known = table.filter(pc.is_valid(table.column("boolean_value"))).select(
        ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value", "predicted_boolean_probability"])
    schema.validate(known)  # float32 probabilities, the MEDS label columns' types
    theirs = evaluate.evaluate_binary_classification(pl.from_arrow(known))
    record = json.loads((folder / "meds_dev_result.json").read_text())
    assert set(record) == {"dataset", "task", "model", "timestamp", "result", "version"}
    for block, figures in theirs.items():
        assert record["result"][block] == pytest.approx({k: float(v) for k, v in figures.items()}, abs=1e-9)
    if "auroc" in summary["metrics"]:
        ours = record["result"]["samples_equally_weighted"]
        for meds_name, name in (("roc_auc_score", "auroc"), ("average_precision_score", "auprc"),
                                ("brier_score", "brier")):
            assert ours[meds_name] == pytest.approx(summary["metrics"][name], abs=1e-6), name
