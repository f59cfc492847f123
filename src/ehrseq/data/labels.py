"""Task labels beside a MEDS dataset: `<dataset>/labels/<task>.parquet` in the MEDS label layout.

Labels (`subject_id`, `prediction_time`, `boolean_value`, ...; survival tasks use `boolean_value` for the
event and `float_value` for days from prediction time to event or censoring) are validated against the
`meds` LabelSchema on read, and problems name the file and column. Synthetic cohorts also know each
patient's true risk: `<dataset>/oracle/<task>.parquet` (`subject_id`, `prediction_time`, `true_risk`,
`true_risk_order_blind`, row-aligned with the labels) gives the oracle ceiling a model can be compared with,
and the order-blind ceiling (the same risk without the planted order term). It is kept out of
`labels/` so nothing that reads labels can mistake it for one.
"""

from __future__ import annotations

from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from ehrseq.errors import DataError

LABELS_DIR = "labels"
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
