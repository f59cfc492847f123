"""The storage interface every backend implements (runner/storage/local.py, runner/storage/s3.py), and its errors.

Keys are '/'-separated paths relative to the storage root. Writes are atomic: a reader sees the
old object or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StorageUnavailable(ConnectionError):
    """A transient failure talking to storage: retry later; never a reason to stop training."""


class WriteConflict(Exception):
    """A conditional write lost: the object exists (create) or changed since it was read (replace_if)."""


class Storage(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def check(self) -> None: ...  # InputError if unusable (bucket missing, no access)
    def get_bytes(self, key: str) -> bytes: ...  # FileNotFoundError if absent
    def get_file(self, key: str, dest: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...  # keys under prefix, recursive, sorted
    def delete(self, key: str) -> None: ...
    # conditional writes (the run's lease): a version tag per object, compare-and-swap on it
    def get_versioned(self, key: str) -> tuple[bytes, str]: ...  # (data, tag); FileNotFoundError if absent
    def version(self, key: str) -> str: ...  # the tag alone, without reading the object
    # `data`: the bytes, or a file to upload (any size; fenced the same way)
    def create(self, key: str, data: bytes | Path) -> str: ...  # WriteConflict if the key exists; returns the tag
    def replace_if(self, key: str, data: bytes | Path, tag: str) -> str: ...  # WriteConflict unless tag is current
