"""A MEDS dataset read shard by shard and turned into BEHRT tokens with numpy, never the whole dataset at once.

Exactly the result of the plain per-patient path the tests keep as the reference (tests/support/reference_histories.py:
Patient objects, their vocabulary, their tokens), but without a Python object per patient or visit: memory is
bounded by one shard and a shard of a million rows takes a fraction of a second. MEDS shards hold whole
subjects, so each shard is complete on its own; `iter_shards` checks that no subject appears in two of them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from ehrseq.data.history_arrays import NO_BIRTH, HistoryArrays, ragged_take
from ehrseq.data.meds_io import read_table
from ehrseq.data.numeric import BinFitter, NumericBins, numeric_values
from ehrseq.data.tokenize import MAX_AGE_MONTHS, STATIC_SEGMENT
from ehrseq.data.visits import DAY_VISITS, VisitRule, visit_index
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import DataError, InputError, one_line, regular_file

SPLITS = ("train", "tuning", "held_out")  # split code = index; -1: in no split (dropped)
COLUMNS = ("subject_id", "time", "code")
_DAY_US = 86_400 * 1_000_000
_NULL_TIME = np.iinfo(np.int64).min  # where time is null: sorts first, as static rows do in MEDS


class RowSelection(Protocol):
    """Something that keeps some of a shard's rows: data.codes (ehrseq.data.codes), a pretraining cut."""

    def apply(self, shard: Shard) -> Shard: ...


@dataclass
class Shard:
    """One data shard's rows in file order: subject, time (microseconds; _NULL_TIME where null) and code index."""

    path: Path
    subject: np.ndarray  # (R,) int64
    time: np.ndarray  # (R,) int64
    has_time: np.ndarray  # (R,) bool
    code: np.ndarray  # (R,) int64 index into names
    names: list[str]  # distinct codes
    value: np.ndarray | None = None  # (R,) float64 numeric_value, NaN where null (read when asked for)

    def rows(self, keep: np.ndarray) -> Shard:
        """The shard's rows where `keep` (R,) is True (itself when all are)."""
        if keep.all():
            return self
        return Shard(self.path, self.subject[keep], self.time[keep], self.has_time[keep], self.code[keep], self.names,
                     None if self.value is None else self.value[keep])

    def binned(self, bins: NumericBins) -> Shard:
        """The shard with each valued event's code replaced by its value bin's token (ehrseq.data.numeric)."""
        names, code = bins.apply(self.names, self.code, self.value)
        return Shard(self.path, self.subject, self.time, self.has_time, code, names, self.value)


def data_shards(dataset: Path) -> list[Path]:
    """The data shards, sorted: `data/<n>.parquet` and nested `data/<split>/<n>.parquet` (MEDS-Transforms);
    DataError naming one that is not a regular file."""
    files = sorted((Path(dataset) / meds.data_subdirectory).glob("**/*.parquet"))
    if not files:
        raise DataError(f"{Path(dataset) / meds.data_subdirectory}: no parquet files (is {dataset} a MEDS dataset?)")
    return [regular_file(f) for f in files]


def read_shard(path: Path, values: bool = False) -> Shard:
    """Read subject_id, time and code (and with `values`, numeric_value) of one shard, validating its whole
    schema as `meds_io.read_table` does.

    The schema is checked on an empty table (no data read); codes come back dictionary-encoded from parquet,
    which is many times faster than decoding strings."""
    try:
        meds.DataSchema.align(pq.read_schema(path).empty_table())
        columns = [*COLUMNS, "numeric_value"] if values else list(COLUMNS)
        table = pq.ParquetFile(path, read_dictionary=["code"]).read(columns=columns).unify_dictionaries()
    except (SchemaValidationError, TableValidationError) as e:
        raise DataError(f"{path}: {e}") from e
    except (pa.ArrowException, OSError) as e:  # a damaged footer raises a plain OSError
        raise DataError(f"{path}: not a readable parquet file ({one_line(e)})") from e
    try:
        subject = table.column("subject_id").cast(pa.int64())
        time = table.column("time").cast(pa.timestamp("us"))
        value = numeric_values(table.column("numeric_value")) if values else None
    except pa.ArrowException:  # values that do not cast (the empty schema did): read_table's own message
        read_table(path, meds.DataSchema)
        raise
    code = table.column("code")
    for name, column in (("subject_id", subject), ("code", code)):
        if column.null_count:
            raise DataError(f"{path}: column {name!r} is null in {column.null_count:,} rows")
    if not pa.types.is_dictionary(code.type):
        code = pc.dictionary_encode(code.cast(pa.string())).unify_dictionaries()
    names = code.chunk(0).dictionary.cast(pa.string()).to_pylist() if code.num_chunks else []
    index = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in code.chunks] or [[]])
    index = index.astype(np.int64)
    if len(set(names)) < len(names):  # repeated dictionary values: map each to its first
        first = {}
        remap = np.array([first.setdefault(n, len(first)) for n in names], np.int64)
        index, names = remap[index], list(first)
    return Shard(path, subject.to_numpy(), pc.fill_null(time.cast(pa.int64()), _NULL_TIME).to_numpy(),
                 pc.is_valid(time).to_numpy(zero_copy_only=False), index, names, value)


def iter_shards(dataset: Path, values: bool = False) -> Iterator[Shard]:
    """Every shard in order (`read_shard(path, values)`), the next read in a thread while the caller works on
    this one.

    Raises DataError if a subject appears in two shards (naming both) or, at the end, if no row has a time."""
    files = data_shards(dataset)
    seen: list[tuple[int, int, np.ndarray, Path]] = []  # each shard's subject range and distinct subjects
    rows = nulls = 0
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(read_shard, files[0], values)
        for i in range(len(files)):
            shard = ahead.result()
            if i + 1 < len(files):
                ahead = pool.submit(read_shard, files[i + 1], values)
            ids = shard.subject
            ids = ids[_starts(ids)] if np.all(ids[1:] >= ids[:-1]) else np.unique(ids)  # np.unique is slow
            if len(ids):
                for lo, hi, other, path in seen:
                    if lo <= ids[-1] and ids[0] <= hi and len(both := np.intersect1d(ids, other)):
                        raise DataError(f"{path} and {shard.path} both hold subject {both[0]} ({len(both):,} "
                                        "shared); a MEDS shard holds whole subjects")
                seen.append((ids[0], ids[-1], ids, shard.path))
            rows += len(shard.subject)
            nulls += len(shard.subject) - int(shard.has_time.sum())
            yield shard
    if rows and nulls == rows:
        raise DataError(f"{Path(dataset) / meds.data_subdirectory}: column 'time' is null in all {rows:,} rows of "
                        f"{len(files)} file(s); events need a time (a null time marks a static code)")


@dataclass
class SplitTable:
    """The subject splits file as sorted arrays: subject id -> split code (index in SPLITS, -1 for none)."""

    ids: np.ndarray  # (S,) int64, sorted
    split: np.ndarray  # (S,) int8
    path: Path

    def of(self, subjects: np.ndarray) -> np.ndarray:
        """The split code of each subject; -1 for one the file does not list."""
        if not len(self.ids):
            return np.full(len(subjects), -1, np.int8)
        at = np.minimum(np.searchsorted(self.ids, subjects), len(self.ids) - 1)
        return np.where(self.ids[at] == subjects, self.split[at], -1).astype(np.int8)


def read_splits(dataset: Path) -> SplitTable:
    """`metadata/subject_splits.parquet`, validated as `read_meds_dataset` does (each subject listed once).

    Read in batches into an int64 and an int8 array: 9 bytes a subject, not the ~70 of a table of strings."""
    path = Path(dataset) / meds.subject_splits_filepath
    try:
        meds.SubjectSplitSchema.align(pq.read_schema(path).empty_table())
        file = pq.ParquetFile(path, read_dictionary=["split"])
        ids, code = np.zeros(file.metadata.num_rows, np.int64), np.zeros(file.metadata.num_rows, np.int8)
        at = 0
        for batch in file.iter_batches(1 << 18, columns=["subject_id", "split"]):  # a batch at a time: flat RSS
            split = batch.column("split")
            if split.null_count or batch.column("subject_id").null_count:
                raise pa.ArrowInvalid("null values")  # refused below, in read_meds_dataset's words
            if not pa.types.is_dictionary(split.type):
                split = pc.dictionary_encode(split.cast(pa.string()))
            lut = np.array([SPLITS.index(s) if s in SPLITS else -1 for s in split.dictionary.to_pylist()] or [-1],
                           np.int8)
            ids[at: at + len(batch)] = batch.column("subject_id").cast(pa.int64()).to_numpy()
            code[at: at + len(batch)] = lut[split.indices.to_numpy(zero_copy_only=False)]
            at += len(batch)
    except (SchemaValidationError, TableValidationError, pa.ArrowException, OSError):
        read_table(path, meds.SubjectSplitSchema)  # raises its own message, naming the file
        raise
    if not np.all(ids[1:] > ids[:-1]):  # (assign_splits writes them sorted)
        order = np.argsort(ids, kind="stable")
        ids, code = ids[order], code[order]
    if (repeats := int((ids[1:] == ids[:-1]).sum())) > 0:
        raise DataError(f"{path}: column 'subject_id' lists {repeats:,} subjects more than once; each has one split")
    return SplitTable(ids, code, path)


def _starts(groups: np.ndarray) -> np.ndarray:
    """Whether each element of a grouped array starts a new run of equal values."""
    return np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)


def rank_in_group(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a grouped array."""
    first = np.flatnonzero(_starts(groups))
    return np.arange(len(groups)) - np.repeat(first, np.diff(np.r_[first, len(groups)]))


def passed_over(shard: Shard, splits: SplitTable) -> tuple[int, int]:
    """What tokenising would otherwise pass over in silence, counted for the data report: the shard's subjects
    in no split (or an unknown one), which `histories` leaves out, and the timed events of the others dated
    before their subject's birth, which `encode` gives age 0."""
    subject, time, has_time, code = shard.subject, shard.time, shard.has_time, shard.code
    if not np.all(subject[1:] >= subject[:-1]):
        order = np.argsort(subject, kind="stable")
        subject, time, has_time, code = subject[order], time[order], has_time[order], code[order]
    new_subject = _starts(subject)
    patient = np.cumsum(new_subject) - 1
    placed = splits.of(subject[new_subject]) >= 0
    is_birth = code == shard.names.index(meds.birth_code) if meds.birth_code in shard.names else np.zeros_like(has_time)
    no_birth = np.iinfo(np.int64).max
    birth = np.full(len(placed), no_birth)
    rows = is_birth & has_time
    np.minimum.at(birth, patient[rows], time[rows])  # the earliest birth row, as `histories` takes it
    rows = has_time & ~is_birth & placed[patient] & (birth != no_birth)[patient]
    return int((~placed).sum()), int((time[rows] < birth[patient[rows]]).sum())


@dataclass
class Histories:
    """One shard's patients (subjects in a split, sorted) as arrays: births, static codes and day visits.

    Visits (ehrseq.data.visits) are in time order per patient; `event_code[visit_start[v]:visit_start[v + 1]]`
    are visit v's distinct codes in first-seen order. Static codes are sorted by name within a patient. The
    `event_days` and `day_*` arrays say which calendar days and (day, code) events each token stands for, so
    coverage counts days whatever a visit is."""

    subjects: np.ndarray  # (P,) int64
    split: np.ndarray  # (P,) int8
    birth: np.ndarray  # (P,) int64 microseconds; meaningless where not has_birth
    has_birth: np.ndarray  # (P,) bool
    static_patient: np.ndarray  # (S,) patient index
    static_code: np.ndarray  # (S,) code index
    visit_patient: np.ndarray  # (V,) patient index, non-decreasing
    visit_time: np.ndarray  # (V,) the visit's first event, microseconds
    visit_start: np.ndarray  # (V + 1,) into event_code
    event_code: np.ndarray  # (E,) code index
    event_days: np.ndarray  # (E,) int32 days of its visit the code was recorded on: the (day, code) events it holds
    day_visit: np.ndarray  # (D,) int64 each (visit, calendar day) pair's visit, non-decreasing
    day: np.ndarray  # (D,) int64 its day since the epoch
    day_rank: np.ndarray  # (D,) int32 the first-seen rank in the visit of that day's earliest-seen code
    names: list[str]
    # next_visit examples (`last_visit_targets`): the removed last visit's time (P,), and its codes, each patient's
    # target_code[target_start[p]:target_start[p + 1]] (code indices); empty for other data
    target_time: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    target_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    target_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def save(self, path: Path) -> None:
        """As an uncompressed .npz (names as JSON), so pass 2 need not read and group the shard again."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "names"}
        np.savez(path, names=np.array(json.dumps(self.names)), **arrays)

    @classmethod
    def load(cls, path: Path) -> Histories:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in f.files if k != "names"}, names=json.loads(str(f["names"])))


def histories(shard: Shard, splits: SplitTable, visits: VisitRule = DAY_VISITS) -> Histories:
    """Group a shard's rows into patients, static codes, births and `visits` (ehrseq.data.visits), each visit's codes
    de-duplicated in first-seen order."""
    subject, time, has_time, code = shard.subject, shard.time, shard.has_time, shard.code
    later = subject[1:] > subject[:-1]  # MEDS shards usually come sorted by subject then time already
    if not (np.all(later | (subject[1:] == subject[:-1])) and np.all(later | (time[1:] >= time[:-1]))):
        order = np.lexsort((time, subject))  # stable: same-time rows keep their file order
        subject, time, has_time, code = subject[order], time[order], has_time[order], code[order]
    new_subject = _starts(subject)
    subjects = subject[new_subject]
    split = splits.of(subjects)
    if not np.all(split >= 0):  # drop subjects in no split
        keep = (split >= 0)[np.cumsum(new_subject) - 1]
        subject, time, has_time, code = subject[keep], time[keep], has_time[keep], code[keep]
        new_subject, subjects, split = new_subject[keep], subjects[split >= 0], split[split >= 0]
    patient = np.cumsum(new_subject) - 1
    num_patients, num_codes = len(subjects), len(shard.names)

    is_birth = code == shard.names.index(meds.birth_code) if meds.birth_code in shard.names else np.zeros_like(has_time)
    birth, has_birth = np.zeros(num_patients, np.int64), np.zeros(num_patients, bool)
    rows = is_birth & has_time
    bp, bt = patient[rows], time[rows]
    first = _starts(bp)  # rows are time-sorted, so each patient's first birth row is the earliest
    birth[bp[first]], has_birth[bp[first]] = bt[first], True

    rows = ~has_time & ~is_birth
    rank = np.empty(num_codes, np.int64)
    by_name = sorted(range(num_codes), key=shard.names.__getitem__)
    rank[by_name] = np.arange(num_codes)
    static = np.sort(patient[rows] * num_codes + rank[code[rows]])
    static = static[_starts(static)]  # distinct, by patient then name
    static_patient, static_code = static // num_codes, np.array(by_name, np.int64)[static % num_codes]

    rows = has_time & ~is_birth
    vp, vt, vc = patient[rows], time[rows], code[rows]
    visit = visit_index(vp, vt, vc, shard.names, visits)  # (R,)
    key = visit * num_codes + vc  # first occurrence of each code within a visit, in order
    order = np.argsort(key, kind="stable")
    first = _starts(key[order])  # (R,) in key order: a token's first row
    repeat = np.zeros(len(key), bool)
    repeat[order[~first]] = True
    keep = ~repeat
    token_row = np.zeros(len(key), np.int64)  # (R,) each row's token: the row of its code's first occurrence
    token_row[order] = order[first][np.cumsum(first) - 1]
    day = vt // _DAY_US
    new_day = first | np.r_[True, day[order][1:] != day[order][:-1]]  # (R,) in key order: rows are time-sorted
    days = np.zeros(len(key), np.int64)
    days[order[first]] = np.add.reduceat(new_day, np.flatnonzero(first)) if len(first) else 0
    rank = np.zeros(len(key), np.int64)
    rank[keep] = rank_in_group(visit[keep])  # first-seen rank of each token in its visit
    pair = np.flatnonzero(_starts(visit) | np.r_[True, day[1:] != day[:-1]]) if len(day) else np.zeros(0, np.int64)
    day_rank = np.minimum.reduceat(rank[token_row], pair) if len(pair) else np.zeros(0, np.int64)
    new_visit, vp, vt, vc = _starts(visit)[keep], vp[keep], vt[keep], vc[keep]
    starts = np.flatnonzero(new_visit)
    return Histories(subjects, split, birth, has_birth, static_patient, static_code, vp[starts], vt[starts],
                     np.r_[starts, len(vc)], vc.astype(np.int32), days[keep].astype(np.int32), visit[pair],
                     day[pair], day_rank.astype(np.int32), shard.names)


def last_visit_targets(h: Histories) -> Histories:
    """next_visit's examples: each patient with two or more visits, its history before its last visit (cut
    strictly before that visit's first event, so a birth at or after it is dropped too), that visit's time and
    codes as the target; the other patients left out."""
    num_visits = np.bincount(h.visit_patient, minlength=len(h.subjects))
    keep = num_visits >= 2  # (P,)
    last = (np.cumsum(num_visits) - 1)[keep]  # (P',) each kept patient's last visit
    src, target_start = ragged_take(h.visit_start, last)
    visits = keep[h.visit_patient]
    visits[last] = False
    renumber = np.cumsum(keep) - 1
    sizes = np.diff(h.visit_start)
    statics = keep[h.static_patient]
    target_time = h.visit_time[last]
    events, pairs = np.repeat(visits, sizes), visits[h.day_visit]
    return Histories(h.subjects[keep], h.split[keep], h.birth[keep], h.has_birth[keep] & (h.birth[keep] < target_time),
                     renumber[h.static_patient[statics]], h.static_code[statics], renumber[h.visit_patient[visits]],
                     h.visit_time[visits], np.r_[0, np.cumsum(sizes[visits])], h.event_code[events],
                     h.event_days[events], (np.cumsum(visits) - 1)[h.day_visit[pairs]], h.day[pairs],
                     h.day_rank[pairs], h.names, target_time, target_start, h.event_code[src])


def histories_of(arrays: HistoryArrays, ids: np.ndarray) -> Histories:
    """Whole histories from the token cache (or edited copies of them, as the order probe makes) as a shard's
    Histories named by `ids`, so `encode` tokenises them as it tokenised the cache."""
    rows = np.repeat(np.arange(len(arrays)), np.diff(arrays.visit_offsets))
    visit = np.asarray(arrays.visit_offsets[:-1])[arrays.event_rows()] + arrays.event_visits  # (E,) non-decreasing
    births = np.asarray(arrays.births)
    times = np.asarray(arrays.visit_times)
    # (coverage is not asked of these: each visit stands for its first day)
    return Histories(np.asarray(ids, np.int64), np.zeros(len(arrays), np.int8), np.where(births == NO_BIRTH, 0, births),
                     births != NO_BIRTH, arrays.static_rows(), np.asarray(arrays.static_codes, np.int64), rows, times,
                     np.r_[0, np.cumsum(np.bincount(visit, minlength=len(rows)))], np.asarray(arrays.event_codes),
                     np.ones(len(visit), np.int32), np.arange(len(rows)), times // _DAY_US,
                     np.zeros(len(rows), np.int32), list(arrays.names))


def fit_bins(dataset: Path, splits: SplitTable, num_bins: int, *selections: RowSelection) -> NumericBins:
    """Numeric value bins from the training split's values, a shard at a time (a pass of its own: the bins
    must be known before codes are counted); only the rows `selections` keep (data.codes, a pretraining cut)."""
    fitter = BinFitter(num_bins)
    for shard in iter_shards(dataset, values=True):
        for selection in selections:
            shard = selection.apply(shard)
        train = splits.of(shard.subject) == 0
        fitter.add(shard.names, shard.code[train], shard.value[train], shard.subject[train])
    return fitter.result()


def count_codes(h: Histories, counts: Counter) -> None:
    """Add the training patients' code counts to `counts`: every visit code (after de-duplication) and each static
    code once per patient."""
    train = h.split == 0
    per_visit = train[h.visit_patient]
    events = np.repeat(per_visit, np.diff(h.visit_start))
    n = np.bincount(h.event_code[events], minlength=len(h.names))
    n += np.bincount(h.static_code[train[h.static_patient]], minlength=len(h.names))
    for i in np.flatnonzero(n).tolist():
        counts[h.names[i]] += int(n[i])


def training_vocabulary(counts: Counter, min_count: int, source: str, bins: NumericBins | None = None) -> Vocabulary:
    """The training split's codes seen at least `min_count` times (with the numeric `bins` they were counted
    under); none at all would leave models nothing but [UNK] to learn (and MLM nothing to sample replacements
    from), so that is bad input (InputError)."""
    vocab = Vocabulary({code: n for code, n in counts.items() if n >= min_count}, bins)
    if len(vocab) == vocab.num_special:
        raise InputError(f"data.min_code_count: no code occurs {min_count:,} times in the 'train' split of {source} "
                         f"({len(counts):,} distinct codes, the most frequent {max(counts.values(), default=0):,} "
                         "times); lower it or use more data")
    return vocab


# each ragged group of Tokens: its per-patient count -> its per-element arrays
RAGGED = {"lengths": ("codes", "ages", "segments", "positions"), "num_visits": ("visit_times",),
          "num_events": ("event_codes", "event_visits"), "num_static": ("static_codes",),
          "num_targets": ("target_codes",)}


@dataclass
class Tokens:
    """Encoded patients as flat arrays (as TokenArrays), `lengths` tokens each, in subject order, and their whole
    histories (as HistoryArrays: every visit, not only those the window keeps; codes as vocabulary ids)."""

    codes: np.ndarray  # (N,) int32
    ages: np.ndarray  # (N,) int16
    segments: np.ndarray  # (N,) int8
    positions: np.ndarray  # (N,) int16
    lengths: np.ndarray  # (P,) int64
    subjects: np.ndarray  # (P,) int64
    split: np.ndarray  # (P,) int8
    births: np.ndarray  # (P,) int64 microseconds, NO_BIRTH where unknown
    num_visits: np.ndarray  # (P,) int64
    visit_times: np.ndarray  # (V,) int64 microseconds
    num_events: np.ndarray  # (P,) int64
    event_codes: np.ndarray  # (E,) int32
    event_visits: np.ndarray  # (E,) int32 visit index within the patient
    num_static: np.ndarray  # (P,) int64
    static_codes: np.ndarray  # (S,) int32
    target_times: np.ndarray  # (P,) int64 microseconds: next_visit's predicted visit (NO_BIRTH for other data)
    num_targets: np.ndarray  # (P,) int64
    target_codes: np.ndarray  # (T,) int32 that visit's codes
    # (P, 4) int64 per patient: calendar days kept (a day some kept token holds), days in its history, (day, code)
    # events kept, events in its history: how much of what came before the prediction time reaches the model
    kept: np.ndarray | None = None

    def select(self, split: int) -> Tokens:
        """The patients of one split."""
        keep = self.split == split
        elements = {name for arrays in RAGGED.values() for name in arrays}
        out = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[keep]
               for f in fields(self) if f.name not in elements}
        for count, arrays in RAGGED.items():
            elements = np.repeat(keep, getattr(self, count))
            out |= {name: getattr(self, name)[elements] for name in arrays}
        return Tokens(**out)


def age_months(birth: np.ndarray, when: np.ndarray) -> np.ndarray:
    """Completed months from `birth` to `when` (microseconds), clipped to [0, MAX_AGE_MONTHS]: calendar
    months, minus one when (day of month, time of day) of `when` is before that of `birth`."""

    def parts(us: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        day = us // _DAY_US
        month = day.astype("datetime64[D]").astype("datetime64[M]")
        return month.astype(np.int64), day - month.astype("datetime64[D]").astype(np.int64), us - day * _DAY_US

    (bm, bd, bt), (wm, wd, wt) = parts(birth), parts(when)
    months = wm - bm - ((wd < bd) | ((wd == bd) & (wt < bt)))
    return np.clip(months, 0, MAX_AGE_MONTHS)


def encode(h: Histories, vocab: Vocabulary, max_len: int) -> Tokens:
    """Every patient of the shard as BEHRT input (ehrseq.data.tokenize's layout), at most `max_len` tokens.

    `[CLS] static v1 [SEP] v2 [SEP] ...`: the most recent whole visits that fit, or if none fits the latest's
    first codes that do; static codes outside the vocabulary dropped, at most max_len - 2 of them."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 ([CLS] plus one [SEP]), got {max_len}")
    num_patients = len(h.subjects)
    lut = np.array([vocab.encode(name) for name in h.names] or [0], np.int32)

    sid = lut[h.static_code]
    sp = h.static_patient[sid != Vocabulary.UNK]
    sid = sid[sid != Vocabulary.UNK]
    srank = rank_in_group(sp)
    sp, sid, srank = sp[srank < max_len - 2], sid[srank < max_len - 2], srank[srank < max_len - 2]
    num_static = np.bincount(sp, minlength=num_patients)
    budget = max_len - 1 - num_static  # tokens left for visits and their [SEP]s

    vp, size = h.visit_patient, np.diff(h.visit_start)
    last = np.searchsorted(vp, np.arange(num_patients), side="right") - 1  # each patient's latest visit
    has_visits = last >= np.searchsorted(vp, np.arange(num_patients), side="left")
    width = np.cumsum(size + 1)
    suffix = width[last[vp]] - width + size + 1  # tokens of this visit and all later ones
    kept = suffix <= budget[vp]
    length = np.where(kept, size, 0)
    forced = has_visits & (np.bincount(vp[kept], minlength=num_patients) == 0)  # even the latest does not fit
    kept[last[forced]] = True
    length[last[forced]] = budget[forced] - 1

    visits = np.flatnonzero(kept)  # a suffix of each patient's visits
    vp, vlen = vp[visits], length[visits]
    per_patient = np.bincount(vp, minlength=num_patients)
    index = rank_in_group(vp)  # visit index within the kept ones: position, and segment parity
    vage = np.where(h.has_birth[vp], age_months(h.birth[vp], h.visit_time[visits]), 0)
    first_age = np.zeros(num_patients, np.int64)
    first_age[vp[index == 0]] = vage[index == 0]
    visit_tokens = np.bincount(vp, weights=vlen + 1, minlength=num_patients).astype(np.int64)
    lengths = 1 + num_static + visit_tokens
    offsets = np.r_[0, np.cumsum(lengths)]
    total = int(offsets[-1])
    codes, ages = np.empty(total, np.int32), np.empty(total, np.int16)
    segments, positions = np.empty(total, np.int8), np.empty(total, np.int16)

    cls = offsets[:-1]
    codes[cls], ages[cls], segments[cls], positions[cls] = Vocabulary.CLS, first_age, 0, 0
    at = offsets[sp] + 1 + srank
    codes[at], ages[at], segments[at], positions[at] = sid, first_age[sp], STATIC_SEGMENT, 0

    span = vlen + 1  # each kept visit's tokens: its codes, then [SEP]
    within = np.cumsum(span) - span  # exclusive, over all kept visits of the shard
    first_visit = np.r_[0, np.cumsum(per_patient)][:-1]
    start = offsets[vp] + 1 + num_static[vp] + within - within[first_visit[vp]]
    at = np.repeat(start - within, span) + np.arange(int(span.sum()))
    codes[at] = Vocabulary.SEP
    ages[at], segments[at], positions[at] = np.repeat(vage, span), np.repeat(index % 2, span), np.repeat(index, span)
    done = np.cumsum(vlen) - vlen
    step = np.arange(int(vlen.sum())) - np.repeat(done, vlen)
    token = np.repeat(h.visit_start[visits], vlen) + step  # (K,) the kept tokens, into event_code
    codes[np.repeat(start, vlen) + step] = lut[h.event_code[token]]
    targets = len(h.target_start) == num_patients + 1
    num_visits = np.bincount(h.visit_patient, minlength=num_patients)
    num_events = np.bincount(h.visit_patient, weights=size, minlength=num_patients).astype(np.int64)
    reach = kept[h.day_visit] & (h.day_rank < length[h.day_visit])  # (D,) a day reaches the model by any code
    kept_counts = np.stack([_distinct_days(h, reach), _distinct_days(h, np.ones(len(reach), bool)),
                            np.bincount(np.repeat(vp, vlen), weights=h.event_days[token], minlength=num_patients),
                            np.bincount(np.repeat(h.visit_patient, size), weights=h.event_days,
                                        minlength=num_patients)], 1).astype(np.int64)
    return Tokens(codes, ages, segments, positions, lengths, h.subjects, h.split,
                  np.where(h.has_birth, h.birth, NO_BIRTH), num_visits, h.visit_time, num_events,
                  lut[h.event_code], np.repeat(rank_in_group(h.visit_patient), size).astype(np.int32),
                  np.bincount(h.static_patient, minlength=num_patients), lut[h.static_code],
                  h.target_time if targets else np.full(num_patients, NO_BIRTH),
                  np.diff(h.target_start) if targets else np.zeros(num_patients, np.int64), lut[h.target_code],
                  kept_counts)


def _distinct_days(h: Histories, where: np.ndarray) -> np.ndarray:
    """(P,) distinct calendar days per patient among the (visit, day) pairs `where` (D,) marks (a day two visits
    share counts once: pairs are in (patient, day) order)."""
    patient, day = h.visit_patient[h.day_visit[where]], h.day[where]
    new = np.r_[True, (patient[1:] != patient[:-1]) | (day[1:] != day[:-1])] if len(day) else np.zeros(0, bool)
    return np.bincount(patient[new], minlength=len(h.subjects))


def coverage(kept: np.ndarray) -> dict[str, Any]:
    """Median and 10th percentile over patients of the share of their days and of their (day, code) events that
    reach the model, from `Tokens.kept` rows (patients without any event before the prediction time count as
    fully covered); the number of patients."""
    kept = np.asarray(kept, np.float64).reshape(-1, 4)
    out: dict[str, Any] = {"patients": len(kept)}
    for name, (k, total) in (("days", (0, 1)), ("events", (2, 3))):
        share = np.divide(kept[:, k], kept[:, total], out=np.ones(len(kept)), where=kept[:, total] > 0)
        out[name] = {"median": float(np.median(share)) if len(share) else None,
                     "p10": float(np.quantile(share, 0.1)) if len(share) else None}
    return out

