"""Issue 28 item 2: a SIGTERM during a count baseline's fit, the bundle, or between a ladder's runs ends the ladder
with 75 within the grace budget; completed runs stay completed and re-running continues."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from rich.console import Console

import ehrseq_runner.job.bundle as bundle
import ehrseq_runner.job.run as job_run
from ehrseq_runner.commands.ladder import run_ladder
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.spec.ladder_spec import load_ladder

LADDER = """\
name: lad
seed: 3
cohorts:
  - {name: order, data: {num_patients: 200, max_seq_len: 32, synthetic: {preset: order}}}
task: {kind: binary}
label_budgets: [16, null]
replicates: 1
resamples: 200
train: {max_steps: 4, batch_size: 8, device: cpu}
rungs:
  - {name: bag, model: {kind: bag_of_codes}}
  - {name: gbm, model: {kind: gbm}}
storage: {uri: "file://STORAGE"}
runtime: {work_dir: "WORK"}
"""
SLOW_S = 20.0  # what the interrupted phase would still take: the ladder must not wait for it


def _state(root: Path, run_id: str) -> str | None:
    path = root / run_id / "status.json"
    return json.loads(path.read_text())["state"] if path.exists() else None


def _sigterm_then(real, calls: list[int], at_call: int, sleep_s: float = 0.0):
    """`real`, with a SIGTERM to this process (and then a slow phase) on call number `at_call`."""
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            calls.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(sleep_s)
        return real(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("phase", ["fit", "bundle"])
def test_sigterm_in_a_baseline_fit_or_bundle_stops_the_ladder_with_75(tmp_path, monkeypatch, phase):
    path = tmp_path / "ladder.yaml"
    path.write_text(LADDER.replace("STORAGE", str(tmp_path / "runs")).replace("WORK", str(tmp_path / "work")))
    ladder, runs = load_ladder(path, [])
    ids, root, calls = [r.spec.resolved_run_id for r in runs], tmp_path / "runs", []
    if phase == "fit":  # the second run's fit: signalled from inside it, and it would go on for SLOW_S
        monkeypatch.setattr(job_run, "fit_baseline", _sigterm_then(job_run.fit_baseline, calls, 2, SLOW_S))
    else:  # the second run's bundle, between its bootstrap and its uploads
        monkeypatch.setattr(bundle, "bootstrap_ci", _sigterm_then(bundle.bootstrap_ci, calls, 2))
    previous = signal.getsignal(signal.SIGTERM)
    code = run_ladder(ladder, runs, tmp_path / "report", Console(quiet=True))
    stopped_in = time.monotonic() - calls[-1]
    assert signal.getsignal(signal.SIGTERM) is previous  # the ladder's handler is gone again
    assert code == EXIT_PREEMPTED and stopped_in < 5.0, (code, stopped_in)  # RunPod's grace budget
    assert [_state(root, i) for i in ids] == ["completed", "preempted", None, None]
    assert not (root / ids[1] / "summary.json").exists() and not (tmp_path / "report").exists()
    first = (root / ids[0] / "summary.json").read_bytes()

    monkeypatch.undo()
    assert run_ladder(ladder, runs, tmp_path / "report", Console(quiet=True)) == 0
    assert [_state(root, i) for i in ids] == ["completed"] * 4
    assert (root / ids[0] / "summary.json").read_bytes() == first  # completed stays completed, not redone
    assert (tmp_path / "report" / "ladder.csv").exists()
