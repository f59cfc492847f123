"""The storage interface against a real S3 server (SeaweedFS), plus retry logic with a fake."""

import threading
import time

import pytest

from ehrseq.errors import InputError
from ehrseq_runner.commands.pull import pull
from ehrseq_runner.storage.base import StorageUnavailable
from ehrseq_runner.storage.local import LocalStorage
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.sync import DeadlineExceeded, Syncer, retry_transient
from ehrseq_runner.storage.uri import open_storage

pytestmark = pytest.mark.slow


def test_s3_storage_round_trip(s3_env, tmp_path, request):
    storage = open_storage(f"s3://ehrseq-test/{request.node.name}")
    storage.check()
    storage.put_bytes("r/status.json", b"{}")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # 10 MB
    storage.put_file("r/checkpoints/step-1/model.safetensors", big)
    assert storage.list("r/") == ["r/checkpoints/step-1/model.safetensors", "r/status.json"]
    storage.get_file("r/checkpoints/step-1/model.safetensors", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert storage.exists("r/status.json") and not storage.exists("r/nope")
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("r/nope")
    storage.delete("r/status.json")
    assert storage.list("r/") == ["r/checkpoints/step-1/model.safetensors"]


def test_missing_bucket_or_bad_credentials_fail_fast(s3_env, monkeypatch):
    with pytest.raises(InputError, match="bucket does not exist"):
        open_storage("s3://no-such-bucket-here/x").check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(InputError, match="ehrseq-test"):
        open_storage("s3://ehrseq-test/x").check()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(InputError, match="cannot reach storage"):
        open_storage("s3://ehrseq-test/x").check()


class DictStorage:
    """In-memory stand-in holding keys no real server would accept ('..', absolute)."""

    uri = "mem://"

    def __init__(self, objects):
        self.objects = objects

    def list(self, prefix=""):
        return sorted(k for k in self.objects if k.startswith(prefix))

    def get_file(self, key, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.objects[key])


@pytest.mark.parametrize("evil", ["r/../../escape.txt", "r//abs/escape.txt"])
def test_pull_refuses_keys_that_escape_the_destination(tmp_path, evil):
    storage = DictStorage({"r/summary.json": b"{}", evil: b"x"})
    with pytest.raises(InputError, match="escape"):
        pull(RunFolder(storage, "r"), tmp_path / "dest", "all")
    assert not (tmp_path / "dest").exists()  # checked before anything is written
    assert [p.name for p in pull(RunFolder(DictStorage({"r/summary.json": b"{}"}), "r"), tmp_path / "d", "all")] \
        == ["summary.json"]


def test_retry_transient_waits_out_an_outage_and_respects_deadlines(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 4:
            raise StorageUnavailable("503")
        return "ok"

    assert retry_transient(flaky) == "ok" and calls["n"] == 4
    with pytest.raises(DeadlineExceeded):
        retry_transient(lambda: (_ for _ in ()).throw(StorageUnavailable("down")), deadline=0.0)
    with pytest.raises(FileNotFoundError):  # not transient: no retry
        retry_transient(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")))


def test_a_deadline_bounds_a_flush_whose_storage_call_hangs(tmp_path):
    """A storage call can outlast any retry loop's deadline (boto retries an unreachable endpoint for half a
    minute): a flush with a deadline gives up at it, so a preempted run exits within its grace budget."""
    release = threading.Event()

    class Hanging(LocalStorage):
        def put_bytes(self, key: str, data: bytes) -> None:
            release.wait(60)

    syncer = Syncer(RunFolder(Hanging(tmp_path), "r"), interval_s=0.01)
    try:
        syncer.set_status("preempted", durable_step=3)
        time.sleep(0.1)  # the background loop is inside the hanging call
        start = time.monotonic()
        assert syncer.close(deadline=start + 0.5) is False
        assert time.monotonic() - start < 2
    finally:
        release.set()
