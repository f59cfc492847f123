"""Getting files to storage without making training wait or fail.

`retry_transient` retries storage calls through outages with capped exponential backoff.
`Syncer` keeps the small files that change all the time (status.json, metrics.jsonl) in
storage from a background thread: only each file's latest version matters, so pending uploads
coalesce and the queue is bounded by the number of files.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ehrseq.errors import InputError
from ehrseq_runner.storage.lease import LeaseLost
from ehrseq_runner.storage.run_folder import STATUS, RunFolder, status_record

T = TypeVar("T")
MAX_BACKOFF_S = 15.0


class DeadlineExceeded(TimeoutError):
    pass


def retry_transient(fn: Callable[[], T], deadline: float | None = None,
                    on_retry: Callable[[Exception, float], None] = lambda e, wait: None) -> T:
    """Calls `fn` until it succeeds, retrying through transient storage errors (network, 5xx).

    `deadline` (time.monotonic) bounds the attempts: DeadlineExceeded once it is near.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except ConnectionError as e:  # StorageUnavailable and socket-level failures
            wait = min(MAX_BACKOFF_S, 0.25 * 2**attempt)
            attempt += 1
            if deadline is not None and time.monotonic() + wait > deadline:
                raise DeadlineExceeded(str(e)) from e
            on_retry(e, wait)
            time.sleep(wait)


class Syncer:
    def __init__(self, run: RunFolder, interval_s: float = 5.0,
                 warn: Callable[[str], None] = lambda message: None) -> None:
        """`run`: a FencedRunFolder for a run's writer, so nothing is sent once its lease was taken over."""
        self.run = run
        self.interval_s = interval_s
        self.warn = warn
        self.lost: LeaseLost | None = None  # set once a write was refused: pending changes are dropped
        self.status: dict[str, Any] = {}
        self._pending: dict[str, tuple[bytes, float]] = {}  # name -> (content, first queued at)
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name="storage-sync", daemon=True)
        self._thread.start()

    # -- what the run calls ----------------------------------------------------------------------
    def put_bytes(self, name: str, data: bytes) -> None:
        with self._lock:
            queued = self._pending.get(name, (b"", time.monotonic()))[1]
            self._pending[name] = (data, queued)

    def set_status(self, state: str | None = None, **fields: Any) -> None:
        """Updates status.json's fields; the heartbeat re-sends it every interval."""
        with self._lock:
            if state is not None:
                self.status["state"] = state
            self.status.update(fields)
        self._queue_status()
        self._wake.set()

    def restore_status(self, stored: dict[str, Any]) -> None:
        """Puts back a status.json read before this run touched it (a run refused on input changes nothing)."""
        with self._lock:
            self.status = {k: v for k, v in stored.items() if k not in ("run_id", "updated_at", "sync_lag_s")}
        self._queue_status()
        self._wake.set()

    def flush(self, deadline: float | None = None) -> bool:
        """Sends everything pending now; False if storage is still failing at `deadline`; LeaseLost if this
        writer's lease was taken over.

        With a deadline the sending runs on a worker thread, abandoned when the deadline passes: a single storage
        call can outlast it (boto retries an unreachable endpoint for half a minute), and a preempted run must
        exit within its grace budget."""
        if deadline is None:
            return self._send_until(None)
        outcome: list[bool | BaseException] = []

        def send() -> None:
            try:
                outcome.append(self._send_until(deadline))
            except BaseException as e:  # re-raised on the caller's thread
                outcome.append(e)

        worker = threading.Thread(target=send, name="storage-flush", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            return False
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _send_until(self, deadline: float | None) -> bool:
        try:
            retry_transient(self._send_pending, deadline)
            return True
        except DeadlineExceeded:
            return False

    def close(self, deadline: float | None = None) -> bool:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=1.0)
        return self.flush(deadline)

    # -- background ----------------------------------------------------------------------------
    def _queue_status(self) -> None:
        with self._lock:
            record = status_record(self.run.run_id, **self.status, sync_lag_s=round(self._lag_locked(), 1))
        self.put_bytes(STATUS, json.dumps(record, indent=2).encode())

    def _lag_locked(self) -> float:
        """Seconds the oldest unsent change has waited (0 when storage is up to date); hold the lock."""
        oldest = min((q for _, q in self._pending.values()), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._closed:
                break
            if self.status:
                self._queue_status()  # heartbeat
            try:
                self._send_pending()
                if self._failing_since is not None:
                    self.warn(f"storage is reachable again after {time.monotonic() - self._failing_since:.0f} s")
                    self._failing_since = None
            except InputError:  # LeaseLost (the lease warned) or a full disk: close() raises it
                return
            except ConnectionError as e:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    self.warn(f"storage unavailable ({e}); training continues, uploads will catch up")

    def _send_pending(self) -> None:
        with self._upload_lock:
            with self._lock:
                if self.lost is not None:
                    self._pending.clear()
                    raise self.lost
                items = dict(self._pending)
            for name, (data, _) in items.items():
                try:
                    self.run.put_bytes(name, data)
                except LeaseLost as e:
                    with self._lock:
                        self.lost = e
                        self._pending.clear()
                    raise
                with self._lock:
                    if self._pending.get(name, (None, 0))[0] is data:
                        del self._pending[name]
