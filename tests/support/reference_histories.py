"""The patient-object path, test-only: MEDS rows -> Patient objects -> vocabulary -> tokens.

The product streams MEDS into the token cache as arrays (ehrseq.data.stream, examples, token_cache); this is the
plain per-patient version of the same steps, slow and obvious, that the equality tests prove the cache equal to
(tests/support/reference_splits.py applies it per split and per labelled example). A visit is every event of one subject
on one calendar day unless `data.visit` says otherwise (ehrseq.data.visits); the rows are cut before a prediction
time before they become visits, so nothing at or after it leaks in. The code filter, the pretraining cut and the
numeric bins apply to the whole table likewise. The end of the file bridges Patient objects to the cache's
whole-history arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrseq.data.codes import CodeFilter
from ehrseq.data.history_arrays import NO_BIRTH, HistoryArrays
from ehrseq.data.meds_io import sort_events
from ehrseq.data.numeric import BinFitter, NumericBins, numeric_values
from ehrseq.data.pretrain_cut import PretrainCut
from ehrseq.data.tokenize import MAX_AGE_MONTHS, STATIC_SEGMENT
from ehrseq.data.visits import DAY_VISITS, VisitRule, visit_index
from ehrseq.data.vocab import Vocabulary


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
    # The visit's last event: rows are time-sorted, so it is the row before the next visit's first row (row
    # indices before the dedupe above, as `time_us` is).
    last_rows = np.r_[np.flatnonzero(new_visit)[1:] - 1, len(new_visit) - 1] if len(new_visit) else np.zeros(0, int)
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


def events_before(data: pa.Table, prediction_times: pa.Table) -> pa.Table:
    """Each subject's rows strictly before its prediction time, plus its static (null-time) rows.

    `prediction_times` has `subject_id` and `prediction_time` (a MEDS label table will do), one row per
    subject; subjects without one are dropped.
    """
    cut = prediction_times.select(["subject_id", "prediction_time"])
    if len(pc.unique(cut.column("subject_id"))) != cut.num_rows:
        raise ValueError("events_before: one prediction time per subject (events_before_each takes several)")
    return sort_events(_rows_before(data, cut))


def events_before_each(data: pa.Table, prediction_times: pa.Table) -> pa.Table:
    """`events_before` for any number of prediction times per subject: row i of `prediction_times` gets its own
    copy of its subject's rows strictly before its time (and the static rows), with `subject_id` set to i, the
    example's index (map it back through `prediction_times`); examples whose subject has no rows get none."""
    cut = prediction_times.select(["subject_id", "prediction_time"]).append_column(
        "_example", pa.array(range(prediction_times.num_rows), pa.int64()))
    rows = _rows_before(data, cut)
    example = rows.column("_example").cast(data.schema.field("subject_id").type)
    rows = rows.set_column(rows.schema.get_field_index("subject_id"), "subject_id", example)
    return sort_events(rows.drop_columns(["_example"]))


def _rows_before(data: pa.Table, cut: pa.Table) -> pa.Table:
    """`data` joined to `cut` (`subject_id`, `prediction_time`, any other columns carried along) on subject,
    keeping the rows strictly before their prediction time and the static (null-time) rows."""
    cut = cut.rename_columns(["subject_id", "_cut", *cut.column_names[2:]])
    cut = cut.set_column(0, "subject_id", cut.column("subject_id").cast(data.schema.field("subject_id").type))
    cut = cut.set_column(1, "_cut", cut.column("_cut").cast(data.schema.field("time").type))
    joined = join_in_row_order(data, cut)
    keep = pc.or_kleene(pc.is_null(joined.column("time")), pc.less(joined.column("time"), joined.column("_cut")))
    return joined.filter(keep).drop_columns(["_cut"])


def join_in_row_order(data: pa.Table, other: pa.Table) -> pa.Table:
    """`data` inner-joined to `other` on subject_id, its rows in `data`'s order: Arrow's hash join returns rows in
    whatever order its threads finish, and a reordering of same-time rows would reorder a visit's codes."""
    indexed = data.append_column("_row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
    joined = indexed.join(other, keys="subject_id", join_type="inner")
    return joined.take(pc.sort_indices(joined, [("_row", "ascending")])).drop_columns(["_row"])


def codes_kept(data: pa.Table, codes: CodeFilter) -> pa.Table:
    """A MEDS data table's rows whose code `codes` keeps (data.codes on the whole table)."""
    table = pc.dictionary_encode(data.column("code")).combine_chunks()
    allowed = codes.allows(table.dictionary.to_pylist())
    keep = allowed[table.indices.to_numpy(zero_copy_only=False)] if len(allowed) else np.ones(0, bool)
    return data if keep.all() else data.filter(pa.array(keep))


def pretraining_rows(data: pa.Table, cut: PretrainCut) -> pa.Table:
    """A MEDS data table's rows a pretraining may read (data.pretrain_data on the whole table)."""
    time = data.column("time").cast(pa.timestamp("us"))
    keep = cut.keep(data.column("subject_id").cast(pa.int64()).to_numpy(),
                    time.cast(pa.int64()).fill_null(0).to_numpy(), time.is_valid().to_numpy(zero_copy_only=False))
    return data if keep.all() else data.filter(pa.array(keep))


def _codes(data: pa.Table) -> tuple[list[str], np.ndarray]:
    codes = pc.dictionary_encode(data.column("code").cast(pa.string()).combine_chunks())
    return codes.dictionary.to_pylist(), codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def fit_table(data: pa.Table, train_subjects: np.ndarray, num_bins: int) -> NumericBins:
    """Numeric value bins from the rows of `data` (MEDS data schema) whose subject is in `train_subjects`."""
    names, code = _codes(data)
    subject = data.column("subject_id").cast(pa.int64()).to_numpy()
    train = np.isin(subject, train_subjects)
    fitter = BinFitter(num_bins)
    fitter.add(names, code[train], numeric_values(data.column("numeric_value"))[train], subject[train])
    return fitter.result()


def bin_table(data: pa.Table, bins: NumericBins) -> pa.Table:
    """`data` with each valued event's code replaced by its value bin's token."""
    names, code = bins.apply(*_codes(data), numeric_values(data.column("numeric_value")))
    binned = pa.DictionaryArray.from_arrays(pa.array(code, pa.int32()), pa.array(names, pa.string()))
    return data.set_column(data.schema.get_field_index("code"), "code", binned.dictionary_decode())

def cut_patient(patient: Patient, prediction_time: datetime) -> Patient:
    """The patient with only the visits that ended strictly before `prediction_time` (a visit spanning it is dropped
    whole: which of its codes came first is no longer known at that level)."""
    kept = tuple(v for v in patient.visits if (v.end or v.time) < prediction_time)
    return replace(patient, visits=kept)


def build_vocabulary(patients: Iterable[Patient], min_count: int = 1) -> Vocabulary:
    """Count every code occurrence across all visits, and each static code once per patient; keep those seen at
    least `min_count` times."""
    patients = list(patients)
    counts = Counter(code for patient in patients for visit in patient.visits for code in visit.codes)
    counts.update(code for patient in patients for code in patient.static)
    return Vocabulary({code: n for code, n in counts.items() if n >= min_count})


@dataclass
class EncodedPatient:
    """Parallel token lists, all the same length, ready for batching."""

    subject_id: int
    codes: list[int]
    ages: list[int]
    segments: list[int]
    positions: list[int]


def _age_months(birth: datetime | None, when: datetime) -> int:
    """Completed months from `birth` to `when`, clipped to [0, MAX_AGE_MONTHS]; 0 when birth is unknown."""
    if birth is None:
        return 0
    months = (when.year - birth.year) * 12 + when.month - birth.month
    if (when.day, when.time()) < (birth.day, birth.time()):
        months -= 1
    return min(max(months, 0), MAX_AGE_MONTHS)


def encode_patient(patient: Patient, vocab: Vocabulary, max_len: int) -> EncodedPatient:
    """Encode the static codes and the most recent visits that fit in `max_len` tokens, dropping whole oldest
    visits first.

    Recent history matters most for prediction. If even the latest visit does not fit, its first codes that
    fit are kept (with room for its [SEP]). Static codes outside the vocabulary are left out ([UNK] would say
    nothing); at most `max_len - 2` are kept.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 ([CLS] plus one [SEP]), got {max_len}")
    static = [i for i in (vocab.encode(code) for code in patient.static) if i != Vocabulary.UNK][: max_len - 2]
    kept: list[tuple[datetime, tuple[str, ...]]] = []
    used = 1 + len(static)  # [CLS] and the static codes
    for visit in reversed(patient.visits):
        if used + len(visit.codes) + 1 > max_len:
            break
        kept.append((visit.time, visit.codes))
        used += len(visit.codes) + 1
    if not kept and patient.visits:
        latest = patient.visits[-1]
        kept.append((latest.time, latest.codes[: max_len - used - 1]))
    kept.reverse()

    first_age = _age_months(patient.birth, kept[0][0]) if kept else 0
    out = EncodedPatient(patient.subject_id, [Vocabulary.CLS, *static], [first_age] * (1 + len(static)),
                         [0] + [STATIC_SEGMENT] * len(static), [0] * (1 + len(static)))
    for i, (time, codes) in enumerate(kept):
        n = len(codes) + 1
        out.codes += [vocab.encode(code) for code in codes] + [Vocabulary.SEP]
        out.ages += [_age_months(patient.birth, time)] * n
        out.segments += [i % 2] * n
        out.positions += [i] * n
    return out


def _us(times: list) -> np.ndarray:
    return np.array([np.datetime64(t, "us").astype(np.int64) for t in times], np.int64)


def history_arrays(patients: Sequence[Patient], names: Sequence[str] | None = None) -> HistoryArrays:
    """`patients` as HistoryArrays; codes are ids in `names` (default: the specials, then every code sorted)."""
    if names is None:
        codes = {c for p in patients for v in p.visits for c in v.codes} | {c for p in patients for c in p.static}
        names = [*Vocabulary.SPECIALS, *sorted(codes)]
    ids = {name: i for i, name in enumerate(names)}
    encode = lambda codes: [ids.get(c, Vocabulary.UNK) for c in codes]  # noqa: E731
    visits = [v for p in patients for v in p.visits]
    return HistoryArrays(
        births=np.array([NO_BIRTH if p.birth is None else _us([p.birth])[0] for p in patients], np.int64),
        visit_offsets=np.r_[0, np.cumsum([len(p.visits) for p in patients])].astype(np.int64),
        visit_times=_us([v.time for v in visits]),
        event_offsets=np.r_[0, np.cumsum([sum(len(v.codes) for v in p.visits) for p in patients])].astype(np.int64),
        event_codes=np.array([i for v in visits for i in encode(v.codes)], np.int32),
        event_visits=np.array([j for p in patients for j, v in enumerate(p.visits) for _ in v.codes], np.int32),
        static_offsets=np.r_[0, np.cumsum([len(p.static) for p in patients])].astype(np.int64),
        static_codes=np.array([i for p in patients for i in encode(p.static)], np.int32),
        names=list(names))


def visit_codes(h: HistoryArrays, row: int) -> list[tuple[str, ...]]:
    """Patient `row`'s visits as tuples of code names, in order."""
    a, b = h.event_offsets[row], h.event_offsets[row + 1]
    visits = h.event_visits[a:b]
    return [tuple(h.names[c] for c in h.event_codes[a:b][visits == j])
            for j in range(h.visit_offsets[row + 1] - h.visit_offsets[row])]


def assert_equal_histories(got: HistoryArrays, patients: Sequence[Patient], vocab: Vocabulary) -> None:
    """The cache's histories hold exactly the patients' births, visit times, visit codes and static codes."""
    want = history_arrays(patients, vocab.itos)
    assert len(got) == len(want)
    for name in ("births", "visit_offsets", "visit_times", "event_offsets", "event_codes", "event_visits",
                 "static_offsets", "static_codes"):
        assert np.array_equal(np.asarray(getattr(got, name)), getattr(want, name)), name
