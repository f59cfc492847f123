"""A storage URI to its backend: file:// or a plain path (runner/storage/local.py), s3:// (runner/storage/s3.py).

URIs and endpoint URLs never carry credentials; a run URI is STORAGE_URI/RUN_ID.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from ehrseq.errors import InputError
from ehrseq_runner.storage.base import Storage
from ehrseq_runner.storage.local import LocalStorage


def refuse_credentials(url: str | None, field: str) -> None:
    """A URL with user:password@ would carry a secret into spec.yaml, logs and `validate` output: refused,
    without echoing the URL."""
    if url and "://" in url and "@" in urlsplit(url).netloc:
        raise InputError(f"{field}: the URL holds credentials (user:password@host); put credentials in AWS_* "
                         "variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never in a URL")


_USERINFO = re.compile(r"(?<![^\s'\"(\[{,=:/])[^\s'\"/@(\[{,=]*:[^\s'\"/@]*@|(?<=://)[^\s'\"/@]+@")


def redact_credentials(text: str) -> str:
    """`text` with the user:password@ of any URL (or user:password@host) replaced by ***@: error messages echo
    what was given, and a secret typed in the wrong place must not reach a terminal or a log."""
    return _USERINFO.sub("***@", text)


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """`file://path` (relative to the working directory), a plain path, or `s3://bucket/prefix`."""
    refuse_credentials(uri, "storage URI")
    refuse_credentials(endpoint_url, "endpoint URL")
    if uri.startswith("file://"):
        if not uri[len("file://"):].strip():  # Path("") is the working directory: runs would land anywhere
            raise InputError(f"storage URI {uri!r} names no folder; use e.g. file://./runs")
        return LocalStorage(Path(uri[len("file://"):]), uri)
    if uri.startswith("s3://"):
        from ehrseq_runner.storage.s3 import S3Storage  # boto3 loads only when needed

        return S3Storage(uri, endpoint_url)
    if "://" not in uri:
        return LocalStorage(Path(uri), uri)
    scheme = uri.split("://", 1)[0]
    raise InputError(f"storage.uri {uri!r}: unsupported scheme {scheme!r}; use file://PATH or s3://BUCKET/PREFIX")


def split_run_uri(run_uri: str) -> tuple[str, str]:
    """'file://./runs/my-run' -> ('file://./runs', 'my-run')."""
    base, sep, run_id = run_uri.rstrip("/").rpartition("/")
    if not sep or run_id in ("", ".", "..") or base.endswith(":/"):
        raise InputError(f"{run_uri!r} is not a run URI; expected STORAGE_URI/RUN_ID, e.g. file://./runs/my-run")
    return base, run_id
