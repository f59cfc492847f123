"""Patients and their labels for a supervised task, with every input cut strictly before its prediction time.

The cut happens on the MEDS rows (ehrseq.data.cutoff.events_before), so no event at or after the prediction
time, not even later the same day, reaches a model. Labelled subjects without any event before the cut are
left out (there is nothing to predict from).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ehrseq.data.cutoff import events_before
from ehrseq.data.labels import read_labels, read_oracle
from ehrseq.data.meds_io import MedsDataset
from ehrseq.data.patients import Patient, patients_from_meds
from ehrseq.errors import InputError


@dataclass
class LabelledSplit:
    patients: list[Patient]  # histories cut before each prediction time, row-aligned with the arrays
    prediction_times: np.ndarray  # (S,) datetime64[us]
    labels: np.ndarray  # (S,) bool: the outcome (binary) or the event flag (survival)
    times: np.ndarray  # (S,) float days to event or censoring (survival); NaN for binary labels

    @property
    def subject_ids(self) -> np.ndarray:
        return np.array([p.subject_id for p in self.patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.patients)


def labelled_splits(dataset: MedsDataset, task: str, splits: tuple[str, ...]) -> dict[str, LabelledSplit]:
    """Each split's labelled subjects (one prediction time per subject) with their cut histories."""
    if dataset.path is None:
        raise InputError("supervised tasks need a dataset folder holding labels/<task>.parquet")
    labels = read_labels(dataset.path, task)
    patients = {p.subject_id: p for p in patients_from_meds(events_before(dataset.data, labels))}
    ids = labels.column("subject_id").to_numpy()
    times = labels.column("prediction_time").cast(pa.timestamp("us")).to_numpy()
    flags = labels.column("boolean_value").to_numpy(zero_copy_only=False)
    days = (labels.column("float_value").to_numpy(zero_copy_only=False).astype(float)
            if "float_value" in labels.column_names else np.full(len(ids), np.nan))
    out: dict[str, LabelledSplit] = {}
    for split in splits:
        rows = [i for i, s in enumerate(ids.tolist())
                if dataset.splits.get(s) == split and s in patients and patients[s].visits]
        if not rows:
            raise InputError(f"task {task!r}: the {split!r} split has no labelled subjects with history")
        out[split] = LabelledSplit([patients[int(ids[i])] for i in rows], times[rows],
                                   flags[rows].astype(bool), days[rows])
    return out


def oracle_risks(dataset: MedsDataset, task: str, subject_ids: np.ndarray,
                 column: str = "true_risk") -> np.ndarray | None:
    """The true risk of each subject (same order), or None when the dataset has no oracle (real data) or the
    oracle lacks `column` (`true_risk_order_blind`: the risk without the planted order term)."""
    if dataset.path is None:
        return None
    oracle = read_oracle(dataset.path, task)
    if oracle is None or column not in oracle.column_names:
        return None
    risk = dict(zip(oracle.column("subject_id").to_pylist(), oracle.column(column).to_pylist(), strict=True))
    return np.array([risk[int(s)] for s in subject_ids], dtype=float)


@dataclass
class NextVisitSplit:
    """Subjects' histories cut before their last visit, and the codes of that visit: the next-visit target."""

    patients: list[Patient]  # row-aligned with the fields below
    prediction_times: np.ndarray  # (S,) datetime64[us]: the first event of the subject's last visit
    next_codes: list[tuple[str, ...]]  # the distinct codes recorded at that visit (that calendar day)

    @property
    def subject_ids(self) -> np.ndarray:
        return np.array([p.subject_id for p in self.patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.patients)


def next_visit_splits(dataset: MedsDataset, splits: tuple[str, ...]) -> dict[str, NextVisitSplit]:
    """Labels from the data itself: for each subject with two or more visits, predict the last visit's codes.

    The prediction time is that visit's first event, and the rows are cut strictly before it
    (`events_before`), so nothing of that day, or later, reaches the input.
    """
    full = [p for p in patients_from_meds(dataset.data) if len(p.visits) >= 2]
    times = pa.array([p.visits[-1].time for p in full], pa.timestamp("us"))
    cut_at = pa.table({"subject_id": pa.array([p.subject_id for p in full], pa.int64()), "prediction_time": times})
    cut = {p.subject_id: p for p in patients_from_meds(events_before(dataset.data, cut_at))}
    out: dict[str, NextVisitSplit] = {}
    for split in splits:
        rows = [i for i, p in enumerate(full) if dataset.splits.get(p.subject_id) == split]
        if not rows:
            raise InputError(f"task next_visit: the {split!r} split has no subjects with two or more visits")
        out[split] = NextVisitSplit([cut[full[i].subject_id] for i in rows], times.to_numpy()[rows],
                                    [full[i].visits[-1].codes for i in rows])
    return out
