"""Names that come from storage are untrusted: whoever can write to the bucket chooses them.

A manifest's file names and a run's keys become local paths on every pod that resumes or pulls, so each
must be a plain relative path that stays inside its folder; anything else is refused before a byte is written.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ehrseq.errors import InputError

MAX_PART_BYTES = 255  # a file name's limit on ext4, xfs, apfs, ntfs


class UnsafeName(InputError):
    """A stored name that is absolute, climbs out ('..'), or is otherwise not a plain relative path."""


def check_name(name: object, what: str = "stored key") -> str:
    """Returns `name` if it is a plain relative path ('a/b.pt'); UnsafeName naming it otherwise."""
    parts = name.split("/") if isinstance(name, str) else []
    plain = (parts and all(p not in ("", ".", "..") for p in parts)
             and not any(c in name for c in ("\\", "\0")) and not PurePosixPath(name).is_absolute())
    if not plain:
        raise UnsafeName(f"refusing {what} {name!r}: not a plain relative path (absolute, '..', empty part or "
                         "backslash); the storage may have been tampered with")
    if any(len(p.encode()) > MAX_PART_BYTES for p in parts):  # no file system takes it: ENAMETOOLONG later
        raise UnsafeName(f"refusing {what} {name[:80]!r}...: a part longer than {MAX_PART_BYTES} bytes; the "
                         "storage may have been tampered with")
    return name


def inside(folder: Path, name: object, what: str = "stored key") -> Path:
    """folder/name, proven to stay inside `folder` even through symlinks already there."""
    target = (folder / check_name(name, what)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UnsafeName(f"refusing {what} {name!r}: it would be written outside {folder}")
    return target
