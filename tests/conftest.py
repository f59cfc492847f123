import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrseq.evaluation.bootstrap import bootstrap_ci
from ehrseq.evaluation.predictions import predictions_from_table
from ehrseq_runner.storage.uri import open_storage

REPO = Path(__file__).resolve().parents[1]
SMALL_SPEC = REPO / "jobs" / "behrt_small.yaml"


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from ehrseq_runner.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole session; tests use their own prefixes."""
    from s3_server import WeedServer

    server = WeedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3.env


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


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    """The same tests on file:// storage and on the real S3 server (a fresh prefix per test)."""
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/runs")
    request.getfixturevalue("s3_env")
    return open_storage(f"s3://ehrseq-test/{request.module.__name__.removeprefix('test_')}-{time.time_ns()}")
