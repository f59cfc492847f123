"""The one way a run writes to its folder once it holds the lease: each write first proves the lease is still its own.

A writer paused past its stale window (SIGSTOP, a frozen VM, a long GC) and then resumed must not touch the run
its successor now holds: no status, no metrics, no checkpoint files, no bundle, no deletes. Every put and delete
here first reads lease.json (`Lease.check`: LeaseLost, exit 2, once it was taken over). status.json, which both
writers rewrite, is also replaced conditionally (If-Match on S3, a locked compare on file://) on the version this
writer last wrote, so a writer paused between its check and its write still cannot put its state over its
successor's. For other names only that narrow window remains; a checkpoint manifest slipping through it is
ignored by readers (`lease.zombie_manifest`), and the successor prunes any uncommitted files.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.run_folder import STATUS, RunFolder


class FencedRunFolder(RunFolder):
    def __init__(self, run: RunFolder, lease: Lease) -> None:
        super().__init__(run.storage, run.run_id)
        self.lease = lease
        self._status_tag: str | None = None  # the version of status.json this writer last wrote
        self._status_lock = threading.Lock()

    def put_bytes(self, name: str, data: bytes) -> None:
        self.lease.check()
        if name == STATUS:
            self._put_status(data)
        else:
            super().put_bytes(name, data)

    def put_file(self, name: str, path: Path) -> None:
        self.lease.check()
        super().put_file(name, path)

    def delete(self, key: str) -> None:
        self.lease.check()
        super().delete(key)

    def _put_status(self, data: bytes) -> None:
        """Compare-and-swap on the version last written (or found at the first write); a conflict means another
        writer wrote it: LeaseLost if the lease moved, else (a hand edit) it is written over."""
        key = self.key(STATUS)
        with self._status_lock:
            try:
                if self._status_tag is None:
                    try:
                        self._status_tag = self.storage.get_versioned(key)[1]
                    except FileNotFoundError:
                        self._status_tag = self.storage.create(key, data)
                        return
                self._status_tag = self.storage.replace_if(key, data, self._status_tag)
            except WriteConflict:
                self._status_tag = None
                self.lease.check()
                self.storage.put_bytes(key, data)
