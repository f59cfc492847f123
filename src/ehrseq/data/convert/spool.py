"""Collect converted events for subjects in any order; hand them back as whole-subject shards.

Source files are not grouped by patient (Synthea CSVs are one file per event kind), yet a MEDS shard
must hold whole subjects. Subject ids are dense (1..N), so the shard of a row is `(id - 1) // per_shard`.
Rows wait in memory per shard and are spilled to parquet parts once `max_rows` are buffered, so memory
stays bounded however large the input; `shards()` then reassembles one shard at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("time", pa.timestamp("us")),
        ("code", pa.string()),
        ("numeric_value", pa.float32()),
        ("text_value", pa.large_string()),
    ]
)


class ShardSpool:
    def __init__(self, folder: Path, subjects_per_shard: int, max_rows: int = 2_000_000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.per_shard = subjects_per_shard
        self.max_rows = max_rows
        self.buffered: dict[int, list[pa.Table]] = defaultdict(list)
        self.num_buffered = 0
        self.parts: dict[int, int] = defaultdict(int)  # shard -> parts spilled so far

    def add(self, events: pa.Table) -> None:
        """Add rows (EVENT_SCHEMA columns) of any subjects."""
        if events.num_rows == 0:
            return
        events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        shard = (events.column("subject_id").to_numpy() - 1) // self.per_shard
        if shard[0] == shard[-1] and (shard == shard[0]).all():
            self.buffered[int(shard[0])].append(events)
        else:
            for s in np.unique(shard).tolist():
                self.buffered[s].append(events.filter(pa.array(shard == s)))
        self.num_buffered += events.num_rows
        if self.num_buffered >= self.max_rows:
            self._spill()

    def _spill(self) -> None:
        for s, tables in self.buffered.items():
            pq.write_table(pa.concat_tables(tables), self.folder / f"{s}-{self.parts[s]}.parquet")
            self.parts[s] += 1
        self.buffered.clear()
        self.num_buffered = 0

    def shards(self) -> Iterator[pa.Table]:
        """Each shard's rows (unsorted), in shard order; spilled parts are deleted as they are read."""
        for s in sorted(set(self.buffered) | set(self.parts)):
            paths = [self.folder / f"{s}-{i}.parquet" for i in range(self.parts.get(s, 0))]
            tables = [pq.read_table(p) for p in paths] + self.buffered.pop(s, [])
            for p in paths:
                p.unlink()
            yield pa.concat_tables(tables)
