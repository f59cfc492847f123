"""Patients and their labels for a supervised task, with every input cut strictly before its prediction time.

The cut happens on the MEDS rows (ehrseq.data.cutoff.events_before_each), so no event at or after the
prediction time, not even later the same day, reaches a model. Each (subject, prediction time) label row is one
example with its own cut (binary tasks may have several per subject, as ACES emits them; splits stay by
subject); rows without any event before the cut are left out (nothing to predict from) and counted, with the
other dropped rows, in a LabelReport (ehrseq.data.labels states the rules).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ehrseq.data.cutoff import events_before, events_before_each
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
from ehrseq.data.meds_io import MedsDataset
from ehrseq.data.patients import Patient, patients_from_meds
from ehrseq.data.tokenize import EncodedPatient, encode_patient
from ehrseq.data.visits import DAY_VISITS, VisitRule
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import DataError, InputError


@dataclass
class LabelledSplit:
    # histories cut before each prediction time, row-aligned with the arrays; None where they live only as
    # tokens (the token cache's examples, ehrseq.data.token_cache)
    patients: list[Patient] | None
    prediction_times: np.ndarray  # (S,) datetime64[us]
    labels: np.ndarray  # (S,) bool: the outcome (binary) or the event flag (survival)
    times: np.ndarray  # (S,) float days to event or censoring (survival); NaN for binary labels
    # (S,) int64: each example's row in the label table, unique across the splits. A subject may have several
    # examples (prediction times), so batches carry these, not subject ids, to find an example's label.
    example_ids: np.ndarray
    subject_ids: np.ndarray | None = None  # (S,) int64; taken from `patients` when not given
    histories: HistoryArrays | None = None  # the token cache's whole histories, row-aligned (count features)

    def __post_init__(self) -> None:
        if self.subject_ids is None:
            self.subject_ids = np.array([p.subject_id for p in self.patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.subject_ids)

    def take(self, rows: np.ndarray) -> LabelledSplit:
        """The examples at `rows`, in that order."""
        return LabelledSplit(None if self.patients is None else [self.patients[i] for i in rows],
                             self.prediction_times[rows], self.labels[rows], self.times[rows], self.example_ids[rows],
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


def labelled_splits(dataset: MedsDataset, task: str | None, splits: tuple[str, ...], kind: str = "binary",
                    labels_path: str | Path | None = None,
                    visits: VisitRule = DAY_VISITS) -> tuple[dict[str, LabelledSplit], LabelReport]:
    """Each split's examples with their cut histories (grouped into `visits` after the cut), and the report of
    the label rows dropped on the way (labels as `read_task_labels` finds them)."""
    labels, report = read_task_labels(dataset.path, task, kind, labels_path)
    ids = labels.column("subject_id").to_numpy()
    histories = {p.subject_id: replace(p, subject_id=int(ids[p.subject_id]))
                 for p in patients_from_meds(events_before_each(dataset.data, labels), visits)}
    in_data = set(dataset.data.column("subject_id").unique().to_pylist())
    usable = np.zeros(len(ids), dtype=bool)
    for i, s in enumerate(ids.tolist()):
        if s not in in_data:
            report.absent_subjects += 1
        elif dataset.splits.get(s) not in splits:
            report.unsplit_subjects += 1
        elif i not in histories or not histories[i].visits:
            report.no_history += 1
        else:
            usable[i] = True
    report.examples, report.subjects = int(usable.sum()), len(np.unique(ids[usable]))
    times, flags, days = label_arrays(labels)
    out: dict[str, LabelledSplit] = {}
    for split in splits:
        rows = [i for i, s in enumerate(ids.tolist()) if usable[i] and dataset.splits.get(s) == split]
        if not rows:
            raise no_examples(split, report)
        out[split] = LabelledSplit([histories[i] for i in rows], times[rows], flags[rows], days[rows],
                                   np.asarray(rows, np.int64))
    return out, report


def encode_examples(split: LabelledSplit, vocab: Vocabulary, max_len: int) -> list[EncodedPatient]:
    """Each example's cut history as model input, identified by its example id (not its subject id)."""
    return [replace(encode_patient(p, vocab, max_len), subject_id=int(e))
            for p, e in zip(split.patients, split.example_ids, strict=True)]


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
    """Subjects' histories cut before their last visit, and the codes of that visit: the next-visit target."""

    patients: list[Patient] | None  # row-aligned with the fields below; None from the token cache (tokens only)
    prediction_times: np.ndarray  # (S,) datetime64[us]: the first event of the subject's last visit
    next_codes: list[tuple[str, ...]]  # the distinct codes recorded at that visit
    subject_ids: np.ndarray | None = None  # (S,) int64; taken from `patients` when not given

    def __post_init__(self) -> None:
        if self.subject_ids is None:
            self.subject_ids = np.array([p.subject_id for p in self.patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.subject_ids)


def next_visit_splits(dataset: MedsDataset, splits: tuple[str, ...],
                      visits: VisitRule = DAY_VISITS) -> dict[str, NextVisitSplit]:
    """Labels from the data itself: for each subject with two or more visits, predict the last visit's codes.

    The prediction time is that visit's first event, and the rows are cut strictly before it
    (`events_before`), so nothing of that day, or later, reaches the input.
    """
    full = [p for p in patients_from_meds(dataset.data, visits) if len(p.visits) >= 2]
    times = pa.array([p.visits[-1].time for p in full], pa.timestamp("us"))
    cut_at = pa.table({"subject_id": pa.array([p.subject_id for p in full], pa.int64()), "prediction_time": times})
    cut = {p.subject_id: p for p in patients_from_meds(events_before(dataset.data, cut_at), visits)}
    out: dict[str, NextVisitSplit] = {}
    for split in splits:
        rows = [i for i, p in enumerate(full) if dataset.splits.get(p.subject_id) == split]
        if not rows:
            raise InputError(f"task next_visit: the {split!r} split has no subjects with two or more visits")
        out[split] = NextVisitSplit([cut[full[i].subject_id] for i in rows], times.to_numpy()[rows],
                                    [full[i].visits[-1].codes for i in rows])
    return out
