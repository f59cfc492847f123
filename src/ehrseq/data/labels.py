"""Task labels in the MEDS label layout: beside a dataset (`<dataset>/labels/<task>.parquet`) or anywhere
(`task.labels_path`: a parquet file, or a folder as ACES writes them, `<dir>/<task>.parquet` or sharded
`<dir>/<task>/**/*.parquet`).

Labels (`subject_id`, `prediction_time`, `boolean_value`, ...; survival tasks use `boolean_value` for the
event and `float_value` for days from prediction time to event or censoring) are validated against the
`meds` LabelSchema on read, and problems name the file and column. Synthetic cohorts also know each
patient's true risk: `<dataset>/oracle/<task>.parquet` (`subject_id`, `prediction_time`, `true_risk`,
`true_risk_order_blind`, row-aligned with the labels) gives the oracle ceiling a model can be compared with,
and the order-blind ceiling (the same risk without the planted order term). It is kept out of
`labels/` so nothing that reads labels can mistake it for one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from ehrseq.errors import DataError, regular_file

LABELS_DIR = "labels"
VALUE_COLUMNS = ("boolean_value", "integer_value", "float_value", "categorical_value")
ORACLE_DIR = "oracle"


def label_path(task: str) -> str:
    """Path of a task's labels inside a dataset."""
    return f"{LABELS_DIR}/{task}.parquet"


def oracle_path(task: str) -> str:
    return f"{ORACLE_DIR}/{task}.parquet"


def align_labels(labels: pa.Table) -> pa.Table:
    """Cast to the MEDS label schema; extra columns or wrong types are a DataError."""
    try:
        return meds.LabelSchema.align(labels)
    except (SchemaValidationError, TableValidationError) as e:
        raise DataError(f"labels: {e}") from e


def write_labels(dataset: Path | str, task: str, labels: pa.Table) -> Path:
    """Write (or replace) one task's labels in an existing dataset folder."""
    path = Path(dataset) / label_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(align_labels(labels), path)
    return path


def read_labels(dataset: Path | str, task: str) -> pa.Table:
    path = Path(dataset) / label_path(task)
    if not path.is_file():
        known = ", ".join(list_tasks(dataset)) or "none"
        raise DataError(f"{path}: no labels for task {task!r} (tasks with labels: {known})")
    try:
        return meds.LabelSchema.align(pq.read_table(path))
    except (SchemaValidationError, TableValidationError) as e:
        raise DataError(f"{path}: {e}") from e
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from e


def list_tasks(dataset: Path | str) -> list[str]:
    return sorted(p.stem for p in (Path(dataset) / LABELS_DIR).glob("*.parquet"))


def read_oracle(dataset: Path | str, task: str) -> pa.Table | None:
    """The true risks for a task's labels, or None when the dataset has none (real data never does)."""
    path = Path(dataset) / oracle_path(task)
    return pq.read_table(path) if path.is_file() else None


def label_files(path: Path | str, task: str | None) -> list[Path]:
    """The parquet files holding one task's labels under `task.labels_path`.

    A file is itself. A folder with `task` named: `<dir>/<task>/**/*.parquet` (ACES, sharded) or
    `<dir>/<task>.parquet` (ACES, one file). A folder without `task`: every parquet under it (it is one task's
    folder). Hidden folders (ACES's `.logs`) are skipped.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"task.labels_path: {path} is neither a file nor a folder")
    if task is None:
        found = _parquet_under(path)
        if not found:
            raise DataError(f"task.labels_path: {path} holds no .parquet files")
        return found
    if (path / task).is_dir() and _parquet_under(path / task):
        return _parquet_under(path / task)
    if (path / f"{task}.parquet").is_file():
        return [path / f"{task}.parquet"]
    tasks = sorted({p.stem for p in path.glob("*.parquet")} | {p.name for p in path.iterdir()
                                                                 if p.is_dir() and _parquet_under(p)})
    raise DataError(f"task.labels_path: {path} has no labels for task.labels {task!r} (looked for {path / task}/ "
                    f"and {path / task}.parquet; tasks there: {', '.join(tasks) or 'none'})")


def _parquet_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_label_files(files: list[Path], kind: str) -> pa.Table:
    """The files' rows aligned to the MEDS LabelSchema, with the columns a `kind` task needs, as one table;
    errors name the file.

    Value columns that are entirely null are dropped first: ACES writes all four (integer_value, float_value,
    categorical_value beside boolean_value) and the `meds` schema refuses nulls in a column that is present."""
    tables = []
    for f in files:
        try:
            table = pq.read_table(regular_file(f))
            empty = [c for c in VALUE_COLUMNS if c in table.column_names and table.column(c).null_count == len(table)]
            tables.append(meds.LabelSchema.align(table.drop_columns(empty)))
        except (SchemaValidationError, TableValidationError) as e:
            raise DataError(f"{f}: {e}") from e
        except pa.ArrowException as e:
            raise DataError(f"{f}: not a readable parquet file ({e})") from e
        require_columns(tables[-1], kind, str(f))
    return pa.concat_tables(tables)


def require_columns(labels: pa.Table, kind: str, where: str) -> None:
    """The label columns a `kind` task reads present and without nulls (LabelSchema makes them optional):
    `boolean_value` (the outcome, or survival's event flag) and for survival `float_value` (days to event)."""
    for column in ("boolean_value", "float_value") if kind == "survival" else ("boolean_value",):
        if column not in labels.column_names:
            raise DataError(f"{where}: column {column!r} is missing (a {kind} task needs it; the file has "
                            f"{', '.join(labels.column_names)})")
        if labels.column(column).null_count:
            raise DataError(f"{where}: column {column!r} has {labels.column(column).null_count} null values "
                            f"of {labels.num_rows} (every {kind} example needs one)")


@dataclass
class LabelReport:
    """What happened to the label rows on the way to examples: every dropped row is counted by reason.

    Rules: exact duplicate (subject_id, prediction_time) rows are kept once (duplicates with different labels
    are an error); rows of subjects absent from the data, or in none of the dataset's splits, are dropped; rows
    whose prediction time is at or before the subject's first event are dropped (no history to predict from:
    the input holds only events strictly before the prediction time; birth and static codes are not events).
    """

    source: str  # the file or folder read
    rows: int  # label rows read
    duplicates: int = 0  # repeated (subject_id, prediction_time) rows, dropped
    absent_subjects: int = 0  # rows whose subject has no data
    unsplit_subjects: int = 0  # rows whose subject is in no split
    no_history: int = 0  # rows with a prediction time at or before the subject's first event
    examples: int = 0  # rows kept: the examples
    subjects: int = 0  # distinct subjects among them

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def describe(self) -> str:
        dropped = [f"{n} {what}" for n, what in (
            (self.duplicates, "duplicate rows"), (self.absent_subjects, "of subjects absent from the data"),
            (self.unsplit_subjects, "of subjects in no split"),
            (self.no_history, "at or before the subject's first event")) if n]
        return (f"labels {self.source}: {self.rows} rows -> {self.examples} examples of {self.subjects} subjects"
                + (f" (dropped: {'; '.join(dropped)})" if dropped else ""))


def drop_duplicates(labels: pa.Table, where: str) -> tuple[pa.Table, int]:
    """Rows with a (subject_id, prediction_time) seen before removed (first kept, order kept); returns the
    table and how many were removed. Repeats that disagree on a label value are a DataError naming one."""
    subject = labels.column("subject_id").to_numpy()
    time = labels.column("prediction_time").cast(pa.int64()).to_numpy()
    order = np.lexsort((time, subject))  # stable: the first occurrence leads each run
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (subject[order][1:] == subject[order][:-1]) & (time[order][1:] == time[order][:-1])
    if not repeat.any():
        return labels, 0
    first = order[np.maximum.accumulate(np.where(repeat, 0, np.arange(len(order))))]  # each row's run leader
    values = [c for c in labels.column_names if c not in ("subject_id", "prediction_time")]
    for column in values:
        v = labels.column(column).to_pylist()
        clash = next((int(i) for i, f in zip(order[repeat], first[repeat], strict=True) if v[i] != v[f]), None)
        if clash is not None:
            raise DataError(f"{where}: subject {subject[clash]} has several rows at prediction time "
                            f"{labels.column('prediction_time')[clash]} with different {column} values; "
                            "keep one row per (subject_id, prediction_time)")
    keep = np.ones(len(order), dtype=bool)
    keep[order[repeat]] = False
    return labels.filter(pa.array(keep)), int(repeat.sum())
