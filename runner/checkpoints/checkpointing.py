"""Timed checkpoints off the training thread, and the final one at a stop request.

On the training thread only a snapshot is taken (tensors copied to CPU); writing the files,
uploading them and committing the manifest happen on a background thread, at most one in
flight. A timed checkpoint due while one is in flight waits for the next interval; a new best
(the trainer's `best_step`, by its monitored tuning metric) is queued behind it instead, so training
never waits on storage, and every manifest names the best step so far, which pruning keeps: the runner
scores held-out with that checkpoint's weights. The durable step in status.json moves only after a commit.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrseq.errors import InputError, NoSpace, no_space
from ehrseq.training.state import TrainingSnapshot, capture
from ehrseq.training.trainer import Callback, Trainer
from ehrseq_runner.checkpoints.store import CheckpointDeadline, CheckpointStore
from ehrseq_runner.storage.sync import DeadlineExceeded, retry_transient


class Checkpointer(Callback):
    def __init__(
        self,
        store: CheckpointStore,
        local_dir: Path,
        interval_seconds: float,
        keep_last: int,
        metadata: Callable[[], tuple[dict[str, Any], dict[str, bytes]]],
        on_commit: Callable[[int], None],
        warn: Callable[[str], None] = lambda message: None,
        best_metric: str | None = None,
        durable_step: int = 0,
        first_tier: Callable[[int, list[Path], dict[str, Any]], None] | None = None,
        fallback_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.local_dir = local_dir
        self.interval = interval_seconds
        self.keep_last = keep_last
        self.metadata = metadata  # -> (JSON extras for trainer.json, extra files such as vocab and metrics)
        self.on_commit = on_commit
        self.warn = warn
        self.best_metric = best_metric
        self.durable_step = durable_step
        self.first_tier = first_tier  # commits the written files on local disk before the upload (LocalTier)
        self.fallback_dir = fallback_dir  # where the files go, uploaded only, once the first tier's disk is full
        self._written: tuple[int, tuple[Path, list[Path], dict[str, Any]]] | None = None  # the last step written
        self.tuning: dict[str, float] = {}  # the latest tuning evaluation
        self.tuning_step = -1
        self.error: BaseException | None = None
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # one writer of a step's files at a time: a stop's final checkpoint and a timed one of the same step
        # (both threads) would otherwise write the same files at once
        self._write_lock = threading.RLock()
        self._running = False  # a background commit is in flight
        self._queued: TrainingSnapshot | None = None

    def on_record(self, record: dict[str, Any]) -> None:
        if record["split"] == "tuning":
            self.tuning = {k: v for k, v in record.items() if isinstance(v, float) and k != "time"}
            self.tuning_step = record["step"]

    def raise_if_failed(self) -> None:
        """A failed commit surfaces on the calling thread: an InputError (LeaseLost, a path refused) as it is, for
        one clear line and exit 2."""
        if self.error is not None:
            if isinstance(self.error, InputError):
                raise self.error
            full = no_space(self.error, self.local_dir)
            if full is None and _nearly_full(self.local_dir):  # torch.save's errors carry no errno
                full = NoSpace(f"no space left on the device of {self.local_dir} for checkpoint files: free space "
                               "there (or point runtime.work_dir or checkpoint.local_dir at a larger disk) and run "
                               "the same command again")
            if full is not None:
                raise full from None
            raise RuntimeError("background checkpoint failed") from self.error

    def on_step_end(self, trainer: Trainer) -> None:
        self.raise_if_failed()
        new_best = trainer.state.best_step == trainer.state.step  # this step's evaluation is the best so far
        if not (new_best or time.monotonic() - self._last >= self.interval):
            return
        with self._lock:
            if self._running and not new_best:
                return
            self._last = time.monotonic()
            snapshot = self._snapshot(trainer)
            if self._running:
                self._queued = snapshot  # committed as soon as the in-flight one is
                return
            self._running = True
        self._thread = threading.Thread(target=self._drain, args=(snapshot,), name="checkpoint", daemon=True)
        self._thread.start()

    def _drain(self, snapshot: TrainingSnapshot | None) -> None:
        while snapshot is not None:
            self._commit_logged(snapshot, None)
            with self._lock:
                snapshot, self._queued = self._queued, None
                self._running = snapshot is not None

    def save_now(self, trainer: Trainer, deadline: float | None = None) -> bool:
        """Commits the current state before `deadline` (time.monotonic); False if it could not.

        A late checkpoint is abandoned before its manifest, so the previous one stays the latest. With a first
        tier the state is committed there before waiting on any upload.
        """
        if self.first_tier is not None and trainer.state.step != self.durable_step:
            try:
                self._write(self._snapshot(trainer, copy=False))
            except OSError as e:
                self.warn(f"checkpoint {trainer.state.step}: the local tier failed ({e}); uploading only")
        if not self.wait(deadline):
            return False
        if trainer.state.step == self.durable_step:
            return True  # already committed
        snapshot = self._snapshot(trainer, copy=False)  # training has stopped: no copies needed
        worker = threading.Thread(target=self._commit_logged, args=(snapshot, deadline), daemon=True)
        worker.start()
        worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not worker.is_alive() and self.error is None and self.durable_step == trainer.state.step

    def wait(self, deadline: float | None = None) -> bool:
        """Waits for an in-flight checkpoint; False if it is still running at `deadline`."""
        if self._thread is not None:
            self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            return not self._thread.is_alive()
        return True

    def _snapshot(self, trainer: Trainer, copy: bool = True) -> TrainingSnapshot:
        extra_json, extra_files = self.metadata()
        tuning = self.tuning if self.tuning_step == trainer.state.step else {}  # only this step's evaluation
        return capture(trainer.state_dict(), trainer.state.step, {**extra_json, "tuning": tuning}, extra_files,
                       copy=copy)

    def _write(self, snapshot: TrainingSnapshot) -> tuple[Path, list[Path], dict[str, Any]]:
        """Writes a snapshot's files (and commits them on the first tier, if any), once per step."""
        with self._write_lock:
            return self._write_once(snapshot)

    def _write_once(self, snapshot: TrainingSnapshot) -> tuple[Path, list[Path], dict[str, Any]]:
        if self._written is not None and self._written[0] == snapshot.step:
            return self._written[1]
        folder = self.local_dir / f"step-{snapshot.step:09d}"
        try:
            files = snapshot.write(folder)
        except (OSError, RuntimeError) as e:  # torch.save's errors carry no errno: judged by the free space
            full = no_space(e, folder) is not None or _nearly_full(self.local_dir)
            if self.first_tier is None or self.fallback_dir is None or not full:
                raise
            shutil.rmtree(folder, ignore_errors=True)
            self.warn(f"checkpoint.local_dir {self.local_dir} is full; checkpoints are only uploaded from now on")
            self.first_tier, self.local_dir = None, self.fallback_dir
            return self._write(snapshot)
        meta = {"tuning": snapshot.trainer["tuning"], "best_metric": self.best_metric,
                "best_step": snapshot.trainer["train_state"]["best_step"]}
        if self.first_tier is not None:
            self.first_tier(snapshot.step, files, meta)
        self._written = (snapshot.step, (folder, files, meta))
        return folder, files, meta

    def _commit_logged(self, snapshot: TrainingSnapshot, deadline: float | None) -> None:
        try:
            folder, files, meta = self._write(snapshot)

            def retrying(e: Exception, wait: float) -> None:
                self.warn(f"checkpoint {snapshot.step}: storage unavailable ({e}); retrying in {wait:.0f} s")

            retry_transient(lambda: self.store.commit(snapshot.step, files, meta, deadline), deadline, retrying)
            self.durable_step = snapshot.step
            self.on_commit(snapshot.step)
            if deadline is None:  # pruning can wait when time is short
                retry_transient(lambda: self.store.prune(self.keep_last))
            for old in self.local_dir.glob("step-*"):
                if old.name < folder.name:  # a newer one may be being written (a final one at a stop request)
                    shutil.rmtree(old, ignore_errors=True)
        except (DeadlineExceeded, CheckpointDeadline) as e:  # out of grace time: the previous checkpoint stands
            self.warn(f"checkpoint {snapshot.step} not committed before the deadline: {e}")
        except BaseException as e:  # surfaced on the training thread
            self.error = e


def _nearly_full(folder: Path, margin: int = 64 << 20) -> bool:
    """Less than `margin` bytes free where the checkpoint files go (a failed write's likely reason)."""
    with contextlib.suppress(OSError):
        return shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free < margin
    return False
