"""The patient-object path per split, test-only: whole patients, labelled examples and next-visit targets.

What `ehrseq.data.prepare` reads from the token cache, built here from Patient objects
(tests/support/reference_histories.py) of a whole MEDS table: the equality tests prove the cache's splits, label
reports and tokens equal these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ehrseq.data.cohort import dataset_folder, empty_split_message
from ehrseq.data.labels import LabelReport
from ehrseq.data.meds_io import MedsDataset, read_meds_dataset
from ehrseq.data.stream import SPLITS
from ehrseq.data.supervised import LabelledSplit, NextVisitSplit, label_arrays, no_examples, read_task_labels
from ehrseq.data.synthetic import PRESETS, SyntheticParams
from ehrseq.data.visits import DAY_VISITS, VisitRule
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError

from support.reference_histories import (
    EncodedPatient,
    Patient,
    encode_patient,
    events_before,
    events_before_each,
    patients_from_meds,
)


def load_dataset(source: str, path: str | None, num_patients: int, seed: int, cache_dir: Path,
                 synthetic: SyntheticParams = PRESETS["default"]) -> MedsDataset:
    """The MEDS dataset of `dataset_folder`, read whole."""
    return read_meds_dataset(dataset_folder(source, path, num_patients, seed, cache_dir, synthetic))


def patients_by_split(dataset: MedsDataset, visits: VisitRule = DAY_VISITS) -> dict[str, list[Patient]]:
    """Patients of each split (their events in `visits`), using the dataset's own patient-level splits."""
    out: dict[str, list[Patient]] = {s: [] for s in SPLITS}
    for patient in patients_from_meds(dataset.data, visits):
        split = dataset.splits.get(patient.subject_id)
        if split in out:
            out[split].append(patient)
    for split, patients in out.items():
        if not patients:
            raise InputError(empty_split_message(dataset, split))
    return out


@dataclass
class PatientSplit(LabelledSplit):
    """A LabelledSplit with each example's history, cut before its prediction time, as a Patient (row-aligned)."""

    patients: list[Patient] = field(default_factory=list)


def labelled_splits(dataset: MedsDataset, task: str | None, splits: tuple[str, ...], kind: str = "binary",
                    labels_path: str | Path | None = None,
                    visits: VisitRule = DAY_VISITS) -> tuple[dict[str, PatientSplit], LabelReport]:
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
    out: dict[str, PatientSplit] = {}
    for split in splits:
        rows = [i for i, s in enumerate(ids.tolist()) if usable[i] and dataset.splits.get(s) == split]
        if not rows:
            raise no_examples(split, report)
        out[split] = PatientSplit(times[rows], flags[rows], days[rows], np.asarray(rows, np.int64),
                                  ids[rows].astype(np.int64),
                                  patients=[histories[i] for i in rows])
    return out, report


def encode_examples(split: PatientSplit, vocab: Vocabulary, max_len: int) -> list[EncodedPatient]:
    """Each example's cut history as model input, identified by its example id (not its subject id)."""
    return [replace(encode_patient(p, vocab, max_len), subject_id=int(e))
            for p, e in zip(split.patients, split.example_ids, strict=True)]


@dataclass
class PatientNextVisitSplit(NextVisitSplit):
    """A NextVisitSplit with each subject's history, cut before its last visit, as a Patient (row-aligned)."""

    patients: list[Patient] = field(default_factory=list)


def next_visit_splits(dataset: MedsDataset, splits: tuple[str, ...],
                      visits: VisitRule = DAY_VISITS) -> dict[str, PatientNextVisitSplit]:
    """Labels from the data itself: for each subject with two or more visits, predict the last visit's codes.

    The prediction time is that visit's first event, and the rows are cut strictly before it
    (`events_before`), so nothing of that day, or later, reaches the input.
    """
    full = [p for p in patients_from_meds(dataset.data, visits) if len(p.visits) >= 2]
    times = pa.array([p.visits[-1].time for p in full], pa.timestamp("us"))
    cut_at = pa.table({"subject_id": pa.array([p.subject_id for p in full], pa.int64()), "prediction_time": times})
    cut = {p.subject_id: p for p in patients_from_meds(events_before(dataset.data, cut_at), visits)}
    out: dict[str, PatientNextVisitSplit] = {}
    for split in splits:
        rows = [i for i, p in enumerate(full) if dataset.splits.get(p.subject_id) == split]
        if not rows:
            raise InputError(f"task next_visit: the {split!r} split has no subjects with two or more visits")
        out[split] = PatientNextVisitSplit(times.to_numpy()[rows], [full[i].visits[-1].codes for i in rows],
                                           np.array([full[i].subject_id for i in rows], np.int64),
                                           patients=[cut[full[i].subject_id] for i in rows])
    return out
