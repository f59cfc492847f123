"""Issue 28 item 1: a writer that lost its lease writes nothing more, removes nothing, and exits 2.

Unit tests on file:// and the real S3 server (weed) for the fenced run folder and the syncer; an end-to-end
SIGSTOP/SIGCONT takeover of `ehrseq run` with a short stale window.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ehrseq_runner.checkpoints.store import CheckpointStore
from ehrseq_runner.storage import s3 as s3_backend
from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.fenced import FencedRunFolder
from ehrseq_runner.storage.lease import STALE_RENEWALS, Lease, LeaseLost
from ehrseq_runner.storage.run_folder import STATUS, RunFolder
from ehrseq_runner.storage.sync import Syncer
from ehrseq_runner.storage.uri import open_storage

from support.helpers import SMALL_SPEC, run_cli

RENEW = 0.2


def _take_over(run: RunFolder, old: Lease) -> FencedRunFolder:
    """Freezes `old`'s heartbeat, waits out the stale window and takes the run over."""
    old._stop.set()
    time.sleep(STALE_RENEWALS * RENEW + 0.1)
    new = Lease(run, renew_seconds=60)
    new.acquire()
    return FencedRunFolder(run, new)


def _status(run: RunFolder) -> dict:
    return json.loads(run.storage.get_bytes(run.key(STATUS)))


def test_writer_that_lost_its_lease_writes_and_removes_nothing(storage, tmp_path):
    run = RunFolder(storage, "r")
    old_lease = Lease(run, renew_seconds=RENEW)
    old_lease.acquire()
    old = FencedRunFolder(run, old_lease)
    old.write_status("running", 10)
    old.put_text("metrics.jsonl", "{}\n")
    new = _take_over(run, old_lease)
    new.write_status("completed", 20)
    (tmp_path / "w.bin").write_bytes(b"weights")
    new.put_file("checkpoints/step-000000020/model.safetensors", tmp_path / "w.bin")
    before = {k: storage.get_bytes(k) for k in storage.list("r/")}

    for write in (lambda: old.write_status("running", 11), lambda: old.put_text("summary.json", "{}"),
                  lambda: old.put_file("checkpoints/step-000000011/model.safetensors", tmp_path / "w.bin"),
                  lambda: old.delete("r/checkpoints/step-000000020/model.safetensors")):
        with pytest.raises(LeaseLost, match="taken over"):
            write()
    assert {k: storage.get_bytes(k) for k in storage.list("r/")} == before


def _large_file(tmp_path, monkeypatch):
    """A file over S3's part size (made 5 MiB, S3's least) for a multipart upload, file:// takes it as any file."""
    monkeypatch.setattr(s3_backend, "PART_SIZE", 5 << 20)
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom((5 << 20) + 1))
    return path


def test_large_files_are_written_conditionally(storage, tmp_path, monkeypatch):
    """Issue 28 remainder: a multipart upload is as conditional as a single PUT (If-None-Match / If-Match on its
    completion), so a large checkpoint file is fenced like a small one."""
    large = _large_file(tmp_path, monkeypatch)
    tag = storage.create("r/large.bin", large)
    assert storage.get_bytes("r/large.bin") == large.read_bytes() and storage.version("r/large.bin") == tag
    with pytest.raises(WriteConflict):
        storage.create("r/large.bin", large)
    storage.put_bytes("r/large.bin", b"replaced by someone else")
    with pytest.raises(WriteConflict):
        storage.replace_if("r/large.bin", large, tag)
    assert storage.get_bytes("r/large.bin") == b"replaced by someone else"
    storage.replace_if("r/large.bin", large, storage.version("r/large.bin"))
    assert storage.get_bytes("r/large.bin") == large.read_bytes()
    assert not [k for k in storage.list("r/") if k != "r/large.bin"]  # no temporary or lock file left as a key


@pytest.mark.parametrize("name", [STATUS, "metrics.jsonl", "summary.json", "checkpoints/step-000000011/manifest.json"])
def test_a_write_that_passed_a_stale_check_never_replaces_the_successors(storage, tmp_path, monkeypatch, name):
    """A writer paused between its lease check and its write: the store's conditional write refuses it, for
    large (multipart) files too."""
    run = RunFolder(storage, "cas")
    old_lease = Lease(run, renew_seconds=RENEW)
    old_lease.acquire()
    old = FencedRunFolder(run, old_lease)
    old.put_text(name, "old writer, before the pause")
    new = _take_over(run, old_lease)
    real_check = old_lease.check
    (tmp_path / "f").write_text("old writer, after the pause")
    large = _large_file(tmp_path, monkeypatch)
    after = (lambda: old.put_text(name, "old writer, after the pause"), lambda: old.put_file(name, tmp_path / "f"),
             lambda: old.put_file(name, large))
    for i, write in enumerate(after):
        paused: list[int] = []

        def check_then_pause(i: int = i, paused: list[int] = paused) -> None:
            if paused:
                real_check()
            paused.append(1)  # passed before the takeover; while paused, the successor writes
            new.put_text(name, f"successor {i}")

        old_lease.check = check_then_pause
        with pytest.raises(LeaseLost):
            write()
        assert storage.get_bytes(run.key(name)) == f"successor {i}".encode()
    new.put_text(name, "successor again")  # the holder's own later writes go through
    assert storage.get_bytes(run.key(name)) == b"successor again"


def test_syncer_of_a_lost_writer_sends_nothing_and_raises(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "sync")
    old_lease = Lease(run, renew_seconds=RENEW)
    old_lease.acquire()
    syncer = Syncer(FencedRunFolder(run, old_lease), interval_s=0.05)
    syncer.set_status("running", durable_step=5)
    assert syncer.flush()
    new = _take_over(run, old_lease)
    new.write_status("completed", 9)
    syncer.set_status("running", durable_step=6)
    syncer.put_bytes("metrics.jsonl", b"{}\n")
    time.sleep(0.3)  # the background loop meets the loss
    with pytest.raises(LeaseLost):
        syncer.close(deadline=time.monotonic() + 1)
    assert _status(run) == {**_status(run), "state": "completed", "durable_step": 9}
    assert not run.storage.exists(run.key("metrics.jsonl"))


def test_prune_by_a_lost_writer_deletes_nothing(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "prune")
    old_lease = Lease(run, renew_seconds=RENEW)
    old_lease.acquire()
    (tmp_path / "w.bin").write_bytes(b"w")
    old_store = CheckpointStore(FencedRunFolder(run, old_lease), old_lease)
    old_store.commit(1, [tmp_path / "w.bin"], {})
    new = _take_over(run, old_lease)
    new_store = CheckpointStore(new, new.lease)
    for step in (2, 3):
        new_store.commit(step, [tmp_path / "w.bin"], {})
    with pytest.raises(LeaseLost):
        old_store.prune(keep_last=1)
    assert [m["step"] for m in CheckpointStore(run).manifests()] == [1, 2, 3]


def _tree(run: RunFolder) -> dict[str, str]:
    return {k: hashlib.sha256(run.storage.get_bytes(k)).hexdigest() for k in run.storage.list(run.key(""))}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_sigstopped_writer_resumed_after_takeover_leaves_the_run_alone(tmp_path, request, scheme):
    """Issue 28 item 1 end to end: A paused past its stale window, B takes over and completes, A continued:
    A exits 2 and the run folder is exactly as B left it."""
    if scheme == "s3":
        request.getfixturevalue("s3_env")  # the subprocesses inherit the server's endpoint and credentials
    uri = f"file://{tmp_path}/runs" if scheme == "file" else f"s3://ehrseq-test/paused-{time.time_ns()}"
    run = RunFolder(open_storage(uri), "paused")
    spec = yaml.safe_load(SMALL_SPEC.read_text())
    spec.update(name="paused", storage={"uri": uri})
    spec["data"].update(num_patients=60, max_seq_len=32)
    spec["train"].update(max_steps=100000, batch_size=4, eval_every=0, log_every=1)
    spec["checkpoint"] = {"interval_seconds": 0.2, "lease_renew_seconds": 0.5}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-c", "from ehrseq_runner.cli import main; main()", "run", str(path)]
    a = subprocess.Popen([*cmd, "--set", "runtime.work_dir=" + str(tmp_path / "a")], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        until = time.monotonic() + 120
        while len(CheckpointStore(run).manifests()) < 2:
            assert a.poll() is None and time.monotonic() < until, a.stderr.read() if a.poll() else "no checkpoint"
            time.sleep(0.1)
        a.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # anything in flight lands before the takeover
        durable = _status(run)["durable_step"]
        time.sleep(STALE_RENEWALS * 0.5 + 0.5)
        b = run_cli("run", str(path), "--set", f"train.max_steps={durable + 5}",
                    "--set", "runtime.work_dir=" + str(tmp_path / "b"), cwd=tmp_path)
        assert b.returncode == 0 and "took over the stale lease" in b.stderr, b.stderr
        completed, committed = _tree(run), [m["step"] for m in CheckpointStore(run).manifests()]
        assert _status(run)["state"] == "completed"
        a.send_signal(signal.SIGCONT)
        assert a.wait(timeout=60) == 2
        err = a.stderr.read()
        assert "taken over" in err and "Traceback" not in err, err
        time.sleep(0.5)
        after = _tree(run)
        assert {k: after.get(k) for k in completed} == completed  # nothing of B's replaced or removed
        # a request A had in flight when frozen may land as a new, uncommitted checkpoint file: readers ignore it
        new_keys = set(after) - set(completed)
        assert all(k.startswith(run.key("checkpoints/")) for k in new_keys), new_keys
        assert [m["step"] for m in CheckpointStore(run).manifests()] == committed
    finally:
        a.send_signal(signal.SIGCONT)
        if a.poll() is None:
            a.kill()
        a.wait()
