"""A supervised task's label rows, and each split's labels row-aligned with the token cache's examples.

Each (subject, prediction time) label row is one example whose history is cut strictly before that time, in the
stream (ehrseq.data.examples), so no event at or after it, not even later the same day, reaches a model. Binary
tasks may have several per subject, as ACES emits them (splits stay by subject); rows without any event before
the cut are left out (nothing to predict from) and counted, with the other dropped rows, in a LabelReport
(ehrseq.data.labels states the rules). Next-visit targets come from the data itself: each subject's last visit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.labels import (
    LabelReport,
    drop_duplicates,
    label_files,
    label_path,
    read_label_files,
    read_labels,
    read_oracle,
    require_columns,
)
from ehrseq.errors import DataError, InputError


@dataclass
class LabelledSplit:
    """A split's examples, one per kept label row, row-aligned with its TokenArrays (ehrseq.data.token_cache)."""

    prediction_times: np.ndarray  # (S,) datetime64[us]
    labels: np.ndarray  # (S,) bool: the outcome (binary) or the event flag (survival)
    times: np.ndarray  # (S,) float days to event or censoring (survival); NaN for binary labels
    # (S,) int64: each example's row in the label table, unique across the splits. A subject may have several
    # examples (prediction times), so batches carry these, not subject ids, to find an example's label.
    example_ids: np.ndarray
    subject_ids: np.ndarray  # (S,) int64
    histories: HistoryArrays | None = None  # the token cache's whole histories, row-aligned (count features)

    def __len__(self) -> int:
        return len(self.subject_ids)

    def take(self, rows: np.ndarray) -> LabelledSplit:
        """The examples at `rows`, in that order."""
        return LabelledSplit(self.prediction_times[rows], self.labels[rows], self.times[rows], self.example_ids[rows],
                             self.subject_ids[rows], None if self.histories is None else self.histories.select(rows))


def task_label_files(dataset: Path | None, task: str | None, labels_path: str | Path | None) -> list[Path]:
    """The parquet files of the task's labels: under `labels_path` (a file or folder anywhere; `task` names the
    task inside a folder, None when the folder is the task's), or else the dataset's `labels/<task>.parquet`."""
    if labels_path is not None:
        return label_files(labels_path, task)
    if dataset is None or task is None:
        raise InputError("supervised tasks need labels: task.labels_path, or a dataset folder holding "
                         "labels/<task>.parquet")
    return [Path(dataset) / label_path(task)]


def read_task_labels(dataset: Path | None, task: str | None, kind: str = "binary",
                     labels_path: str | Path | None = None) -> tuple[pa.Table, LabelReport]:
    """The task's label rows, checked, exact duplicates dropped (row i is example id i), and the report so far."""
    if labels_path is not None:
        labels, where = read_label_files(task_label_files(dataset, task, labels_path), kind), str(labels_path)
    else:
        where = str(task_label_files(dataset, task, None)[0])
        labels = read_labels(dataset, task)
        require_columns(labels, kind, where)
    report = LabelReport(where, labels.num_rows)
    labels, report.duplicates = drop_duplicates(labels, where)
    ids = labels.column("subject_id").to_numpy()
    if kind != "binary" and len(np.unique(ids)) != len(ids):
        raise DataError(f"{where}: {len(ids) - len(np.unique(ids))} subjects have several prediction times; "
                        f"a {kind} task takes one per subject (binary tasks take several)")
    return labels, report


def label_arrays(labels: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label row: prediction time (datetime64[us]), boolean_value, float_value (NaN where absent)."""
    times = labels.column("prediction_time").cast(pa.timestamp("us")).to_numpy()
    flags = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(bool)
    days = (labels.column("float_value").to_numpy(zero_copy_only=False).astype(float)
            if "float_value" in labels.column_names else np.full(labels.num_rows, np.nan))
    return times, flags, days


def no_examples(split: str, report: LabelReport) -> InputError:
    return InputError(f"task labels {report.source}: the {split!r} split has no labelled subjects with history "
                      f"({report.describe()})")


def oracle_risks(dataset: Path, task: str, subject_ids: np.ndarray, column: str = "true_risk") -> np.ndarray | None:
    """The true risk of each subject (same order), or None when the dataset folder has no oracle (real data) or
    the oracle lacks `column` (`true_risk_order_blind`: the risk without the planted order term)."""
    oracle = read_oracle(dataset, task)
    if oracle is None or column not in oracle.column_names:
        return None
    risk = dict(zip(oracle.column("subject_id").to_pylist(), oracle.column(column).to_pylist(), strict=True))
    return np.array([risk[int(s)] for s in subject_ids], dtype=float)


@dataclass
class NextVisitSplit:
    """Subjects' histories cut before their last visit (the tokens) and the codes of that visit: the target."""

    prediction_times: np.ndarray  # (S,) datetime64[us]: the first event of the subject's last visit
    next_codes: list[tuple[str, ...]]  # the distinct codes recorded at that visit
    subject_ids: np.ndarray  # (S,) int64

    def __len__(self) -> int:
        return len(self.subject_ids)
