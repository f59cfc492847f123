"""metrics.jsonl: appended locally on every record, sent to storage by the Syncer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ehrseq.training.trainer import Callback
from ehrseq_runner.storage.sync import Syncer


class MetricsLog(Callback):
    """On resume it starts from the checkpoint's copy, so records logged after that checkpoint
    (and lost with the pod) are replaced by the identical ones the resumed run logs again.
    """

    def __init__(self, path: Path, syncer: Syncer, initial: bytes = b"", sync_every_s: float = 10.0) -> None:
        self.path = path
        self.syncer = syncer
        self.sync_every_s = sync_every_s
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(initial)
        self.records: list[dict[str, Any]] = [json.loads(line) for line in initial.decode().splitlines()]
        self._last_sync = time.monotonic()
        self._file = path.open("a")
        self.sync()

    def on_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def snapshot(self) -> bytes:
        self._file.flush()
        return self.path.read_bytes()

    def sync(self) -> None:
        self.syncer.put_bytes("metrics.jsonl", self.snapshot())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._file.close()
