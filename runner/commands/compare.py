"""`ehrseq compare`: fetch finished runs' bundles from storage (file:// or s3://) and compare them."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from ehrseq.errors import InputError
from ehrseq.reports.compare import PREDICTIONS, Comparison, RunResult, compare_runs
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage, split_run_uri


def load_run(run_uri: str, endpoint_url: str | None = None) -> RunResult:
    """A finished run's summary.json, metrics.jsonl (if any) and held-out predictions (if any)."""
    base, run_id = split_run_uri(run_uri)
    run = RunFolder(open_storage(base, endpoint_url), run_id)

    def read(name: str) -> bytes | None:
        try:
            return run.storage.get_bytes(run.key(name))
        except FileNotFoundError:
            return None

    summary = read("summary.json")
    if summary is None:
        status = run.read_status()
        state = f"its state is {status.get('state')!r}" if status else "no such run"
        raise InputError(f"{run_uri}: no summary.json ({state}); compare needs completed runs")
    metrics, predictions = read("metrics.jsonl"), read(PREDICTIONS)
    return RunResult(
        uri=run.uri, summary=json.loads(summary),
        records=[json.loads(line) for line in (metrics or b"").decode().splitlines() if line.strip()],
        predictions=None if predictions is None else pq.read_table(io.BytesIO(predictions)))


def compare(run_uris: Sequence[str], out: Path, force: bool = False, endpoint_url: str | None = None,
            num_resamples: int = 1000) -> Comparison:
    """Loads every run first (so a missing one fails before anything is written), then writes the report."""
    return compare_runs([load_run(uri, endpoint_url) for uri in run_uris], out, force=force,
                        num_resamples=num_resamples)
