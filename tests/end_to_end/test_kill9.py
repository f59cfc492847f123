"""Crash safety: SIGKILL at random moments (training, checkpoint writing, evaluation) many times."""

import hashlib
import json
import random
import re
import subprocess
import sys
import time

import pytest

from support.helpers import SMALL_SPEC

TRIALS = 5  # tests/benchmarks/chaos.py does 50
ARGS = ["--set", "data.num_patients=400", "--set", "data.max_seq_len=48", "--set", "train.batch_size=8",
        "--set", "train.max_steps=200",
        "--set", "train.log_every=1", "--set", "train.eval_every=40", "--set", "checkpoint.interval_seconds=0.000001",
        "--set", "checkpoint.keep_last=2"]


def committed(run_dir):
    """Steps of committed checkpoints, each verified against its manifest."""
    steps = []
    for manifest_path in sorted(run_dir.glob("checkpoints/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        for name, entry in manifest["files"].items():
            data = (manifest_path.parent / name).read_bytes()
            assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        steps.append(manifest["step"])
    return steps


def durable_step(run_dir):
    try:
        return json.loads((run_dir / "status.json").read_text())["durable_step"]
    except (FileNotFoundError, ValueError):
        return 0


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r.get("loss", r.get("mlm_loss"))) for r in rows]


def start(tmp_path, storage):
    return subprocess.Popen(
        [sys.executable, "-c", "from ehrseq_runner.cli import main; main()", "run", str(SMALL_SPEC), *ARGS,
         "--set", f"storage.uri=file://{tmp_path}/{storage}", "--set", f"runtime.work_dir={tmp_path}/work-{storage}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_random_sigkills_always_resume_from_a_committed_checkpoint(tmp_path):
    reference = start(tmp_path, "straight")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    run_dir = tmp_path / "runs" / "behrt-small-mlm"
    rng = random.Random(1234)
    resumed_from = []
    for _ in range(TRIALS):
        before = committed(run_dir) if run_dir.exists() else []
        proc = start(tmp_path, "runs")
        while durable_step(run_dir) <= max(before, default=0) and proc.poll() is None:
            time.sleep(0.05)  # wait until this attempt has trained and committed past its start
        time.sleep(rng.uniform(0.0, 1.0))  # then kill mid-step, mid-write or mid-evaluation
        proc.kill()  # SIGKILL: no handler runs
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
        if before:
            match = re.search(r"from step (\d+)", " ".join(err.split()))  # rich wraps at 80 columns
            assert match and int(match.group(1)) == max(before), err  # the newest committed one
            resumed_from.append(int(match.group(1)))
        committed(run_dir)  # everything that counts as committed verifies
    final = start(tmp_path, "runs")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert losses(run_dir) == losses(tmp_path / "straight" / "behrt-small-mlm"), resumed_from
    assert len(resumed_from) >= TRIALS // 2, resumed_from  # most kills landed mid-run, after commits
