"""Turn a flat MEDS event table into per-patient visit histories.

MEDS has no encounter ids, and BEHRT-style models want the sequence as visits: a visit is what `data.visit`
says (ehrseq.data.visits; by default every event of one subject on one calendar day). Sorting, grouping and
de-duplication run in pyarrow/numpy; Python objects are only built at the end, so thousands of patients take
milliseconds.
"""

from dataclasses import dataclass, field
from datetime import datetime

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrseq.data.visits import DAY_VISITS, VisitRule, visit_index


@dataclass(frozen=True)
class Visit:
    """The distinct codes recorded in one visit, in first-seen order; `time` is its first event.

    `end` is its last event (None when unknown, as in hand-built visits: then taken as `time`), so a
    visit can be cut at a prediction time without leaking its later events. Equality ignores
    it: two visits are equal when they hold the same codes from the same start.
    """

    time: datetime
    codes: tuple[str, ...]
    end: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Patient:
    """A subject's birth datetime (None when the data lacks MEDS_BIRTH), visits in time order, and static codes.

    `static` holds the distinct codes of the subject's null-time MEDS rows (sex, and any other code recorded
    without a time), sorted: they hold at every time, so every model may see them at any prediction time.
    """

    subject_id: int
    birth: datetime | None
    visits: tuple[Visit, ...]
    static: tuple[str, ...] = ()


def _boundaries(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in `keys`, plus len(keys) at the end."""
    return np.r_[np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1)), len(keys)]


def patients_from_meds(data: pa.Table, visits: VisitRule = DAY_VISITS) -> list[Patient]:
    """One Patient per subject in `data` (MEDS data schema), ordered by subject_id, its events grouped into `visits`.

    Static (null-time) rows and MEDS_BIRTH are not visit codes: static rows give `static`, MEDS_BIRTH `birth`.
    """
    table = pa.table(
        {
            "subject_id": data.column("subject_id").cast(pa.int64()),
            "time": data.column("time").cast(pa.timestamp("us")),
            "code": data.column("code").cast(pa.string()),
        }
    )
    table = table.take(pc.sort_indices(table, [("subject_id", "ascending"), ("time", "ascending")]))
    all_subjects = np.unique(table.column("subject_id").to_numpy())

    is_birth = pc.equal(table.column("code"), meds.birth_code).to_numpy(zero_copy_only=False)
    has_time = pc.is_valid(table.column("time")).to_numpy(zero_copy_only=False)
    subject = table.column("subject_id").to_numpy()
    time_us = pc.fill_null(table.column("time"), 0).cast(pa.int64()).to_numpy()
    birth_subject, first_birth = np.unique(subject[is_birth & has_time], return_index=True)  # earliest
    births = dict(
        zip(birth_subject.tolist(), time_us[is_birth & has_time][first_birth].tolist(), strict=True)
    )

    is_static = ~has_time & ~is_birth
    static = _static_codes(subject[is_static], table.column("code").filter(pa.array(is_static)))
    events = has_time & ~is_birth
    subject, time_us = subject[events], time_us[events]
    codes = pc.dictionary_encode(table.column("code").filter(pa.array(events)).combine_chunks())
    code_idx = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    vocab = codes.dictionary.to_pylist()

    visit_id = visit_index(subject, time_us, code_idx, vocab, visits)  # rows are sorted by subject, then time
    new_visit = np.r_[True, visit_id[1:] != visit_id[:-1]] if len(visit_id) else np.zeros(0, bool)
    # Keep the first occurrence of each code within a visit, preserving order.
    _, first = np.unique(visit_id * len(vocab) + code_idx, return_index=True)
    keep = np.sort(first)
    visit_id, code_idx = visit_id[keep], code_idx[keep]
    visit_start = _boundaries(visit_id)
    visit_subject = subject[keep][visit_start[:-1]]
    visit_time = time_us[keep][visit_start[:-1]].astype("datetime64[us]").tolist()
    # The visit's last event: rows are time-sorted, so it is the row before the next visit's first row.
    last_rows = np.r_[np.flatnonzero(new_visit)[1:] - 1, len(visit_id) - 1] if len(visit_id) else np.zeros(0, np.int64)
    visit_end = time_us[last_rows].astype("datetime64[us]").tolist()
    code_lists = [vocab[i] for i in code_idx.tolist()]
    visits = [
        Visit(t, tuple(code_lists[a:b]), end)
        for t, a, b, end in zip(visit_time, visit_start[:-1].tolist(), visit_start[1:].tolist(), visit_end,
                                strict=True)
    ]

    patients = []
    bounds = np.searchsorted(visit_subject, all_subjects, side="left").tolist() + [len(visits)]
    for i, s in enumerate(all_subjects.tolist()):
        birth = births.get(s)
        birth_dt = None if birth is None else np.datetime64(birth, "us").astype(datetime)
        patients.append(Patient(s, birth_dt, tuple(visits[bounds[i] : bounds[i + 1]]), static.get(s, ())))
    return patients


def _static_codes(subject: np.ndarray, code: pa.ChunkedArray) -> dict[int, tuple[str, ...]]:
    """Subject -> its distinct static codes, sorted; `subject` and `code` are the null-time rows."""
    if not len(subject):
        return {}
    codes = pc.dictionary_encode(code.combine_chunks())
    names = np.array(codes.dictionary.to_pylist(), dtype=object)
    order = np.argsort(names.astype(str), kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))  # dictionary index -> alphabetical rank
    code_rank = rank[codes.indices.to_numpy(zero_copy_only=False)]
    rows = np.lexsort((code_rank, subject))  # by subject, then code
    subject, code_rank = subject[rows], code_rank[rows]
    first = np.r_[True, (np.diff(subject) != 0) | (np.diff(code_rank) != 0)]  # drop repeats
    subject, names = subject[first], names[order][code_rank[first]]
    starts = _boundaries(subject)
    return {int(subject[a]): tuple(names[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:], strict=True)}
