"""Synthea CSV export (patients.csv, encounters.csv, conditions.csv, ...) -> MEDS events.

Event files are read in blocks with pyarrow's streaming CSV reader and converted with vectorised compute,
so memory is bounded by the block size, not the file size (observations.csv runs to many GB). Headers are
Synthea's upper-case names; procedures.csv has START since Synthea 3 and DATE before, and a SYSTEM column
(where present) overrides each file's usual code system. Patients get dense ids 1..N in patients.csv order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from ehrseq.data.convert.codes import namespace, parse_time
from ehrseq.data.convert.report import Problems
from ehrseq.errors import DataError

# file, time columns (the first present is used), usual code system
EVENT_FILES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("encounters.csv", ("START",), "SNOMED"),
    ("conditions.csv", ("START",), "SNOMED"),
    ("medications.csv", ("START",), "RXNORM"),
    ("procedures.csv", ("START", "DATE"), "SNOMED"),  # DATE before Synthea 3
    ("immunizations.csv", ("DATE",), "CVX"),
    ("observations.csv", ("DATE",), "LOINC"),
    ("allergies.csv", ("START",), "SNOMED"),
)
_ISO = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
BLOCK_SIZE = 8 << 20


def _header(path: Path) -> dict[str, str]:
    """Upper-cased column name -> name as written (older exports spell patients.csv's `Id` so)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            names = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    return {name.strip().upper(): name for name in names}


def _require(path: Path, header: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header.values())})")
    return [header[n] for n in names]


def _times(values: pa.Array) -> pa.Array:
    """ISO dates/datetimes -> timestamp[us] (wall clock, zone suffix dropped); null where malformed."""
    try:  # Synthea writes `2019-05-13T11:21:41Z` or `2019-05-13`: one cast, no regex (5x faster)
        return pc.utf8_rtrim(values, characters="Z").cast(pa.timestamp("us"))
    except pa.ArrowInvalid:
        pass
    values = pc.utf8_trim_whitespace(values)
    ok = pc.fill_null(pc.match_substring_regex(values, _ISO), False)
    bare = pc.if_else(ok, pc.replace_substring_regex(values, r"(Z|[+-]\d{2}:?\d{2})$", ""), None)
    try:
        return bare.cast(pa.timestamp("us"))
    except pa.ArrowInvalid:  # well-formed but impossible, e.g. month 13: parse one by one
        return pa.array([parse_time(v) for v in bare.to_pylist()], pa.timestamp("us"))


class _CountingReader(io.RawIOBase):
    """A file that counts the bytes read from it, for a progress bar over bytes."""

    def __init__(self, f: io.BufferedReader, on_read: Callable[[int], None]) -> None:
        self.f, self.on_read = f, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        n = self.f.readinto(buffer)
        self.on_read(n)
        return n


class SyntheaCsvReader:
    """Reads the CSV files of one Synthea export folder."""

    unit = "bytes"

    def __init__(self, src: Path, problems: Problems) -> None:
        self.src = Path(src)
        self.problems = problems
        self.patients_path = self.src / "patients.csv"
        if not self.patients_path.is_file():
            raise DataError(f"{self.patients_path}: file not found (is {self.src} a Synthea CSV export folder?)")
        self.event_files = [(self.src / name, t, ns) for name, t, ns in EVENT_FILES if (self.src / name).is_file()]
        self.files = [self.patients_path] + [p for p, _, _ in self.event_files]
        self.source_ids: list[str] = []
        self._ids = pa.array([], pa.string())
        self._done = 0

    def events(self, on_progress: Callable[[int, int], None] | None = None) -> Iterator[pa.Table]:
        total = sum(p.stat().st_size for p in self.files)

        def advance(n: int) -> None:
            self._done += n
            if on_progress:
                on_progress(min(self._done, total), total)

        yield self._patients(advance)
        for path, time_columns, default_system in self.event_files:
            yield from self._event_file(path, time_columns, default_system, advance)

    def _blocks(self, path: Path, columns: list[str], advance: Callable[[int], None]) -> Iterator[pa.RecordBatch]:
        def ragged_row(row: pacsv.InvalidRow) -> str:  # too many or too few fields
            where = f"line {row.number}" if row.number else "a row"
            self.problems.bad_entries(f"{path}: {where}",
                                      f"expected {row.expected_columns} fields, got {row.actual_columns}")
            return "skip"

        options = {
            "read_options": pacsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=False),  # line numbers in errors
            "parse_options": pacsv.ParseOptions(invalid_row_handler=ragged_row if self.problems.skip_bad else None),
            "convert_options": pacsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns}, strings_can_be_null=True,
            ),
        }
        with open(path, "rb") as raw:
            try:
                yield from pacsv.open_csv(io.BufferedReader(_CountingReader(raw, advance)), **options)
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: not a readable CSV file ({e})") from None

    def _bad_rows(self, path: Path, first_row: int, checks: list[tuple[str, pa.Array, pa.Array]]) -> np.ndarray:
        """Rows failing any check (why, parsed column: null = bad, raw column to quote); raises naming the
        first, or counts them all (skip_bad). Returns the mask of good rows."""
        ok = np.logical_and.reduce([pc.is_valid(parsed).to_numpy(zero_copy_only=False) for _, parsed, _ in checks])
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            why, raw = next((why, raw) for why, parsed, raw in checks if not parsed[row].is_valid)
            # Line numbers count the header as line 1 (Synthea never writes multi-line fields); with --skip-bad,
            # ragged rows skipped earlier in the file are not counted, so the line is approximate there.
            self.problems.bad_entries(f"{path}: line {first_row + row + 2}", f"{why} (got {raw[row].as_py()!r})",
                                      count=int((~ok).sum()))
        return ok

    def _patients(self, advance: Callable[[int], None]) -> pa.Table:
        path = self.patients_path
        header = _header(path)
        id_col, birth_col = _require(path, header, "ID", "BIRTHDATE")
        death_col, gender_col = header.get("DEATHDATE"), header.get("GENDER")
        columns = [c for c in (id_col, birth_col, death_col, gender_col) if c]
        table = pa.Table.from_batches(list(self._blocks(path, columns, advance))).combine_chunks()
        ids, birth = table.column(id_col), _times(table.column(birth_col))
        no_death = pa.nulls(table.num_rows, pa.string())
        raw_death = table.column(death_col) if death_col else no_death
        death = _times(raw_death) if death_col else no_death.cast(pa.timestamp("us"))
        death_ok = pc.if_else(pc.is_null(raw_death), True, pc.is_valid(death))  # empty, or a real date
        ok = self._bad_rows(path, 0, [
            (f"missing {id_col}", ids, ids),
            (f"{birth_col} is not a date", birth, table.column(birth_col)),
            (f"{death_col} is not a date", pc.if_else(death_ok, True, None), raw_death),
        ])
        table, birth, death = table.filter(pa.array(ok)), birth.filter(pa.array(ok)), death.filter(pa.array(ok))
        self._ids = table.column(id_col).combine_chunks()
        self.source_ids = self._ids.to_pylist()
        subject = pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))
        dead = pc.is_valid(death)
        parts = [
            pa.table({"subject_id": subject, "time": birth, "code": pa.array([meds.birth_code] * len(subject))}),
            pa.table({"subject_id": subject.filter(dead), "time": death.filter(dead),
                      "code": pa.array([meds.death_code] * int(pc.sum(dead).as_py() or 0), pa.string())}),
        ]
        if gender_col:
            gender = pc.utf8_upper(table.column(gender_col).combine_chunks())
            known = pc.is_valid(gender)
            parts.append(pa.table({"subject_id": subject.filter(known),
                                   "time": pa.nulls(int(pc.sum(known).as_py() or 0), pa.timestamp("us")),
                                   "code": pc.binary_join_element_wise("SEX", gender.filter(known), "//")}))
        return _with_values(pa.concat_tables([p.cast(_BASE) for p in parts]))

    def _event_file(self, path: Path, time_columns: tuple[str, ...], default_system: str,
                    advance: Callable[[int], None]) -> Iterator[pa.Table]:
        header = _header(path)
        time_name = next((t for t in time_columns if t in header), time_columns[0])
        patient_col, time_col, code_col = _require(path, header, "PATIENT", time_name, "CODE")
        system_col = header.get("SYSTEM")
        value_col = header.get("VALUE") if path.name == "observations.csv" else None
        columns = [c for c in (patient_col, time_col, code_col, system_col, value_col) if c]
        default_ns = namespace(default_system)
        rows_before = 0
        for block in self._blocks(path, columns, advance):
            subject = pc.index_in(block.column(patient_col), value_set=self._ids)
            time = _times(block.column(time_col))
            code = block.column(code_col)  # empty fields read as null
            ok = self._bad_rows(path, rows_before, [
                (f"{patient_col} is not a patient in {self.patients_path.name}", subject, block.column(patient_col)),
                (f"{time_col} is not a date/datetime", time, block.column(time_col)),
                (f"missing {code_col}", code, block.column(code_col)),
            ])
            rows_before += block.num_rows
            if not ok.any():
                continue
            mask = pa.array(ok)
            if system_col:
                systems = block.column(system_col).filter(mask)
                uniques = pa.array(pc.unique(systems).to_pylist(), pa.string())  # a handful: map each once
                mapped = pa.array([namespace(s) if s else default_ns for s in uniques.to_pylist()], pa.string())
                ns = pc.take(mapped, pc.index_in(systems, value_set=uniques))
            else:
                ns = pa.array([default_ns] * int(ok.sum()), pa.string())
            events = pa.table({
                "subject_id": pc.add(subject.filter(mask).cast(pa.int64()), 1),
                "time": time.filter(mask),
                "code": pc.binary_join_element_wise(ns, code.filter(mask), "//"),
            })
            if value_col:
                value = block.column(value_col).filter(mask)
                numeric = pc.fill_null(pc.match_substring_regex(value, _NUMBER), False)
                events = events.append_column("numeric_value", pc.if_else(numeric, value, None).cast(pa.float32()))
                events = events.append_column("text_value", pc.if_else(numeric, None, value).cast(pa.large_string()))
            yield _with_values(events)


_BASE = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string())])


def _with_values(events: pa.Table) -> pa.Table:
    """Add the value columns as nulls where a file has none."""
    n = events.num_rows
    if "numeric_value" not in events.column_names:
        events = events.append_column("numeric_value", pa.nulls(n, pa.float32()))
    if "text_value" not in events.column_names:
        events = events.append_column("text_value", pa.nulls(n, pa.large_string()))
    return events
