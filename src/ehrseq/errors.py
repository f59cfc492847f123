"""Exceptions that mean "the user gave us something wrong", as opposed to a bug."""

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class InputError(Exception):
    """Bad input from the user: the CLI prints the message and exits 2, no traceback."""


class DataError(InputError):
    """A dataset on disk is missing a file or column, or has a wrong type; the message names which."""


def one_line(text: str, limit: int = 300) -> str:
    """Text quoted from a file or a library error, safe for a one-line message: control characters escaped
    (a damaged file's bytes can hold newlines), clipped to `limit` characters."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else f"{text[:limit]}..."


class NoSpace(InputError):
    """A full disk (or quota) where a file was being written: one line naming where and what to do, exit 2."""


def no_space(error: BaseException, where: object) -> NoSpace | None:
    """A NoSpace naming the file (else `where`) if `error`, or an exception it came from, is ENOSPC or EDQUOT;
    None otherwise. A full disk surfaces deep inside numpy, torch or a copy, far from any path the user chose."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, NoSpace):
            return current
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"no space left on the device of {current.filename or where}: free space there (or "
                           "point runtime.work_dir, checkpoint.local_dir or storage.uri at a larger disk) and run "
                           "the same command again")
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def naming_full_disk(where: object) -> Iterator[None]:
    """Turns a full disk inside the block into NoSpace naming the file or `where`; other errors pass."""
    try:
        yield
    except OSError as e:
        full = no_space(e, where)
        if full is None:
            raise
        raise full from None


def regular_file(path: Path) -> Path:
    """`path`, if it is a regular file (or a link to one); else DataError naming it and what is there instead.

    Reading a folder named like a shard raises IsADirectoryError from deep inside a read (or pyarrow reads it
    as a dataset of its own), and a FIFO blocks the read forever."""
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError(f"{path}: a folder where a parquet file was expected; move or rename it")
    if path.exists():
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device); replace it with the parquet file")
    raise DataError(f"{path}: file not found")
