"""checkpoint.local_dir (issue 19 item 7): a first checkpoint tier on local disk, resume across both tiers."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_s3_runs import BUCKET, ehrseq, run_args, status, wait_for

from ehrseq_runner.checkpoints.local_tier import LocalTier, fetch_newest
from ehrseq_runner.checkpoints.store import CheckpointStore
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

from support.s3_server import WeedServer


def _checkpoint(folder, step: int) -> list:
    """Real safetensors (a fetched checkpoint is also test-loaded, not only checksummed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({"step": torch.tensor([step])}, path)
    return [path]


def _step(folder) -> int:
    return int(load_file(folder / "model.safetensors")["step"])


@pytest.fixture
def tiers(tmp_path):
    bucket = RunFolder(open_storage(f"file://{tmp_path}/bucket"), "r")
    lease = Lease(bucket, renew_seconds=60)
    lease.acquire()
    yield LocalTier(tmp_path / "volume", "r", lease), CheckpointStore(bucket, lease)
    lease.release()


def test_resume_takes_the_newest_verified_across_tiers(tiers, tmp_path):
    local, bucket = tiers
    bucket.commit(10, _checkpoint(tmp_path / "up10", 10), {})
    local.commit(10, _checkpoint(local.folder / "step-000000010", 10), {})
    local.commit(12, _checkpoint(local.folder / "step-000000012", 12), {})
    stored = json.loads((local.folder / "step-000000012/manifest.json").read_text())
    assert stored["fencing"] == 1 and set(stored["files"]) == {"model.safetensors"}
    warnings: list[str] = []
    manifest, folder = fetch_newest([local.store, bucket], tmp_path / "resume", warnings.append)
    assert manifest["step"] == 12 and _step(folder) == 12

    (local.folder / "step-000000012/model.safetensors").write_bytes(b"torn write")  # corrupt the newest
    manifest, folder = fetch_newest([local.store, bucket], tmp_path / "resume", warnings.append)
    assert manifest["step"] == 10 and "tier-0" in str(folder)  # equal steps: the local one, no download
    assert "does not match its checksum" in warnings[-1]

    bucket.commit(14, _checkpoint(tmp_path / "up14", 14), {})
    assert fetch_newest([local.store, bucket], tmp_path / "resume", warnings.append)[0]["step"] == 14


@pytest.mark.slow
def test_sigterm_during_an_outage_commits_locally_and_resumes_from_there(tmp_path):
    """Storage down at SIGTERM: the final state commits on the local tier within the grace budget; the next run
    resumes from that step, not from the older one in the bucket, and uploads what follows."""
    server = WeedServer(tmp_path / "weed")
    server.start()
    volume, storage = tmp_path / "volume", f"s3://{BUCKET}/tier"
    try:
        job = ehrseq(*run_args(storage, tmp_path / "work", 100000, f"checkpoint.local_dir={volume}"),
                     env=server.env, cwd=tmp_path)
        wait_for(lambda: status(server, "tier").get("durable_step", 0) > 0)
        server.stop()
        time.sleep(2)
        signalled = time.time()
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=120)
        assert job.returncode == 75 and "is committed on the local tier" in err, err
        # gone within the grace budget (5 s) and the lease's release (2 s), not after boto's retries of the
        # unreachable endpoint (half a minute): a pod's SIGKILL would cut the status and release short
        assert time.time() - signalled < 15
        uploaded = status(server, "tier")  # unreachable: nothing
        local = json.loads(sorted(volume.glob("behrt-small-mlm/checkpoints/*/manifest.json"))[-1].read_text())
        local_step = local["step"]
        assert local["committed_at"] - signalled < 5  # within RunPod's SIGTERM -> SIGKILL budget
        server.start()
        wait_for(lambda: "durable_step" in status(server, "tier"), timeout=30)  # weed serves objects a moment later
        in_bucket = status(server, "tier")["durable_step"]
        assert uploaded == {} and local_step > in_bucket, (local_step, in_bucket)

        again = ehrseq(*run_args(storage, tmp_path / "work2", local_step + 3, f"checkpoint.local_dir={volume}"),
                       env=server.env, cwd=tmp_path)
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert f"from step {local_step} " in err, err
        final = status(server, "tier")
        assert final["state"] == "completed" and final["durable_step"] == local_step + 3
    finally:
        server.stop()
