"""The container entrypoint as a process: dispatch, and SIGTERM reaching the job (as tini forwards it)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from ehrseq_runner.entrypoint import dispatch, image_banner

from support.helpers import SMALL_SPEC


def test_a_spec_path_means_run_and_commands_pass_through():
    assert dispatch(["jobs/behrt_large.yaml", "--set", "x=1"]) == ["run", "jobs/behrt_large.yaml", "--set", "x=1"]
    assert dispatch(["status", "s3://b/runs/r"]) == ["status", "s3://b/runs/r"]
    assert dispatch([]) == []


def test_the_image_names_its_torch_build_first(tmp_path):
    built = tmp_path / "torch-build.txt"  # as the Dockerfile's build stage writes it into the venv
    assert image_banner(built) is None  # outside the image: nothing to say
    built.write_text("torch 2.10.0+cu128 (built for CUDA 12.8; TORCH_SPEC torch==2.10.*)\n")
    assert image_banner(built) == "ehrseq image: torch 2.10.0+cu128 (built for CUDA 12.8; TORCH_SPEC torch==2.10.*)"


@pytest.mark.slow
def test_entrypoint_commits_a_checkpoint_on_sigterm_and_exits_75(tmp_path):
    args = [sys.executable, "-m", "ehrseq_runner.entrypoint", str(SMALL_SPEC)]
    for item in ["data.num_patients=400", "train.max_steps=100000", "checkpoint.interval_seconds=100000",
                 f"runtime.work_dir={tmp_path}/work", "storage.uri=file://./runs"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "work/behrt-small-mlm/metrics.jsonl"
    until = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert time.monotonic() < until and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 75, err
    run = tmp_path / "runs/behrt-small-mlm"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "preempted" and status["durable_step"] >= 20
    manifest = json.loads((run / f"checkpoints/step-{status['durable_step']:09d}/manifest.json").read_text())
    assert manifest["step"] == status["durable_step"]
    assert elapsed < 30  # generous on a shared machine; `ehrseq bench preemption` measures it properly

    shown = subprocess.run([sys.executable, "-m", "ehrseq_runner.entrypoint", "status", "--json", "file://./runs/behrt-small-mlm"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "preempted"
