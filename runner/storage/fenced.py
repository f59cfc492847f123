"""The one way a run writes to its folder once it holds the lease: each write first proves the lease is still its own.

A writer paused past its stale window (SIGSTOP, a frozen VM, a long GC) and then resumed must not touch the run
its successor now holds: no status, no metrics, no checkpoint files, no bundle, no deletes. Every put and delete
here first reads lease.json (`Lease.check`: LeaseLost, exit 2, once it was taken over). A writer paused between
that check and its write is fenced by the store itself: each object, whatever its size, is written
conditionally (If-None-Match / If-Match on S3, on the completion of a multipart upload for large files; a hard
link / a locked compare on file://) on the version this writer last wrote or first found, so an object its
successor has written since is never replaced. A checkpoint manifest slipping through is ignored by readers
(`lease.zombie_manifest`), and uncommitted files are pruned by the next writer.
"""

from __future__ import annotations

from pathlib import Path

from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.run_folder import RunFolder

ABSENT = ""  # as a version tag: the object does not exist (create it only if it still does not)


class FencedRunFolder(RunFolder):
    def __init__(self, run: RunFolder, lease: Lease) -> None:
        super().__init__(run.storage, run.run_id)
        self.lease = lease
        self._tags: dict[str, str] = {}  # key -> the version this writer last wrote (each key has one writing thread)

    def put_bytes(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def put_file(self, name: str, path: Path) -> None:
        self._put(name, path)

    def _put(self, name: str, data: bytes | Path) -> None:
        """Version read first, lease checked, then the conditional write: a successor's write after the read or
        the check makes it fail, whenever this writer is paused."""
        key = self.key(name)
        tag = self._tags.get(key)
        if tag is None:  # never written by this writer: the object as found (or its absence) is what it replaces
            try:
                tag = self.storage.version(key)
            except FileNotFoundError:
                tag = ABSENT
        self.lease.check()
        try:
            self._tags[key] = self.storage.create(key, data) if tag == ABSENT else \
                self.storage.replace_if(key, data, tag)
        except WriteConflict:  # written by someone else meanwhile: the successor (LeaseLost), else a hand edit
            self._tags.pop(key, None)
            self.lease.check()
            if isinstance(data, bytes):
                self.storage.put_bytes(key, data)
            else:
                self.storage.put_file(key, data)

    def delete(self, key: str) -> None:
        self.lease.check()
        self._tags.pop(key, None)
        super().delete(key)
