"""`ehrseq run --nproc 2`: DistributedDataParallel on CPU (gloo), a SIGTERM to one rank, and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.helpers import REPO, SMALL_SPEC

pytestmark = pytest.mark.slow


def run_args(tmp_path: Path, max_steps: int) -> list[str]:
    sets = ["name=ddp", f"storage.uri=file://{tmp_path}/runs", f"runtime.work_dir={tmp_path}/work",
            "data.num_patients=200", "data.max_seq_len=32", "train.batch_size=8", "train.log_every=1",
            "train.eval_every=0", f"train.max_steps={max_steps}", "checkpoint.interval_seconds=1000"]
    return [sys.executable, "-m", "ehrseq_runner", "run", str(SMALL_SPEC), "--nproc", "2",
            *(a for item in sets for a in ("--set", item))]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rank_pid(launcher: int, rank: int) -> int:
    for pid in descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"-m" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank processes through /proc")
def test_two_processes_stop_together_on_one_ranks_sigterm_and_resume(tmp_path):
    launcher = subprocess.Popen(run_args(tmp_path, 100_000), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "work" / "ddp" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0]
        time.sleep(0.2)
    os.kill(rank_pid(launcher.pid, 1), signal.SIGTERM)  # rank 1 only: rank 0 learns of it through the reduction
    out = launcher.communicate(timeout=60)[0]
    assert launcher.returncode == 75, out
    status = json.loads((tmp_path / "runs/ddp/status.json").read_text())
    stopped = status["durable_step"]
    assert status["state"] == "preempted" and stopped >= 3
    assert f"rank 1: stopped at step {stopped}" in out  # both ranks stopped at the step rank 0 committed

    resumed = subprocess.run(run_args(tmp_path, stopped + 3), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {stopped}" in resumed.stderr
    status = json.loads((tmp_path / "runs/ddp/status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == stopped + 3
    lines = (tmp_path / "runs/ddp/metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]
    assert steps == list(range(1, stopped + 4))  # one record per step, written once (by rank 0)


def test_every_rank_resumes_from_the_checkpoint_rank_0_picks_across_both_tiers(tmp_path):
    """The local tier holds a newer checkpoint than storage (a final commit whose upload missed the grace budget):
    rank 0 resumes from it, and so must rank 1, or the ranks would train different steps in lockstep."""
    base = run_args(tmp_path, 4)
    base[base.index("--nproc") + 1] = "1"
    args = [*base, "--set", f"checkpoint.local_dir={tmp_path}/volume"]
    first = subprocess.run([*args, "--set", "checkpoint.interval_seconds=0.001"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    stored = sorted((tmp_path / "runs/ddp/checkpoints").glob("step-*/manifest.json"))
    assert stored[-1].parent.name == "step-000000004" and len(stored) >= 2
    stored[-1].unlink()  # storage's newest is now older than the local tier's step 4
    assert (tmp_path / "volume/ddp/checkpoints/step-000000004/manifest.json").is_file()

    args[args.index("--nproc") + 1] = "2"
    args[args.index("train.max_steps=4")] = "train.max_steps=6"
    resumed = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = resumed.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # ranks on different steps wait for each other forever: end them all
        for pid in [*descendants(resumed.pid), resumed.pid]:
            os.kill(pid, signal.SIGKILL)
        raise
    assert resumed.returncode == 0, err
    said = " ".join((out + err).split())  # rich wraps long lines
    assert "ddp from step 4 (" in said and "rank 1: resumed from step 4" in said, said
    status = json.loads((tmp_path / "runs/ddp/status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == 6
