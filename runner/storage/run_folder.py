"""A run's folder in storage (docs/runs.md lists its files): spec, status, metrics, summary, plots, weights."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ehrseq.errors import InputError
from ehrseq_runner.storage.base import Storage

STATES = ("running", "preempted", "completed", "failed")
STATUS = "status.json"


class RunFolder:
    def __init__(self, storage: Storage, run_id: str) -> None:
        self.storage = storage
        self.run_id = run_id

    @property
    def uri(self) -> str:
        return f"{self.storage.uri.rstrip('/')}/{self.run_id}"

    def key(self, name: str) -> str:
        return f"{self.run_id}/{name}"

    def exists(self) -> bool:
        return self.storage.exists(self.key(STATUS))

    def read_status(self) -> dict[str, Any] | None:
        """status.json, None if the run has none; DamagedStatus naming it and the way out if it does not parse as
        one (its writer may have been killed mid-way on a store without atomic writes, or someone edited it)."""
        try:
            data = self.storage.get_bytes(self.key(STATUS))
        except FileNotFoundError:
            return None
        try:
            status = json.loads(data)
        except (ValueError, RecursionError):
            status, problem = None, "not JSON"
        else:
            problem = _status_problem(status)
        if problem:
            raise DamagedStatus(f"{self.uri}/{STATUS} is damaged ({problem}); restore it, or delete it: running the "
                                "spec again then resumes from the run's newest committed checkpoint")
        return status

    def write_status(self, state: str, durable_step: int, **extra: Any) -> dict[str, Any]:
        status = status_record(self.run_id, state=state, durable_step=durable_step, **extra)
        self.put_text(STATUS, json.dumps(status, indent=2))
        return status

    def put_text(self, name: str, text: str) -> None:
        self.put_bytes(name, text.encode())

    def put_bytes(self, name: str, data: bytes) -> None:
        self.storage.put_bytes(self.key(name), data)

    def put_file(self, name: str, path: Path) -> None:
        self.storage.put_file(self.key(name), path)

    def delete(self, key: str) -> None:
        """Deletes a storage key under this run (`key` as `list` gives it, the run's folder included)."""
        self.storage.delete(key)

    def upload_dir(self, local: Path, prefix: str = "") -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.put_file(f"{prefix}{path.relative_to(local).as_posix()}", path)


class DamagedStatus(InputError):
    """A status.json that is not a status record."""


def _status_problem(status: Any) -> str | None:
    if not isinstance(status, dict):
        return f"a JSON {type(status).__name__}, not an object"
    if status.get("state") not in STATES:
        return f"state {str(status.get('state'))[:40]!r} is none of {', '.join(STATES)}"
    step = status.get("durable_step")
    if type(step) is not int or step < 0:
        return f"durable_step {str(step)[:40]!r} is not a step number"
    return None


def status_record(run_id: str, state: str, durable_step: int, **extra: Any) -> dict[str, Any]:
    """status.json: `state` and `durable_step` (last step whose checkpoint is committed in this storage)."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    return {"run_id": run_id, "state": state, "durable_step": durable_step,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
