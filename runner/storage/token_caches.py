"""Token caches kept in storage beside the runs, so a fresh pod downloads the tokens instead of re-encoding.

Layout: `<storage.uri>/_token_caches/tokens-<key>/` (or `examples-<key>/`, a supervised task's examples) holds
the cache's files (ehrseq.data.token_cache) with `manifest.json` uploaded last, so a cache counts as stored only
once everything it lists is there. Only the fixed file names of the format are fetched, never a name read from
storage, and a download is verified against its manifest's checksums before it replaces anything.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from ehrseq.data.meds_io import swap_into_place
from ehrseq.data.token_cache import NotATokenCache, cache_files, read_manifest
from ehrseq_runner.storage.base import Storage
from ehrseq_runner.storage.sync import retry_transient

PREFIX = "_token_caches"
MANIFEST = "manifest.json"
BUDGET_S = 60.0  # of retries through a storage outage, per fetch or publish: then the tokens are built/kept here


def _plain_array(path: Path) -> bool:
    """A .npy whose header declares numbers, not Python objects (which np.load refuses deep inside a run): its
    writer chose the header, and matching checksums prove only that the manifest came with it."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            return not read_header(f)[2].hasobject
    except (OSError, ValueError):
        return False


class StoredTokenCaches:
    """The `CacheRemote` of ehrseq.data.token_cache over a run's storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def key(self, name: str, file: str) -> str:
        return f"{PREFIX}/{name}/{file}"

    def fetch(self, name: str, dest: Path) -> bool:
        deadline = time.monotonic() + BUDGET_S
        if not retry_transient(lambda: self.storage.exists(self.key(name, MANIFEST)), deadline):
            return False
        tmp = dest.parent / f".{dest.name}.download-{uuid.uuid4().hex}"
        try:
            for file in (*cache_files(name), MANIFEST):
                retry_transient(lambda file=file: self.storage.get_file(self.key(name, file), tmp / file), deadline)
            unlisted = set(cache_files(name)) - set(read_manifest(tmp)["files"])  # sizes and checksums
            if unlisted:
                raise NotATokenCache(f"{self.storage.uri}/{PREFIX}/{name}: its manifest does not list "
                                     f"{', '.join(sorted(unlisted))}")
            for file in cache_files(name):
                if file.endswith(".npy") and not _plain_array(tmp / file):
                    raise NotATokenCache(f"{self.storage.uri}/{PREFIX}/{name}/{file}: not an array of plain numbers")
            swap_into_place(tmp, dest)
        except FileNotFoundError as e:
            raise NotATokenCache(f"{self.storage.uri}/{PREFIX}/{name}: incomplete ({e})") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def publish(self, name: str, folder: Path) -> None:
        deadline = time.monotonic() + BUDGET_S
        for file in (*cache_files(name), MANIFEST):  # the manifest last: the commit
            retry_transient(lambda file=file: self.storage.put_file(self.key(name, file), folder / file), deadline)
