"""Issue 20: a checkpoint that fails to load is skipped like a corrupt one (never unpickled), committed and
pruned checkpoints leave no empty folders, and `pull` never copies what a symlink in the run folder points at."""

import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ehrseq.errors import InputError
from ehrseq_runner.checkpoints.store import CheckpointStore, checkpoint_dir, sha256_file
from ehrseq_runner.commands.pull import pull
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.sync import Syncer
from ehrseq_runner.storage.uri import open_storage

from support.helpers import SMALL_SPEC

NEVER_SAY = ("weights_only=False", "weights_only` set to `False", "weights_only=false")


class Payload:
    """Unpickling this would create the marker file: proof that the checkpoint's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "PWNED"))


def plant_payload_checkpoint(run: RunFolder, step: int, marker: Path, work: Path, like: Path | None = None) -> None:
    """A committed checkpoint whose optimizer.pt is a pickle payload, with a manifest whose sha256 matches; its
    other files copied from the checkpoint folder `like`, if given (a run's checkpoint lists them all)."""
    folder = work / f"evil-{step}"
    folder.mkdir(parents=True)
    for path in sorted(like.iterdir()) if like else ():
        if path.name not in ("manifest.json", "optimizer.pt"):
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Payload(marker)}, protocol=2))
    torch.save({"python": 1}, folder / "rng.pt")
    CheckpointStore(run).commit(step, sorted(folder.iterdir()), {})


def test_a_checkpoint_that_does_not_load_is_skipped_like_a_corrupt_one(tmp_path):
    run = RunFolder(open_storage(str(tmp_path / "bucket")), "r")
    good = tmp_path / "good"
    good.mkdir()
    torch.save({"optimizer": {"state": {}}}, good / "optimizer.pt")
    CheckpointStore(run).commit(1, [good / "optimizer.pt"], {})
    marker = tmp_path / "marker"
    plant_payload_checkpoint(run, 2, marker, tmp_path)
    warnings: list[str] = []
    manifest, folder = CheckpointStore(run).fetch_latest(tmp_path / "resume", warnings.append)
    assert manifest["step"] == 1 and sha256_file(folder / "optimizer.pt") == sha256_file(good / "optimizer.pt")
    assert not marker.exists()
    assert len(warnings) == 1 and "step 2" in warnings[0] and "optimizer.pt" in warnings[0], warnings
    assert not any(s in w for w in warnings for s in NEVER_SAY)
    with pytest.raises(ValueError, match="optimizer.pt") as refused:  # fetching it by name (best) refuses too
        CheckpointStore(run).fetch(CheckpointStore(run).manifests()[-1], tmp_path / "best")
    assert not any(s in str(refused.value) for s in NEVER_SAY) and not marker.exists()


def tiny_spec(tmp_path: Path, *overrides: str):
    return load_spec(SMALL_SPEC, ["data.num_patients=100", "data.max_seq_len=24", "train.batch_size=8",
                                  "train.eval_every=0", f"runtime.work_dir={tmp_path}/w", "name=r",
                                  f"storage.uri=file://{tmp_path}/bucket", *overrides])


@pytest.mark.slow
def test_a_run_resumes_past_a_checkpoint_that_does_not_load(tmp_path):
    spec = tiny_spec(tmp_path, "train.max_steps=2")
    assert run_job(spec, Console(quiet=True)) == 0
    run = RunFolder(open_storage(str(tmp_path / "bucket")), "r")
    marker = tmp_path / "marker"
    plant_payload_checkpoint(run, 3, marker, tmp_path, like=tmp_path / "bucket" / "r" / checkpoint_dir(2))
    console = Console(record=True, width=1000, file=io.StringIO())
    spec.train.max_steps = 4
    assert run_job(spec, console) == 0
    said = console.export_text()
    assert "checkpoint at step 3 is unusable (optimizer.pt" in said and "from step 2" in said, said
    assert not marker.exists() and not any(s in said for s in NEVER_SAY)
    status = json.loads((tmp_path / "bucket" / "r" / "status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == 4


def test_committing_and_pruning_leaves_no_empty_folders(tmp_path):
    run = RunFolder(open_storage(str(tmp_path / "bucket")), "r")
    store = CheckpointStore(run)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    for step in range(1, 7):
        store.commit(step, [weights], {})
        store.prune(keep_last=2)
    run.put_text(f"{checkpoint_dir(7)}/w.bin", "abandoned before its manifest")  # a killed upload
    store.commit(8, [weights], {})
    store.prune(keep_last=2)
    checkpoints = tmp_path / "bucket" / "r" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [Path(checkpoint_dir(s)).name for s in (6, 8)]
    assert [p for p in (tmp_path / "bucket").rglob("*") if p.is_dir() and not any(p.iterdir())] == []


def test_pull_from_a_folder_skips_symlinks_in_the_run_and_reading_one_is_refused(tmp_path):
    storage = open_storage(f"file://{tmp_path}/bucket")
    run = RunFolder(storage, "r")
    run.put_text("summary.json", "{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("a file outside the bucket")
    (tmp_path / "bucket" / "r" / "SUMMARY.md").symlink_to(secret)
    (tmp_path / "bucket" / "r" / "plots").symlink_to(tmp_path, target_is_directory=True)
    assert [p.name for p in pull(run, tmp_path / "dest", "all")] == ["summary.json"]
    assert sorted(p.name for p in (tmp_path / "dest").rglob("*")) == ["summary.json"]
    for key in ("r/SUMMARY.md", "r/plots/secret.txt"):
        with pytest.raises(InputError, match="is a symlink"):
            storage.get_bytes(key)


@pytest.mark.slow
def test_manifests_missing_required_files_or_naming_another_step_are_skipped(tmp_path):
    """Issue 28 item 4: a newest manifest listing no files, one without optimizer.pt, and a copy of step 2
    whose manifest claims step 999999999 are each skipped with a warning; the run resumes from step 2."""
    spec = tiny_spec(tmp_path, "train.max_steps=2")
    assert run_job(spec, Console(quiet=True)) == 0
    checkpoints = tmp_path / "bucket" / "r" / "checkpoints"
    good = checkpoints / "step-000000002"
    manifest = json.loads((good / "manifest.json").read_text())

    def plant(step: int, drop: tuple[str, ...] = (), no_files: bool = False) -> None:
        folder = checkpoints / f"step-{step:09d}"
        folder.mkdir()
        files = {} if no_files else {k: v for k, v in manifest["files"].items() if k not in drop}
        for name in files:
            (folder / name).write_bytes((good / name).read_bytes())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "step": step, "files": files}))

    plant(3, no_files=True)
    plant(5, drop=("optimizer.pt",))
    plant(999999999)
    console = Console(record=True, width=1000, file=io.StringIO())
    spec.train.max_steps = 4
    assert run_job(spec, console) == 0
    said = console.export_text()
    assert "step 999999999 is unusable (its trainer.json is at step 2, its manifest says 999999999)" in said, said
    assert "step 5 is unusable (its manifest does not list optimizer.pt)" in said, said
    assert "step 3 is unusable (its manifest does not list model.safetensors, optimizer.pt" in said, said
    assert "from step 2 " in said and "Traceback" not in said
    status = json.loads((tmp_path / "bucket" / "r" / "status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == 4


@pytest.mark.slow
def test_a_forged_high_step_never_becomes_the_durable_step_nor_takes_a_kept_slot(tmp_path, monkeypatch):
    """Issue 28 remainder: step 2 copied to step 999999999 with its manifest edited (checksums all match). The
    resumed run never reports it as its durable step, keeps it (named in a warning) without counting it against
    keep_last, so its own newest checkpoint survives pruning and the next resume starts there."""
    spec = tiny_spec(tmp_path, "train.max_steps=2", "checkpoint.keep_last=1")
    assert run_job(spec, Console(quiet=True)) == 0
    checkpoints = tmp_path / "bucket" / "r" / "checkpoints"
    forged = checkpoints / checkpoint_dir(999999999).split("/")[1]
    shutil.copytree(checkpoints / checkpoint_dir(2).split("/")[1], forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    (forged / "manifest.json").write_text(json.dumps({**manifest, "step": 999999999}))
    reported: list[int] = []
    set_status = Syncer.set_status

    def recording(self, state=None, **fields):
        if "durable_step" in fields:
            reported.append(fields["durable_step"])
        set_status(self, state, **fields)

    monkeypatch.setattr(Syncer, "set_status", recording)
    spec.train.max_steps = 4
    assert run_job(spec, Console(quiet=True)) == 0
    assert 999999999 not in reported and reported[-1] == 4, reported
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000000004", forged.name]
    console = Console(record=True, width=1000, file=io.StringIO())
    spec.train.max_steps = 5
    assert run_job(spec, console) == 0
    said = console.export_text()
    assert "step 999999999 is unusable" in said and "from step 4 " in said, said
    assert json.loads((tmp_path / "bucket" / "r" / "status.json").read_text())["durable_step"] == 5
