"""One writer per run: `<run>/lease.json`, taken atomically, renewed by a heartbeat, fenced.

A relaunched pod while the old one drains, or a job submitted twice, must not interleave checkpoints and
status. `ehrseq run` takes the lease before it writes anything: a create that fails if the object exists
(S3 `If-None-Match: *`; file://: a hard link, which fails on an existing name). A heartbeat thread renews it
with a compare-and-swap on the version read (S3 `If-Match: ETAG`; file://: a locked compare and atomic
replace). Another writer refuses a fresh lease (exit 2, naming the holder) and takes over a stale one
(released; heartbeat older than STALE_RENEWALS renew intervals; or its process is gone from this host), with
the fencing number + 1. Every checkpoint manifest carries its writer's fencing number and is committed only
after a read confirms the lease is still its own; readers ignore a manifest committed under fencing number f
after f + 1 was taken from it (`zombie_manifest`), the window a paused writer could still slip through. That
compares two hosts' clocks: a stale takeover comes at least STALE_RENEWALS renewals (2 min) after the old
writer's last heartbeat, so skew below that is harmless; a released lease is never judged by it.

Stores that enforce conditional writes: AWS S3 (If-None-Match since Aug 2024, If-Match since Nov 2024),
Cloudflare R2, MinIO, SeaweedFS (tested). A store that ignores the headers is detected when the lease is
created (a second create succeeds) and the lease is then advisory: a warning says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ehrseq.errors import InputError
from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.run_folder import RunFolder

LEASE = "lease.json"
RENEW_SECONDS = 30.0
MAX_RENEW_SECONDS = 3600.0  # checkpoint.lease_renew_seconds' bound
STALE_RENEWALS = 4  # a heartbeat older than this many renew intervals is a dead writer's
RELEASE_BUDGET_S = 2.0  # at preemption the release must not eat the grace budget
KEPT_TAKEOVERS = 100


class LeaseHeld(InputError):
    """Another live writer holds the run."""


class LeaseLost(InputError):
    """This writer's lease was taken over: it must stop without committing."""


def _pid_namespace() -> str | None:
    """Two containers on one host share a hostname (host networking) but not pids: compare both."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    pid_namespace: str | None
    heartbeat: float  # time.time() of the last renewal
    fencing: int
    renew_seconds: float
    # fencing number -> time.time() it was taken from a writer that had not released (one that may still commit);
    # a released writer commits nothing more, so its successor's clock never judges its manifests
    takeovers: dict[str, float] = field(default_factory=dict)
    released: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord | None:
        """None for a damaged record (taken over like a stale one)."""
        try:
            raw = json.loads(data)
            record = cls(**raw)
        except (ValueError, TypeError, RecursionError):
            return None
        numbers = (record.heartbeat, record.renew_seconds,
                   *(record.takeovers.values() if isinstance(record.takeovers, dict) else [None]))
        typed = type(record.fencing) is int and type(record.pid) is int and isinstance(record.host, str)
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)
        # a heartbeat of NaN, from the future, or renewals 1e308 s apart would never go stale
        sane = finite and 0 < record.renew_seconds <= MAX_RENEW_SECONDS and record.heartbeat < time.time() + 86400
        return record if typed and sane else None

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def stale(self, now: float) -> bool:
        return self.released or self.age(now) > STALE_RENEWALS * self.renew_seconds or self._process_gone()

    def _process_gone(self) -> bool:
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self, now: float) -> str:
        return f"host {self.host}, pid {self.pid}, heartbeat {self.age(now):.0f} s ago, fencing number {self.fencing}"


def zombie_manifest(manifest: dict[str, Any], takeovers: dict[str, float]) -> bool:
    """A checkpoint committed under fencing number f after f + 1 was taken: a writer that lost its lease.
    Manifests from before leases (no fencing number) are kept."""
    fencing, committed = manifest.get("fencing"), manifest.get("committed_at")
    taken = takeovers.get(str(fencing + 1)) if type(fencing) is int else None
    if taken is None:
        return False
    return not isinstance(committed, (int, float)) or committed > taken


def read_takeovers(run: RunFolder) -> dict[str, float]:
    try:
        record = LeaseRecord.parse(run.storage.get_bytes(run.key(LEASE)))
    except FileNotFoundError:
        return {}
    return record.takeovers if record else {}


class Lease:
    def __init__(self, run: RunFolder, renew_seconds: float = RENEW_SECONDS,
                 warn: Callable[[str], None] = lambda message: None) -> None:
        self.run = run
        self.key = run.key(LEASE)
        self.renew_seconds = renew_seconds
        self.warn = warn
        self.owner = uuid.uuid4().hex
        self.record: LeaseRecord | None = None
        self.lost: LeaseLost | None = None
        self._tag = ""
        self._lock = threading.Lock()  # one renewal or release at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fencing(self) -> int:
        return self.record.fencing if self.record else 0

    def acquire(self) -> None:
        """Takes the lease or raises LeaseHeld naming the live holder; starts the heartbeat."""
        storage, now = self.run.storage, time.time()
        fresh = LeaseRecord(self.owner, socket.gethostname(), os.getpid(), _pid_namespace(), now, 1,
                            self.renew_seconds)
        try:
            self._tag = storage.create(self.key, fresh.to_bytes())
            self.record = fresh
            self._probe_conditional_writes()
        except WriteConflict:
            data, tag = storage.get_versioned(self.key)
            current = LeaseRecord.parse(data)
            if current is not None and not current.stale(now):
                raise LeaseHeld(
                    f"{self.run.uri} is being written by another process ({current.describe(now)}); wait for it "
                    f"to finish, stop it, or take over once its heartbeat is older than "
                    f"{STALE_RENEWALS * current.renew_seconds:.0f} s (or delete {self.run.uri}/{LEASE} if you "
                    "know it is dead)") from None
            fencing = (current.fencing if current else 0) + 1
            takeovers = dict(list((current.takeovers if current else {}).items())[-KEPT_TAKEOVERS + 1:])
            if current is None or not current.released:
                takeovers[str(fencing)] = now
            record = replace(fresh, fencing=fencing, takeovers=takeovers)
            try:
                self._tag = storage.replace_if(self.key, record.to_bytes(), tag)
            except (WriteConflict, FileNotFoundError):
                raise LeaseHeld(f"{self.run.uri}: another writer took the lease at the same moment; "
                                "run again to see who holds it") from None
            self.record = record
            if current is None:
                self.warn(f"{self.run.uri}/{LEASE} was damaged; taken over with fencing number {fencing}")
            elif not current.released:
                self.warn(f"took over the stale lease of {self.run.uri} ({current.describe(now)}); "
                          f"fencing number {fencing}")
        self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _probe_conditional_writes(self) -> None:
        """A second create must fail; where it succeeds the store ignores If-None-Match."""
        try:
            self._tag = self.run.storage.create(self.key, self.record.to_bytes())
        except WriteConflict:
            return
        self.warn(f"{self.run.storage.uri} ignores conditional writes (If-None-Match): the lease on "
                  f"{self.run.uri} is advisory, two writers are not excluded")

    def holds(self) -> bool:
        return self.lost is None

    def check(self) -> None:
        """Reads the stored lease; LeaseLost unless it is still this writer's. Call before each commit."""
        if self.lost is not None:
            raise self.lost
        try:
            current = LeaseRecord.parse(self.run.storage.get_bytes(self.key))
        except FileNotFoundError:
            current = None
        if current is None or current.owner != self.owner or current.fencing != self.fencing:
            self._lose(current)
            raise self.lost

    def renew(self) -> None:
        with self._lock:
            if self.lost is not None or self.record is None or self._stop.is_set():
                return
            record = replace(self.record, heartbeat=time.time())
            try:
                self._tag = self.run.storage.replace_if(self.key, record.to_bytes(), self._tag)
                self.record = record
            except (WriteConflict, FileNotFoundError):
                self._lose_after_read()
            except ConnectionError:
                pass  # an outage: the next heartbeat tries again (takeover needs STALE_RENEWALS missed)

    def _lose_after_read(self) -> None:
        try:
            current = LeaseRecord.parse(self.run.storage.get_bytes(self.key))
        except (FileNotFoundError, ConnectionError):
            current = None
        self._lose(current)

    def _lose(self, current: LeaseRecord | None) -> None:
        holder = current.describe(time.time()) if current else "its lease.json is gone or damaged"
        self.lost = LeaseLost(f"{self.run.uri}: this writer's lease (fencing number {self.fencing}) was taken over "
                              f"({holder}); stopped without committing")
        self.warn(str(self.lost))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            self.renew()

    def release(self, budget_s: float = RELEASE_BUDGET_S, forget: bool = False) -> None:
        """Marks the lease released so the next writer starts at once; bounded by `budget_s` (preemption).
        `forget` deletes it instead: a run refused before it stored anything leaves nothing behind."""
        self._stop.set()
        worker = threading.Thread(target=self._write_released, args=(forget,), daemon=True)
        worker.start()
        worker.join(budget_s)

    def _write_released(self, forget: bool) -> None:
        with self._lock:
            if self.lost is not None or self.record is None:
                return
            if forget:
                with contextlib.suppress(FileNotFoundError, ConnectionError):  # down: it goes stale on its own
                    self.run.storage.delete(self.key)
                return
            record = replace(self.record, heartbeat=time.time(), released=True)
            try:
                self._tag = self.run.storage.replace_if(self.key, record.to_bytes(), self._tag)
                self.record = record
            except (WriteConflict, FileNotFoundError, ConnectionError):
                pass  # taken over meanwhile, or storage down: the lease goes stale on its own
