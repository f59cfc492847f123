"""The one way a run writes to its folder once it holds the lease: each write first proves the lease is still its own.

A writer paused past its stale window (SIGSTOP, a frozen VM, a long GC) and then resumed must not touch the run
its successor now holds: no status, no metrics, no checkpoint files, no bundle, no deletes. Every put and delete
here first reads lease.json (`Lease.check`: LeaseLost, exit 2, once it was taken over). A writer paused between
that check and its write is fenced by the store itself: each object up to CONDITIONAL_MAX_BYTES is written
conditionally (If-None-Match / If-Match on S3, a hard link / a locked compare on file://) on the version this
writer last wrote or first found, so an object its successor has written since is never replaced. Larger files
keep only the check; a checkpoint manifest slipping through is ignored by readers (`lease.zombie_manifest`), and
uncommitted files are pruned by the next writer.
"""

from __future__ import annotations

from pathlib import Path

from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.run_folder import RunFolder

ABSENT = ""  # as a version tag: the object does not exist (create it only if it still does not)
CONDITIONAL_MAX_BYTES = 16 << 20  # status, metrics, manifests, the bundle's files, a small model's checkpoint


class FencedRunFolder(RunFolder):
    def __init__(self, run: RunFolder, lease: Lease) -> None:
        super().__init__(run.storage, run.run_id)
        self.lease = lease
        self._tags: dict[str, str] = {}  # key -> the version this writer last wrote (each key has one writing thread)

    def put_bytes(self, name: str, data: bytes) -> None:
        """Version read first, lease checked, then the conditional write: a successor's write after the read or
        the check makes it fail, whenever this writer is paused."""
        key = self.key(name)
        tag = self._tags.get(key)
        if tag is None:  # never written by this writer: the object as found (or its absence) is what it replaces
            try:
                tag = self.storage.get_versioned(key)[1]
            except FileNotFoundError:
                tag = ABSENT
        self.lease.check()
        try:
            self._tags[key] = self.storage.create(key, data) if tag == ABSENT else \
                self.storage.replace_if(key, data, tag)
        except WriteConflict:  # written by someone else meanwhile: the successor (LeaseLost), else a hand edit
            self._tags.pop(key, None)
            self.lease.check()
            self.storage.put_bytes(key, data)

    def put_file(self, name: str, path: Path) -> None:
        if path.stat().st_size <= CONDITIONAL_MAX_BYTES:
            self.put_bytes(name, path.read_bytes())
            return
        self.lease.check()
        super().put_file(name, path)

    def delete(self, key: str) -> None:
        self.lease.check()
        self._tags.pop(key, None)
        super().delete(key)
