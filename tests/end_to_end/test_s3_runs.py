"""Runs against a real S3 server: preemption and resume on an empty pod, an outage mid-run, list/pull, secrets."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support.helpers import SMALL_SPEC
from support.s3_server import SECRET_KEY, WeedServer

pytestmark = pytest.mark.slow
BUCKET = "ehrseq-test"
TINY = ["data.num_patients=400", "data.max_seq_len=48", "train.batch_size=8", "train.log_every=1",
        "train.eval_every=40", "checkpoint.interval_seconds=1"]


def ehrseq(*args, env, cwd):
    return subprocess.Popen([sys.executable, "-c", "from ehrseq_runner.cli import main; main()", *args],
                            env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_args(storage, work, steps, *extra):
    args = ["run", str(SMALL_SPEC)]
    for item in [*TINY, f"train.max_steps={steps}", f"storage.uri={storage}", f"runtime.work_dir={work}", *extra]:
        args += ["--set", item]
    return args


def status(server, prefix):
    try:
        body = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/behrt-small-mlm/status.json")["Body"]
        return json.loads(body.read())
    except Exception:
        return {}


def wait_for(predicate, timeout=120):
    until = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.2)


def train_losses(text):
    rows = [json.loads(line) for line in text.splitlines()]
    return [(r["step"], r["split"], r.get("loss", r.get("mlm_loss"))) for r in rows]


def test_sigterm_then_resume_on_an_empty_pod_and_no_secret_anywhere(s3, s3_env, tmp_path):
    storage = f"s3://{BUCKET}/resume"
    work = tmp_path / "work"
    first = ehrseq(*run_args(storage, work, 120), env=s3_env, cwd=tmp_path)
    wait_for(lambda: status(s3, "resume").get("durable_step", 0) > 0)
    first.send_signal(signal.SIGTERM)
    out1, err1 = first.communicate(timeout=60)
    assert first.returncode == 75, err1
    stopped = status(s3, "resume")
    assert stopped["state"] == "preempted" and stopped["durable_step"] > 0 and stopped["reason"] == "SIGTERM"

    shutil.rmtree(work)  # a fresh pod: nothing local survives
    second = ehrseq(*run_args(storage, work, 120), env=s3_env, cwd=tmp_path)
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 0, err2
    assert f"from step {stopped['durable_step']} " in " ".join(err2.split())  # rich wraps at 80 columns
    assert status(s3, "resume")["state"] == "completed"

    straight = ehrseq(*run_args(f"file://{tmp_path}/local", tmp_path / "w2", 120), env={}, cwd=tmp_path)
    assert straight.wait(timeout=300) == 0
    listed = ehrseq("list", storage, env=s3_env, cwd=tmp_path)
    out3, _ = listed.communicate(timeout=60)
    assert "behrt-small-mlm" in out3 and "completed" in out3
    pulled = ehrseq("pull", f"{storage}/behrt-small-mlm", str(tmp_path / "pulled"), "--what", "best",
                    env=s3_env, cwd=tmp_path)
    _, err4 = pulled.communicate(timeout=60)
    assert pulled.returncode == 0, err4
    bundle = tmp_path / "pulled"
    for name in ["summary.json", "SUMMARY.md", "spec.yaml", "status.json", "model.safetensors", "plots/loss.png"]:
        assert (bundle / name).is_file(), name
    assert len(list(bundle.glob("checkpoints/*/manifest.json"))) == 1  # the best one only
    assert train_losses((bundle / "metrics.jsonl").read_text()) == \
        train_losses((tmp_path / "local/behrt-small-mlm/metrics.jsonl").read_text())

    texts = [out1, err1, out2, err2, out3, err4]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(SECRET_KEY.encode() not in p.read_bytes() for p in files)
    assert all(SECRET_KEY not in t for t in texts)


def test_storage_outage_mid_run_loses_nothing(tmp_path):
    server = WeedServer(tmp_path / "weed")
    server.start()
    try:
        storage = f"s3://{BUCKET}/outage"
        job = ehrseq(*run_args(storage, tmp_path / "work", 300), env=server.env, cwd=tmp_path)
        wait_for(lambda: status(server, "outage").get("durable_step", 0) > 0)
        server.stop()  # storage gone mid-run
        local_metrics = tmp_path / "work/behrt-small-mlm/metrics.jsonl"
        logged_before = len(local_metrics.read_text().splitlines())
        time.sleep(30)  # the bar: a 30 s outage
        assert job.poll() is None
        assert len(local_metrics.read_text().splitlines()) > logged_before + 20  # training carried on
        server.start()
        _, err = job.communicate(timeout=400)
        assert job.returncode == 0, err
        final = status(server, "outage")
        assert final["state"] == "completed" and final["durable_step"] == 300
        body = server.client().get_object(Bucket=BUCKET, Key="outage/behrt-small-mlm/metrics.jsonl")["Body"]
        steps = [r["step"] for r in map(json.loads, body.read().decode().splitlines()) if r["split"] == "train"]
        assert steps == list(range(1, 301))
        keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=BUCKET, Prefix="outage/")["Contents"]}
        assert {"outage/behrt-small-mlm/summary.json", "outage/behrt-small-mlm/model.safetensors"} <= keys
    finally:
        server.stop()
