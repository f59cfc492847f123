import pytest

from ehrseq.errors import InputError
from ehrseq_runner.storage.local import LocalStorage
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage, split_run_uri


def test_local_storage_round_trip_and_listing(tmp_path):
    storage = open_storage(f"file://{tmp_path}/runs")
    assert isinstance(storage, LocalStorage)
    storage.put_bytes("a/status.json", b"{}")
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 1000)
    storage.put_file("a/checkpoints/1/w.bin", src)
    assert storage.get_bytes("a/checkpoints/1/w.bin") == b"x" * 1000
    assert storage.list() == ["a/checkpoints/1/w.bin", "a/status.json"]
    assert storage.list("a/checkpoints") == ["a/checkpoints/1/w.bin"]
    assert storage.exists("a/status.json") and not storage.exists("a/nope")
    storage.delete("a/status.json")
    assert not storage.exists("a/status.json")
    assert not [p for p in (tmp_path / "runs").rglob(".*")]  # no temp files left behind


def test_run_uri_parsing_and_bad_schemes():
    assert split_run_uri("file://./runs/my-run/") == ("file://./runs", "my-run")
    assert split_run_uri("s3://bucket/prefix/r1") == ("s3://bucket/prefix", "r1")
    with pytest.raises(InputError):
        split_run_uri("my-run")
    with pytest.raises(InputError, match="unsupported scheme"):
        open_storage("gs://bucket")


def test_status_is_written_whole(tmp_path):
    run = RunFolder(open_storage(str(tmp_path)), "r")
    assert run.read_status() is None
    run.write_status("running", durable_step=0)
    status = run.write_status("preempted", durable_step=40)
    assert run.read_status() == status and status["state"] == "preempted"
