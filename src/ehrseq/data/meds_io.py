"""Read and write MEDS datasets on local disk.

Layout (MEDS 0.4): `data/<n>.parquet` shards, `metadata/codes.parquet`, `metadata/subject_splits.parquet`,
`metadata/dataset.json`. Writes go to a hidden sibling folder that is renamed into place at the end, so an
interrupted write never leaves something that looks like a complete dataset. Reads validate against the
`meds` schemas and turn any problem into a `DataError` naming the file and column.
"""

import importlib.metadata
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from ehrseq.errors import DataError


def _etl_version() -> str:
    try:
        return importlib.metadata.version("ehrseq")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def write_meds_dataset(
    data: pa.Table, splits: pa.Table, dest: Path, name: str, shard_size: int = 10_000
) -> None:
    """Write `data` (MEDS data schema) and `splits` as a MEDS dataset at `dest`, replacing any old one.

    Shards hold `shard_size` whole subjects each, so a subject's history is never split across files.
    """
    dest = Path(dest)
    data = meds.DataSchema.align(data)
    # Sort by subject, then static (null-time) rows first, then time; stable, so same-time rows keep order.
    keys = pa.table(
        [data.column("subject_id"), pc.is_valid(data.column("time")), data.column("time")], ["s", "v", "t"]
    )
    order = pc.sort_indices(keys, [("s", "ascending"), ("v", "ascending"), ("t", "ascending")])
    data = data.take(order)
    subjects = data.column("subject_id").to_numpy()
    first_rows = np.flatnonzero(np.diff(subjects, prepend=subjects[:1] - 1))  # each subject's first row
    bounds = [*first_rows[shard_size::shard_size].tolist(), len(subjects)]  # where each shard ends

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    try:
        (tmp / meds.data_subdirectory).mkdir(parents=True)
        (tmp / "metadata").mkdir()
        start = 0
        for i, stop in enumerate(bounds):
            pq.write_table(data.slice(start, stop - start), tmp / meds.data_subdirectory / f"{i}.parquet")
            start = stop
        codes = pc.unique(data.column("code")).sort()
        code_meta = pa.table(
            {
                "code": codes,
                "description": pa.nulls(len(codes), pa.string()),
                "parent_codes": pa.nulls(len(codes), pa.list_(pa.string())),
            }
        )
        pq.write_table(meds.CodeMetadataSchema.align(code_meta), tmp / meds.code_metadata_filepath)
        pq.write_table(meds.SubjectSplitSchema.align(splits), tmp / meds.subject_splits_filepath)
        metadata = {
            "dataset_name": name,
            "etl_name": "ehrseq",
            "etl_version": _etl_version(),
            "meds_version": meds.__version__,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        (tmp / meds.dataset_metadata_filepath).write_text(json.dumps(metadata, indent=2) + "\n")
        _swap_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename `tmp` to `dest`; an existing `dest` is moved aside first and deleted only afterwards."""
    if not dest.exists():
        tmp.rename(dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class MedsDataset:
    """The events of a MEDS dataset and each subject's split (train / tuning / held_out)."""

    data: pa.Table
    splits: dict[int, str]


def _read_table(path: Path, schema: type) -> pa.Table:
    """Read one parquet file and align it to a meds schema, naming the file in any error."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return schema.align(pq.read_table(path))
    except (SchemaValidationError, TableValidationError) as e:
        raise DataError(f"{path}: {e}") from e
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from e


def read_meds_dataset(path: Path) -> MedsDataset:
    """Load all data shards and the subject splits of the MEDS dataset at `path`."""
    path = Path(path)
    files = sorted((path / meds.data_subdirectory).glob("**/*.parquet"))
    if not files:
        raise DataError(f"{path / meds.data_subdirectory}: no parquet files (is {path} a MEDS dataset?)")
    tables = [_read_table(f, meds.DataSchema) for f in files]
    data = pa.concat_tables(tables, promote_options="default")
    splits = _read_table(path / meds.subject_splits_filepath, meds.SubjectSplitSchema)
    subject_ids = splits.column("subject_id").to_pylist()
    return MedsDataset(
        data=data, splits=dict(zip(subject_ids, splits.column("split").to_pylist(), strict=True))
    )
