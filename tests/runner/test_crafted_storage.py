"""Issue 28 items 4c, 6, 7: crafted or damaged storage (token-cache manifests, status.json, lease.json) and a full
disk end in one line naming the path and what to do, exit 2 (a skipped entry with a warning in `list`), never a
traceback and never a `failed` mark on a completed run."""

from __future__ import annotations

import errno
import json
import time

import pytest
from rich.console import Console

from ehrseq.errors import InputError, NoSpace
from ehrseq_runner.checkpoints.store import CheckpointStore
from ehrseq_runner.commands.pull import pull
from ehrseq_runner.job.run import check_compatible, run_job
from ehrseq_runner.spec.job_spec import SpecError, load_spec
from ehrseq_runner.spec.ladder_spec import load_ladder
from ehrseq_runner.storage.lease import LEASE, Lease, LeaseRecord
from ehrseq_runner.storage.run_folder import DamagedStatus, RunFolder
from ehrseq_runner.storage.token_caches import PREFIX
from ehrseq_runner.storage.uri import open_storage

from support.helpers import SMALL_SPEC, run_cli

TINY = ["data.num_patients=100", "data.max_seq_len=24", "train.batch_size=8", "train.max_steps=2",
        "train.eval_every=0"]


def spec_for(tmp_path, name: str, pod: str, *extra: str):
    return load_spec(SMALL_SPEC, [*TINY, f"name={name}", f"storage.uri=file://{tmp_path}/runs",
                                  f"runtime.work_dir={tmp_path}/{pod}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["none", "all but codes.npy"])
def test_a_stored_token_cache_whose_manifest_leaves_files_out_is_rebuilt(tmp_path, capsys, keep):
    assert run_job(spec_for(tmp_path, "a", "pod1"), Console(quiet=True)) == 0
    (stored,) = (tmp_path / "runs" / PREFIX).iterdir()
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if keep != "none" and k != "codes.npy"}
    (stored / "manifest.json").write_text(json.dumps(manifest))
    (stored / "codes.npy").write_bytes(b"garbage, checked by nothing the manifest lists")
    assert run_job(spec_for(tmp_path, "b", "pod2"), Console(stderr=True, width=400)) == 0
    err = capsys.readouterr().err
    assert "does not list" in err and "codes.npy" in err and "Traceback" not in err, err


DAMAGED_STATUS = {"not UTF-8": b"\xff\xfe{", "a list": b"[1, 2]", "no state": b"{}",
                  "a string step": b'{"state": "running", "durable_step": "x"}',
                  "a NaN step": b'{"state": "completed", "durable_step": NaN}',
                  "nested deep": b"[" * 200_000 + b"]" * 200_000}


@pytest.mark.parametrize("damage", DAMAGED_STATUS)
def test_a_damaged_status_is_one_error_naming_it(tmp_path, damage):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "r1")
    run.storage.put_bytes(run.key("status.json"), DAMAGED_STATUS[damage])
    with pytest.raises(DamagedStatus) as refused:
        run.read_status()
    assert f"{run.uri}/status.json is damaged" in str(refused.value) and "delete it" in str(refused.value)


@pytest.mark.parametrize("field, value", [("heartbeat", float("nan")), ("heartbeat", time.time() + 1e9),
                                          ("renew_seconds", 1e308), ("renew_seconds", 0.0),
                                          ("takeovers", {"2": float("inf")})])
def test_a_lease_that_could_never_go_stale_is_taken_over_as_damaged(tmp_path, field, value):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "r1")
    record = json.loads(LeaseRecord("x", "elsewhere", 1, None, time.time(), 2, 60.0).to_bytes())
    run.storage.put_bytes(run.key(LEASE), json.dumps({**record, field: value}).encode())
    warnings: list[str] = []
    lease = Lease(run, renew_seconds=60, warn=warnings.append)
    lease.acquire()
    assert "was damaged" in warnings[0] and lease.fencing == 1
    lease.release()


def test_a_folder_in_place_of_the_lease_is_refused_naming_it(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "r1")
    (tmp_path / "runs" / "r1" / LEASE).mkdir(parents=True)
    with pytest.raises(InputError, match=f"{tmp_path}/runs/r1/{LEASE} is a folder .* remove or rename it"):
        Lease(run, renew_seconds=60).acquire()


@pytest.mark.slow
def test_status_list_and_run_on_a_damaged_status(tmp_path):
    storage = open_storage(f"file://{tmp_path}/runs")
    RunFolder(storage, "good").write_status("completed", 7)
    storage.put_bytes("r1/status.json", DAMAGED_STATUS["not UTF-8"])
    listed = run_cli("list", f"file://{tmp_path}/runs", cwd=tmp_path)
    assert listed.returncode == 0 and "good" in listed.stdout and "completed" in listed.stdout, listed.stderr
    assert "skipped" in listed.stderr and "r1/status.json is damaged" in listed.stderr
    for args in (["status", f"file://{tmp_path}/runs/r1"],
                 ["run", str(SMALL_SPEC), "--set", "name=r1", "--set", f"storage.uri=file://{tmp_path}/runs"]):
        result = run_cli(*args, cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and "r1/status.json is damaged" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(lines) <= 2, result.stderr  # one line, maybe wrapped
    assert storage.get_bytes("r1/status.json") == DAMAGED_STATUS["not UTF-8"]
    assert not storage.exists(f"r1/{LEASE}")  # a refused run leaves nothing behind


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_storage_disk_is_one_error_naming_it(tmp_path, monkeypatch):
    storage = open_storage(f"file://{tmp_path}/runs")
    (tmp_path / "w.bin").write_bytes(b"w")
    monkeypatch.setattr("ehrseq_runner.storage.local.os.fsync", _enospc)
    for write in (lambda: storage.put_bytes("r/status.json", b"{}"), lambda: storage.create("r/lease.json", b"{}"),
                  lambda: storage.put_file("r/w", tmp_path / "w.bin")):
        with pytest.raises(NoSpace, match=f"no space left on the device of {tmp_path}/runs.*free space there"):
            write()
    assert [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] == []  # no temporary files left


@pytest.mark.slow
def test_a_full_disk_when_a_completed_run_is_continued_leaves_it_completed(tmp_path, monkeypatch):
    spec = spec_for(tmp_path, "r1", "pod1")
    assert run_job(spec, Console(quiet=True)) == 0
    status = tmp_path / "runs" / "r1" / "status.json"
    before = json.loads(status.read_text())
    monkeypatch.setattr("ehrseq_runner.storage.local.shutil.copyfile", _enospc)  # the checkpoint download
    spec.train.max_steps = 4
    with pytest.raises(NoSpace, match="no space left on the device of"):
        run_job(spec, Console(quiet=True))
    after = json.loads(status.read_text())
    assert (after["state"], after["durable_step"]) == (before["state"], before["durable_step"]) == ("completed", 2)


@pytest.mark.slow
def test_a_full_work_disk_while_checkpointing_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr("ehrseq.training.state.save_file", _enospc)
    with pytest.raises(NoSpace, match=f"no space left on the device of {tmp_path}/pod1"):
        run_job(spec_for(tmp_path, "r1", "pod1"), Console(quiet=True))


DEEP = b"[" * 200_000 + b"]" * 200_000


def test_crafted_manifests_are_ignored_with_a_warning(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "r1")
    (tmp_path / "w.bin").write_bytes(b"w")
    CheckpointStore(run).commit(1, [tmp_path / "w.bin"], {})
    good = json.loads(run.storage.get_bytes(run.key("checkpoints/step-000000001/manifest.json")))
    run.storage.put_bytes(run.key("checkpoints/step-000000002/manifest.json"), DEEP)
    long_name = {**good, "step": 3, "files": {"x" * 300: good["files"]["w.bin"]}}
    run.storage.put_bytes(run.key("checkpoints/step-000000003/manifest.json"), json.dumps(long_name).encode())
    warnings: list[str] = []
    assert [m["step"] for m in CheckpointStore(run).manifests(warnings.append)] == [1]
    assert len(warnings) == 2 and "step-000000002" in warnings[0] and "longer than 255 bytes" in warnings[1]


def test_a_deeply_nested_lease_is_taken_over_as_damaged(tmp_path):
    run = RunFolder(open_storage(f"file://{tmp_path}/runs"), "r1")
    run.storage.put_bytes(run.key(LEASE), DEEP)
    warnings: list[str] = []
    lease = Lease(run, renew_seconds=60, warn=warnings.append)
    lease.acquire()
    assert "was damaged" in warnings[0]
    lease.release()


def test_a_damaged_stored_spec_is_one_error_naming_it(tmp_path):
    spec = spec_for(tmp_path, "r1", "pod1")
    run = RunFolder(open_storage(spec.storage.uri), "r1")
    run.put_text("spec.yaml", spec.to_yaml().replace("max_steps: 2", "max_steps: lots"))
    with pytest.raises(InputError, match=f"{run.uri}/spec.yaml: train.max_steps: .*pass --fresh"):
        check_compatible(run, spec)


@pytest.mark.parametrize("text, message", [(f"name: x\nseed: {'9' * 5000}\n", "digits"),
                                           ("replicates: 1000000000\n", "replicates: Input should be less"),
                                           ("resamples: 100000000000000\n", "resamples: Input should be less")])
def test_huge_numbers_in_specs_are_refused_at_once(tmp_path, text, message):
    ladder = tmp_path / "ladder.yaml"
    ladder.write_text("name: lad\ncohorts: [{name: c}]\ntask: {kind: binary}\nrungs: [{name: b, model: {kind: gbm}}]\n"
                      + text.replace("name: x\n", ""))
    started = time.monotonic()
    with pytest.raises(SpecError, match=message):
        load_ladder(ladder)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_pull_refuses_a_key_stored_as_file_and_folder_and_skips_folder_markers(s3_env, tmp_path):
    storage = open_storage(f"s3://ehrseq-test/pull-{time.time_ns()}")
    for key in ("r/SUMMARY.md", "r/plots/", "r/summary.json", "r/summary.json/inner.txt"):
        storage.put_bytes(key, b"{}")
    with pytest.raises(InputError, match="'summary.json' is stored both as a file and as a folder"):
        pull(RunFolder(storage, "r"), tmp_path / "dest", "all")
    assert not (tmp_path / "dest").exists()
    storage.delete("r/summary.json/inner.txt")
    assert sorted(p.name for p in pull(RunFolder(storage, "r"), tmp_path / "dest", "all")) == \
        ["SUMMARY.md", "summary.json"]


@pytest.mark.slow
def test_a_full_local_tier_falls_back_to_uploading_only(tmp_path, monkeypatch, capsys):
    import ehrseq.training.state as state

    volume, real = tmp_path / "volume", state.save_file

    def full_volume(tensors, filename, *args, **kwargs):
        if str(filename).startswith(str(volume)):
            _enospc()
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(state, "save_file", full_volume)
    spec = spec_for(tmp_path, "r1", "pod1", f"checkpoint.local_dir={volume}")
    assert run_job(spec, Console(stderr=True, width=400)) == 0
    assert f"checkpoint.local_dir {volume}/r1/checkpoints is full" in capsys.readouterr().err
    status = json.loads((tmp_path / "runs" / "r1" / "status.json").read_text())
    assert (status["state"], status["durable_step"]) == ("completed", 2)
    assert [m["step"] for m in CheckpointStore(RunFolder(open_storage(spec.storage.uri), "r1")).manifests()] == [2]


@pytest.mark.parametrize("uri", ["file://", "file://  "])
def test_a_file_uri_naming_no_folder_is_refused(uri):
    with pytest.raises(InputError, match="names no folder; use e.g. file://./runs"):
        open_storage(uri)


@pytest.mark.slow
def test_a_stored_token_cache_with_an_object_array_is_rebuilt(tmp_path, capsys):
    import hashlib

    import numpy as np

    assert run_job(spec_for(tmp_path, "a", "pod1"), Console(quiet=True)) == 0
    (stored,) = (tmp_path / "runs" / PREFIX).iterdir()
    np.save(stored / "codes.npy", np.array([1, "x", None], dtype=object), allow_pickle=True)
    manifest = json.loads((stored / "manifest.json").read_text())
    data = (stored / "codes.npy").read_bytes()
    manifest["files"]["codes.npy"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (stored / "manifest.json").write_text(json.dumps(manifest))
    assert run_job(spec_for(tmp_path, "b", "pod2"), Console(stderr=True, width=400)) == 0
    err = capsys.readouterr().err
    assert "codes.npy: not an array of plain numbers" in err and "building it here" in err, err
