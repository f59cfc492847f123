"""A folder on this machine as storage (file://, the embedded default); no key reaches outside the root.

Writes are atomic and fsynced: a reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ehrseq.errors import InputError, naming_full_disk
from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.safe_paths import UnsafeName, check_name


class LocalStorage:
    """A folder on this machine: the embedded default (`file://./runs`)."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = root
        self.uri = uri or f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / check_name(key.rstrip("/"), "storage key")  # never a file outside the root

    def _stored(self, key: str) -> Path:
        """The key's path for reading or writing: a symlink below the root could point at any file or folder on
        this machine (whoever writes the folder chooses), so one anywhere on the way is refused (UnsafeName)."""
        path = self._path(key)
        for part in (path, *path.parents):
            if part == self.root:
                return path
            if part.is_symlink():
                raise UnsafeName(f"refusing storage key {key!r}: {part} is a symlink (a run folder holds plain "
                                 "files and folders only); replace it with a plain folder or choose another "
                                 "storage.uri")
        return path

    def _file(self, key: str) -> Path:
        """`_stored`, and never a folder where a file is expected (a crafted or half-deleted run): InputError
        naming it, instead of an IsADirectoryError from deep inside a read or replace."""
        path = self._stored(key)
        if path.is_dir():
            raise InputError(f"{path} is a folder where storage keeps the file {key!r}; remove or rename it")
        return path

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"storage.uri {self.uri!r}: {self.root} is not a folder")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._replace(key, path)

    def _replace(self, key: str, data: bytes | Path, tag: bool = False) -> str | None:
        """Writes `data` over the key atomically; with `tag`, returns the version tag of what it wrote."""
        dest = self._file(key)
        tmp = _durable_temp(dest, data)
        try:
            written = _tag(tmp) if tag else None
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def get_bytes(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def get_file(self, key: str, dest: Path) -> None:
        source = self._file(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Plain files only: symlinks (to files or folders) are skipped, as `get_*` refuses them."""
        try:
            base = self._stored(prefix) if prefix else self.root
        except UnsafeName:
            return []
        if not base.is_dir():
            return []
        return sorted((Path(folder) / name).relative_to(self.root).as_posix()
                      for folder, _, names in os.walk(base)  # a symlinked folder is listed, never entered
                      for name in names if not name.startswith(".") and not (Path(folder) / name).is_symlink())

    def delete(self, key: str) -> None:
        """Deletes the file and the folders it leaves empty (an object store has no folders to leave behind),
        up to the key's top-level folder (the run's), which a concurrent writer may be filling."""
        path = self._file(key)
        path.unlink(missing_ok=True)
        for folder in list(path.parents)[:max(0, len(PurePosixPath(key).parts) - 2)]:
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone already
                return

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, _tag(data)

    def version(self, key: str) -> str:
        return _tag(self._file(key))

    def create(self, key: str, data: bytes | Path) -> str:
        """Written to a temporary file, then hard-linked into place: link fails if the name exists (O_EXCL's
        guarantee), and a reader never sees a half-written file."""
        dest = self._file(key)
        tmp = _durable_temp(dest, data)
        try:
            tag = _tag(tmp)
            os.link(tmp, dest)
        except FileExistsError:
            raise WriteConflict(key) from None
        finally:
            tmp.unlink(missing_ok=True)
        return tag

    def replace_if(self, key: str, data: bytes | Path, tag: str) -> str:
        """Read, compare and atomic replace under an exclusive lock on a hidden lock file beside the object."""
        dest = self._file(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.parent / f".{dest.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.version(key)
            except FileNotFoundError:
                raise WriteConflict(key) from None
            if current != tag:
                raise WriteConflict(key)
            return self._replace(key, data, tag=True)


def _durable_temp(dest: Path, data: bytes | Path) -> Path:
    """`data` (or a copy of the file at that path) in a new, fsynced temporary file beside `dest` (created with
    its folders), to be renamed or linked into place: a reader never sees a half-written file."""
    with naming_full_disk(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            if isinstance(data, bytes):
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.close(fd)
                shutil.copyfile(data, tmp)  # the kernel's copy (sendfile), not a loop through Python
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return Path(tmp)


def _tag(data: bytes | Path) -> str:
    """An object's version tag: the SHA-256 of its bytes (of the file's, for a path), so equal contents compare
    equal and any change is seen, whatever the clock or inode numbers did."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    with data.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
