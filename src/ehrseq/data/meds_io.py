"""Read and write MEDS datasets on local disk.

Layout (MEDS 0.4): `data/<n>.parquet` shards, `metadata/codes.parquet`, `metadata/subject_splits.parquet`,
`metadata/dataset.json`. Writes go to a hidden sibling folder that is renamed into place at the end, so an
interrupted write never leaves something that looks like a complete dataset. Reads validate against the
`meds` schemas and turn any problem into a `DataError` naming the file and column.
"""

import hashlib
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

from ehrseq.errors import DataError, one_line, regular_file


def _etl_version() -> str:
    try:
        return importlib.metadata.version("ehrseq")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def sort_events(data: pa.Table) -> pa.Table:
    """Rows by subject, then static (null-time) rows first, then time; stable, so same-time rows keep order."""
    keys = pa.table(
        [data.column("subject_id"), pc.is_valid(data.column("time")), data.column("time")], ["s", "v", "t"]
    )
    return data.take(pc.sort_indices(keys, [("s", "ascending"), ("v", "ascending"), ("t", "ascending")]))


def write_meds_dataset(
    data: pa.Table, splits: pa.Table, dest: Path, name: str, shard_size: int = 10_000,
    extra: dict[str, pa.Table] | None = None,
) -> None:
    """Write `data` (MEDS data schema) and `splits` as a MEDS dataset at `dest`, replacing any old one.

    Shards hold `shard_size` whole subjects each, so a subject's history is never split across files.
    `extra` maps paths inside the dataset (e.g. `labels/<task>.parquet`) to tables written with it.
    """
    data = sort_events(meds.DataSchema.align(data))
    subjects = data.column("subject_id").to_numpy()
    first_rows = np.flatnonzero(np.diff(subjects, prepend=subjects[:1] - 1))  # each subject's first row
    bounds = [*first_rows[shard_size::shard_size].tolist(), len(subjects)]  # where each shard ends
    with MedsWriter(dest, name) as writer:
        start = 0
        for stop in bounds:
            writer.write_shard(data.slice(start, stop - start))
            start = stop
        writer.finish(splits, extra)


class MedsWriter:
    """Writes a MEDS dataset one shard at a time, so a converter never holds the whole dataset in memory.

    Everything goes to a hidden sibling folder that `finish` renames into place; leaving the `with` block
    without `finish` (an error) deletes it, so an interrupted write never looks like a complete dataset.
    Each shard must hold whole subjects. The writer keeps the running totals a summary needs.
    """

    def __init__(self, dest: Path, name: str) -> None:
        self.dest, self.name = Path(dest), name
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{uuid.uuid4().hex}"
        (self.tmp / meds.data_subdirectory).mkdir(parents=True)
        (self.tmp / "metadata").mkdir()
        self.num_shards = 0
        self.num_events = 0
        self.codes: set[str] = set()
        self.subject_ids: list[np.ndarray] = []
        self.time_range: tuple[int, int] | None = None  # microseconds since the epoch

    def __enter__(self) -> "MedsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_shard(self, data: pa.Table) -> None:
        """Align to the MEDS data schema, sort, and write as the next `data/<n>.parquet`."""
        data = sort_events(meds.DataSchema.align(data))
        pq.write_table(data, self.tmp / meds.data_subdirectory / f"{self.num_shards}.parquet")
        self.num_shards += 1
        self.num_events += data.num_rows
        self.codes.update(pc.unique(data.column("code")).to_pylist())
        self.subject_ids.append(pc.unique(data.column("subject_id")).to_numpy())
        lo, hi = pc.min_max(data.column("time").cast(pa.int64())).values()
        if lo.is_valid:
            old = self.time_range or (lo.as_py(), hi.as_py())
            self.time_range = (min(old[0], lo.as_py()), max(old[1], hi.as_py()))

    def all_subject_ids(self) -> np.ndarray:
        """Sorted distinct subject ids written so far (to assign splits once all data is in)."""
        return np.unique(np.concatenate(self.subject_ids)) if self.subject_ids else np.zeros(0, np.int64)

    def finish(self, splits: pa.Table, extra: dict[str, pa.Table] | None = None) -> None:
        """Write codes, splits, dataset.json and `extra` (relative path -> table), then move into place.

        Extras (labels, id maps) land in the same atomic rename, so a dataset never lacks them."""
        codes = pa.array(sorted(self.codes), pa.string())
        code_meta = pa.table(
            {
                "code": codes,
                "description": pa.nulls(len(codes), pa.string()),
                "parent_codes": pa.nulls(len(codes), pa.list_(pa.string())),
            }
        )
        pq.write_table(meds.CodeMetadataSchema.align(code_meta), self.tmp / meds.code_metadata_filepath)
        pq.write_table(meds.SubjectSplitSchema.align(splits), self.tmp / meds.subject_splits_filepath)
        for relative, table in (extra or {}).items():
            path = self.tmp / relative
            if not path.resolve().is_relative_to(self.tmp.resolve()):
                raise ValueError(f"extra file {relative!r} must be inside the dataset")
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        metadata = {
            "dataset_name": self.name,
            "etl_name": "ehrseq",
            "etl_version": _etl_version(),
            "meds_version": meds.__version__,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        (self.tmp / meds.dataset_metadata_filepath).write_text(json.dumps(metadata, indent=2) + "\n")
        swap_into_place(self.tmp, self.dest)


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 16 MB blocks: identities of data and label files, checksums of caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def swap_into_place(tmp: Path, dest: Path) -> None:
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
    """The events of a MEDS dataset and each subject's split (train / tuning / held_out).

    `path` is the folder it was read from, where `labels/` and `oracle/` live (see ehrseq.data.labels).
    """

    data: pa.Table
    splits: dict[int, str]
    path: Path | None = None


def read_table(path: Path, schema: type) -> pa.Table:
    """Read one parquet file and align it to a meds schema, naming the file in any error."""
    regular_file(path)
    try:
        return schema.align(pq.read_table(path))
    except (SchemaValidationError, TableValidationError) as e:
        raise DataError(f"{path}: {e}") from e
    except (pa.ArrowException, OSError) as e:  # a damaged footer raises a plain OSError
        raise DataError(f"{path}: not a readable parquet file ({one_line(e)})") from e


def read_meds_dataset(path: Path) -> MedsDataset:
    """Load all data shards and the subject splits of the MEDS dataset at `path`."""
    path = Path(path)
    files = sorted((path / meds.data_subdirectory).glob("**/*.parquet"))
    if not files:
        raise DataError(f"{path / meds.data_subdirectory}: no parquet files (is {path} a MEDS dataset?)")
    tables = [read_table(f, meds.DataSchema) for f in files]
    data = pa.concat_tables(tables, promote_options="default")
    if data.num_rows and data.column("time").null_count == data.num_rows:
        raise DataError(f"{path / meds.data_subdirectory}: column 'time' is null in all {data.num_rows:,} rows of "
                        f"{len(files)} file(s); events need a time (a null time marks a static code)")
    splits = read_table(path / meds.subject_splits_filepath, meds.SubjectSplitSchema)
    subject_ids = splits.column("subject_id").to_pylist()
    if len(set(subject_ids)) < len(subject_ids):
        raise DataError(f"{path / meds.subject_splits_filepath}: column 'subject_id' lists "
                        f"{len(subject_ids) - len(set(subject_ids)):,} subjects more than once; each has one split")
    return MedsDataset(
        data=data, splits=dict(zip(subject_ids, splits.column("split").to_pylist(), strict=True)), path=path
    )
