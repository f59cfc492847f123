"""The whole MEDS chain a user runs: a MEDS dataset, ACES labels from a task config, `ehrseq run` on them via
task.labels_path, and a bundle whose MEDS-DEV result the meds-evaluation package agrees with."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.cohort import synthetic_dataset

from support.helpers import REPO, assert_meds_dev_matches, run_cli

pytest.importorskip("aces")
ACES_CONFIG = REPO / "examples" / "aces" / "mi_within_1y.yaml"
TASK = "mi_within_1y"


def aces_labels(dataset: Path, cohort_dir: Path) -> pa.Table:
    """aces-cli on the dataset's one shard: writes cohort_dir/TASK/0.parquet (ACES's sharded layout)."""
    done = subprocess.run([str(Path(sys.executable).parent / "aces-cli"), "data.standard=meds", "data=sharded",
                           f"data.root={dataset / 'data'}", "data.shard=0", f"cohort_dir={cohort_dir}",
                           f"config_path={ACES_CONFIG}", f"cohort_name={TASK}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return pq.read_table(cohort_dir / TASK / "0.parquet")


def run_args(dataset: Path, labels: Path, tmp_path: Path) -> list[str]:
    return ["run", str(REPO / "jobs" / "gbm_binary.yaml"), "--set", "data.source=meds", "--set", f"data.path={dataset}",
            "--set", f"task.labels_path={labels}", "--set", f"task.labels={TASK}", "--set", "data.min_code_count=1",
            "--set", f"storage.uri=file://{tmp_path}/runs", "--set", f"runtime.work_dir={tmp_path}/work"]


@pytest.mark.slow
def test_aces_labels_feed_an_ehrseq_run(tmp_path):
    dataset = synthetic_dataset(800, 0, tmp_path / "meds")
    labels = aces_labels(dataset, tmp_path / "aces")
    per_subject = pc.value_counts(labels.column("subject_id")).field("counts")
    assert pc.max(per_subject).as_py() > 1  # ACES emits several prediction times per subject
    done = run_cli(*run_args(dataset, tmp_path / "aces", tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "runs" / "gbm-binary"
    summary = json.loads((folder / "summary.json").read_text())
    rows = summary["label_rows"]
    assert rows["rows"] == labels.num_rows and rows["no_history"] > 0  # first visits: nothing before them
    assert rows["examples"] + rows["no_history"] + rows["duplicates"] == labels.num_rows
    assert sum(summary["data"]["examples"].values()) == rows["examples"]
    held_out = pq.read_table(folder / "predictions" / "held_out.parquet")
    assert held_out.num_rows > len(pc.unique(held_out.column("subject_id")))  # several examples per subject
    assert 0 < pc.sum(held_out.column("boolean_value")).as_py() < held_out.num_rows
    record = json.loads((folder / "meds_dev_result.json").read_text())
    assert (record["task"], record["model"]) == (TASK, "ehrseq/gbm")
    assert record["result"]["samples_equally_weighted"]["roc_auc_score"] == pytest.approx(
        summary["metrics"]["auroc"], abs=1e-6)
    assert_meds_dev_matches(folder, summary)


@pytest.mark.slow
def test_labels_without_boolean_value_exit_2_naming_file_and_column(tmp_path):
    dataset = synthetic_dataset(100, 0, tmp_path / "meds")
    (tmp_path / "labels" / TASK).mkdir(parents=True)
    table = pq.read_table(dataset / "labels" / "outcome_within_365d.parquet").drop_columns(["boolean_value"])
    pq.write_table(table, tmp_path / "labels" / TASK / "0.parquet")
    done = run_cli(*run_args(dataset, tmp_path / "labels", tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'labels' / TASK / '0.parquet'}: column 'boolean_value' is missing" in done.stderr
