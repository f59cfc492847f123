"""Convert Synthea output (FHIR R4 bundles or CSV) into a MEDS dataset.

    summary = convert("fhir", "synthea/output/fhir", "data/meds", seed=0)
    print("\\n".join(summary.lines()))

A reader turns the source into event tables with dense subject ids; those are spooled into whole-subject
shards, written through `MedsWriter`, and given seeded patient-level splits. The MEDS subject_id -> source
patient id map is kept in `metadata/subject_sources.parquet`.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import meds
import pyarrow as pa

from ehrseq.data.convert.fhir import FhirReader
from ehrseq.data.convert.report import ConversionSummary, Problems
from ehrseq.data.convert.spool import ShardSpool
from ehrseq.data.convert.synthea_csv import SyntheaCsvReader
from ehrseq.data.meds_io import MedsWriter
from ehrseq.data.synthetic import assign_splits
from ehrseq.errors import DataError, InputError

READERS = {"fhir": FhirReader, "synthea-csv": SyntheaCsvReader}
SOURCES = tuple(READERS)

__all__ = ["SOURCES", "ConversionSummary", "convert", "source_fingerprint"]


def _check_paths(kind: str, src: Path, dest: Path) -> None:
    if kind not in READERS:
        raise InputError(f"unknown source {kind!r}; choose one of {', '.join(SOURCES)}")
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    # Writing replaces DEST: never replace a folder that is not a MEDS dataset already.
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and \
            not (dest / meds.dataset_metadata_filepath).is_file():
        raise InputError(f"{dest}: exists and is not a MEDS dataset; refusing to overwrite it (choose a new DEST)")
    if dest.resolve().is_relative_to(src.resolve()):
        raise InputError(f"{dest}: DEST must not be inside SRC ({src})")


def convert(
    kind: str,
    src: Path | str,
    dest: Path | str,
    *,
    seed: int = 0,
    skip_bad: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    subjects_per_shard: int = 10_000,
) -> ConversionSummary:
    """Convert `src` ("fhir": a folder of Bundle JSON files; "synthea-csv": a CSV export folder) into a MEDS
    dataset at `dest`. Malformed input raises DataError naming file and entry, or is skipped and counted
    with `skip_bad`. `on_progress(done, total)` counts files (fhir) or bytes (csv)."""
    src, dest = Path(src), Path(dest)
    _check_paths(kind, src, dest)
    started = time.perf_counter()
    problems = Problems(skip_bad)
    reader = READERS[kind](src, problems)
    if not reader.files:
        raise DataError(f"{src}: no {'*.json' if kind == 'fhir' else '*.csv'} files found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with MedsWriter(dest, name=src.resolve().name) as writer, \
            tempfile.TemporaryDirectory(prefix=f".{dest.name}.spool-", dir=dest.parent) as spool_dir:
        spool = ShardSpool(Path(spool_dir), subjects_per_shard)
        for events in reader.events(on_progress):
            spool.add(events)
        for shard in spool.shards():
            writer.write_shard(shard)
        ids = writer.all_subject_ids()
        if len(ids) == 0:
            raise DataError(f"{src}: no patients found")
        sources = pa.table({"subject_id": pa.array(range(1, len(reader.source_ids) + 1), pa.int64()),
                            "source_id": pa.array(reader.source_ids, pa.string())})
        writer.finish(assign_splits(ids, seed), extra={"metadata/subject_sources.parquet": sources})
    first, last = writer.time_range or (None, None)
    return ConversionSummary(
        source=kind, dest=str(dest), files=len(reader.files), subjects=len(ids), events=writer.num_events,
        codes=len(writer.codes),
        first_time=None if first is None else _from_us(first),
        last_time=None if last is None else _from_us(last),
        skipped_files=problems.files, skipped_entries=problems.entries,
        skipped_examples=problems.examples, seconds=time.perf_counter() - started,
    )


def _from_us(us: int) -> datetime:
    return pa.scalar(us, pa.timestamp("us")).as_py()


def source_fingerprint(src: Path | str) -> str:
    """A short hash of a source folder's files (names, sizes, modification times): a changed source gets a
    new cache entry, an unchanged one reuses its conversion."""
    src = Path(src).resolve()
    h = hashlib.sha256(str(src).encode())
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]
