"""One writer per run (issue 19 item 2): the lease on file:// and on a real S3 server (weed), fencing, takeover."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from ehrseq_runner.checkpoints.store import CheckpointStore
from ehrseq_runner.storage.base import WriteConflict
from ehrseq_runner.storage.lease import LEASE, STALE_RENEWALS, Lease, LeaseHeld, LeaseLost, LeaseRecord
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

from support.helpers import SMALL_SPEC, run_cli


def _stored(run: RunFolder) -> LeaseRecord:
    return LeaseRecord.parse(run.storage.get_bytes(run.key(LEASE)))


def test_conditional_writes(storage):
    tag = storage.create("r/x.json", b"one")
    with pytest.raises(WriteConflict):
        storage.create("r/x.json", b"two")
    new_tag = storage.replace_if("r/x.json", b"three", tag)
    with pytest.raises(WriteConflict):
        storage.replace_if("r/x.json", b"four", tag)  # the tag read before is no longer current
    assert storage.get_versioned("r/x.json") == (b"three", new_tag)
    with pytest.raises((WriteConflict, FileNotFoundError)):
        storage.replace_if("r/absent.json", b"x", new_tag)


def test_one_of_many_racing_writers_wins(storage):
    run = RunFolder(storage, "race")
    outcomes: list[str] = []

    def contend() -> None:
        try:
            Lease(run, renew_seconds=60).acquire()
            outcomes.append("won")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    assert _stored(run).fencing == 1


def test_fresh_lease_refused_naming_holder(storage):
    run = RunFolder(storage, "busy")
    warnings: list[str] = []
    first = Lease(run, renew_seconds=60, warn=warnings.append)
    first.acquire()
    assert warnings == []  # the store enforced If-None-Match: no "advisory" warning
    with pytest.raises(LeaseHeld) as refused:
        Lease(run, renew_seconds=60).acquire()
    message = str(refused.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message and "take over" in message
    first.release()
    second = Lease(run, renew_seconds=60, warn=warnings.append)
    second.acquire()  # a released lease is taken at once, silently
    assert warnings == [] and second.fencing == 2 and _stored(run).takeovers == {}  # released: no zombie to fence


def test_stale_lease_taken_over_and_zombie_fenced(storage, tmp_path):
    run = RunFolder(storage, "stale")
    old = Lease(run, renew_seconds=0.2)
    old.acquire()
    old._stop.set()  # a frozen writer: no more heartbeats
    time.sleep(STALE_RENEWALS * 0.2 + 0.1)
    warnings: list[str] = []
    new = Lease(run, renew_seconds=60, warn=warnings.append)
    new.acquire()
    assert new.fencing == 2 and "took over the stale lease" in warnings[0] and "fencing number 2" in warnings[0]

    # the zombie wakes up: its commit is refused before the manifest, its renewal finds the loss
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w")
    with pytest.raises(LeaseLost, match="taken over"):
        CheckpointStore(run, old).commit(5, [folder / "model.safetensors"], {})
    assert not storage.exists(run.key("checkpoints/step-000000005/manifest.json"))
    CheckpointStore(run, new).commit(4, [folder / "model.safetensors"], {})
    stored = json.loads(storage.get_bytes(run.key("checkpoints/step-000000004/manifest.json")))
    assert stored["fencing"] == 2

    # a manifest a zombie slipped in after the takeover (committed under fencing 1) is ignored by readers
    zombie = {**stored, "step": 9, "fencing": 1, "committed_at": time.time()}
    storage.put_bytes(run.key("checkpoints/step-000000009/manifest.json"), json.dumps(zombie).encode())
    before = {**stored, "step": 2, "fencing": 1, "committed_at": _stored(run).takeovers["2"] - 1}
    storage.put_bytes(run.key("checkpoints/step-000000002/manifest.json"), json.dumps(before).encode())
    seen: list[str] = []
    assert [m["step"] for m in CheckpointStore(run).manifests(seen.append)] == [2, 4]
    assert "fencing number 1" in seen[0] and "step-000000009" in seen[0]


def test_heartbeat_renews_and_notices_loss(storage):
    run = RunFolder(storage, "beat")
    lease = Lease(run, renew_seconds=0.1)
    lease.acquire()
    first = _stored(run).heartbeat
    time.sleep(0.5)
    assert _stored(run).heartbeat > first and lease.holds()
    # someone deletes the lease and another writer takes it: the heartbeat finds out
    storage.delete(run.key(LEASE))
    Lease(run, renew_seconds=60).acquire()
    time.sleep(0.5)
    assert not lease.holds() and isinstance(lease.lost, LeaseLost)
    lease.release()
    assert not _stored(run).released  # a writer that lost the lease never touches it again


@pytest.mark.parametrize("damage", [b"not json", b"[1]", b'{"owner": 1}'])
def test_damaged_lease_taken_over_with_a_warning(tmp_path, damage):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "damaged")
    record = json.loads(LeaseRecord("x", "h", 1, None, time.time(), 2, 60.0).to_bytes())
    for stored in (damage, json.dumps({**record, "takeovers": {"2": "soon"}}).encode(),
                   json.dumps({**record, "pid": "1"}).encode()):
        run.storage.put_bytes(run.key(LEASE), stored)
        warnings: list[str] = []
        lease = Lease(run, renew_seconds=60, warn=warnings.append)
        lease.acquire()
        assert "was damaged" in warnings[0] and lease.fencing == 1
        lease.release()


def test_dead_process_on_this_host_taken_over_at_once(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "dead")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = LeaseRecord("x", socket.gethostname(), int(gone.stdout), _ns(), time.time(), 3, 60.0, {"3": 1.0})
    run.storage.put_bytes(run.key(LEASE), record.to_bytes())
    lease = Lease(run, renew_seconds=60)
    lease.acquire()
    assert lease.fencing == 4
    lease.release()


def _ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@pytest.mark.slow
def test_second_run_refused_then_first_preempted_releases(tmp_path):
    """Two `ehrseq run` of one run: the second exits 2 naming the holder; after SIGTERM the next one resumes
    at once (the preempted run released its lease), and every manifest carries its writer's fencing number."""
    spec = yaml.safe_load(SMALL_SPEC.read_text())
    spec.update(name="two-writers", storage={"uri": f"file://{tmp_path}/runs"}, runtime={"work_dir": str(tmp_path)})
    spec["data"].update(num_patients=60)
    spec["train"].update(max_steps=100000, batch_size=4, eval_every=100000, log_every=10)
    spec["checkpoint"] = {"interval_seconds": 1}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = subprocess.Popen([sys.executable, "-c", "from ehrseq_runner.cli import main; main()", "run", str(path)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "two-writers"
    try:
        until = time.monotonic() + 120
        while not list(run_dir.glob("checkpoints/*/manifest.json")):
            assert first.poll() is None and time.monotonic() < until, first.stderr.read() if first.poll() else ""
            time.sleep(0.3)
        second = run_cli("run", str(path), cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "take over" in lines[0], second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 75
    lease = json.loads((run_dir / LEASE).read_text())
    assert lease["released"] and lease["fencing"] == 1
    fencings = {json.loads(p.read_text())["fencing"] for p in run_dir.glob("checkpoints/*/manifest.json")}
    assert fencings == {1}
    third = run_cli("run", str(path), "--set", "train.max_steps=1", cwd=tmp_path)  # past the durable step
    assert "being written by another" not in third.stderr and "took over" not in third.stderr, third.stderr
    assert json.loads((run_dir / LEASE).read_text())["fencing"] == 2


def test_pull_leaves_the_lease_out_of_the_bundle(tmp_path):
    from ehrseq_runner.commands.pull import select_keys

    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "pulled")
    lease = Lease(run, renew_seconds=60)
    lease.acquire()
    run.write_status("running", 0)
    assert select_keys(run, "final") == ["status.json"] and LEASE in select_keys(run, "all")
    lease.release()
