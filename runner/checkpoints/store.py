"""Checkpoint commit protocol on any storage: files first, manifest last.

`<run>/checkpoints/step-000001234/` holds the files; it counts only once `manifest.json`
(sizes and SHA-256 of every file) is present. Object stores have no rename, so the manifest
is the commit: a pod killed mid-upload leaves files without a manifest, which every reader
ignores. Pruning deletes the manifest first for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrseq.errors import InputError
from ehrseq_runner.storage.lease import Lease, read_takeovers, zombie_manifest
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.safe_paths import check_name, inside

MANIFEST = "manifest.json"
# what resuming a run loads: ehrseq.training.state's snapshot, then the runner's vocabulary and metrics
RUN_CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "trainer.json", "vocab.json", "metrics.jsonl")


def checkpoint_dir(step: int) -> str:
    return f"checkpoints/step-{step:09d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointDeadline(TimeoutError):
    """The grace budget ran out before the manifest: the checkpoint was not committed."""


class CheckpointStore:
    def __init__(self, run: RunFolder, lease: Lease | None = None, required: tuple[str, ...] = ()) -> None:
        """`required`: the files a usable checkpoint's manifest must list (RUN_CHECKPOINT_FILES for a run's)."""
        self.run = run
        self.lease = lease  # the writer's: each commit is fenced by it (checked, its number in the manifest)
        self.required = required
        # steps whose files failed verification in this process (checksums, required files, their own step): out
        # of this writer's view from then on (newest, durable step, pruning's count, best), their folders kept
        self.unusable: set[int] = set()

    def commit(self, step: int, files: list[Path], meta: dict[str, Any],
               deadline: float | None = None) -> None:
        """Uploads `files`, then the manifest. `deadline` (time.monotonic) is checked before each upload."""
        prefix = checkpoint_dir(step)
        entries = {}
        for path in files:
            if deadline is not None and time.monotonic() > deadline:
                raise CheckpointDeadline(f"step {step}: grace budget spent before {path.name} was uploaded")
            entries[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            self.run.put_file(f"{prefix}/{path.name}", path)
        if deadline is not None and time.monotonic() > deadline:
            raise CheckpointDeadline(f"step {step}: grace budget spent before the manifest")
        if self.lease is not None:
            self.lease.check()  # LeaseLost if taken over: a zombie writer never commits
            meta = {**meta, "fencing": self.lease.fencing}
        manifest = {"step": step, "files": entries, "committed_at": time.time(), **meta}
        self.run.put_text(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2))
        self.unusable.discard(step)  # its files replaced by this commit's

    def manifests(self, warn: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
        """Committed checkpoints, oldest first; a damaged or tampered manifest is no commit (`warn` names it)."""
        out = []
        root = self.run.key("")
        keys = [k for k in self.run.storage.list(self.run.key("checkpoints/")) if k.endswith(f"/{MANIFEST}")]
        takeovers = read_takeovers(self.run) if keys else {}
        for key in keys:
            try:
                manifest = parse_manifest(key[len(root):], self.run.storage.get_bytes(key))
            except FileNotFoundError:
                continue  # pruned meanwhile
            except (ValueError, RecursionError, InputError) as e:
                warn(f"ignoring checkpoint manifest {self.run.storage.uri.rstrip('/')}/{key}: {e}")
                continue
            if manifest["step"] in self.unusable:
                continue
            if zombie_manifest(manifest, takeovers):
                warn(f"ignoring checkpoint {self.run.storage.uri.rstrip('/')}/{key}: committed by a writer whose "
                     f"lease (fencing number {manifest['fencing']}) had been taken over")
                continue
            out.append(manifest)
        return sorted(out, key=lambda m: m["step"])

    def fetch_latest(self, dest: Path, warn: Callable[[str], None]) -> tuple[dict[str, Any], Path] | None:
        """Downloads the newest checkpoint whose files match its manifest; falls back past corrupt ones."""
        for manifest in reversed(self.manifests(warn)):
            try:
                return manifest, self.fetch(manifest, dest)
            except ValueError as e:
                warn(f"{e}; trying the previous one")
        return None

    def fetch(self, manifest: dict[str, Any], dest: Path) -> Path:
        """Downloads one committed checkpoint (e.g. the best) into dest/step-N; ValueError if unusable."""
        folder = dest / f"step-{manifest['step']:09d}"
        shutil.rmtree(folder, ignore_errors=True)
        problem = self._download_verified(manifest, folder)
        if problem is not None:
            shutil.rmtree(folder, ignore_errors=True)
            self.unusable.add(manifest["step"])
            raise ValueError(f"checkpoint at step {manifest['step']} is unusable ({problem})")
        return folder

    def _download_verified(self, manifest: dict[str, Any], folder: Path) -> str | None:
        from ehrseq.training.state import UnreadableCheckpoint, check_readable  # torch: keep `pull` fast

        unlisted = [name for name in self.required if name not in manifest["files"]]
        if unlisted:  # never downloaded, so never checked: a resume would fail on it
            return f"its manifest does not list {', '.join(unlisted)}"
        prefix = checkpoint_dir(manifest["step"])
        for name, entry in manifest["files"].items():
            path = inside(folder, name, "checkpoint file name")  # parse_manifest checked it; symlinks too here
            try:
                self.run.storage.get_file(self.run.key(f"{prefix}/{name}"), path)
            except FileNotFoundError:
                return f"{name} is missing"
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                return f"{name} does not match its checksum"
            try:
                check_readable(path)  # matches its checksum, yet may be a pickle payload: never loaded
            except UnreadableCheckpoint as e:
                return str(e)
        return _step_disagrees(manifest["step"], folder / "trainer.json")

    def prune(self, keep_last: int) -> None:
        """Keeps the newest `keep_last` checkpoints and the best one (see `best_manifest`).

        Also removes uncommitted leftovers of killed uploads, not checkpoints found unusable: their warning named
        them (a forged step would otherwise take a slot of `keep_last` from the run's own newest checkpoints, or
        have a just-committed one pruned). Call it only when no upload is in flight.
        """
        manifests = self.manifests()
        keep = {checkpoint_dir(m["step"]) for m in manifests[-keep_last:]}
        best = best_manifest(manifests)
        if best is not None:
            keep.add(checkpoint_dir(best["step"]))
        root = self.run.key("")
        by_dir: dict[str, list[str]] = {}
        for key in self.run.storage.list(self.run.key("checkpoints/")):
            by_dir.setdefault(key[len(root):].rsplit("/", 1)[0], []).append(key)
        keep |= {checkpoint_dir(step) for step in self.unusable}
        for folder, keys in by_dir.items():
            if folder not in keep:
                keys.sort(key=lambda k: not k.endswith(MANIFEST))  # un-commit first
                for key in keys:
                    self.run.delete(key)


def parse_manifest(name: str, data: bytes) -> dict[str, Any]:
    """A stored manifest checked before it is trusted (its writer may be hostile): its step names the folder
    it sits in, every file name is a plain relative path, sizes and checksums have their types. ValueError
    or UnsafeName otherwise."""
    manifest = json.loads(data)
    step = manifest.get("step") if isinstance(manifest, dict) else None
    if type(step) is not int or step < 0 or name != f"{checkpoint_dir(step)}/{MANIFEST}":
        raise ValueError(f"its step {step!r} does not name its own folder")
    files, tuning = manifest.get("files"), manifest.get("tuning", {})
    if not isinstance(files, dict) or not isinstance(tuning, dict):
        raise ValueError("'files' and 'tuning' must be mappings")
    for file_name, entry in files.items():
        check_name(file_name, "checkpoint file name")
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"file {file_name!r} has no integer size and sha256")
    if not all(isinstance(v, (int, float)) for v in tuning.values()):
        raise ValueError("'tuning' values must be numbers")
    return manifest


def _step_disagrees(step: int, trainer_json: Path) -> str | None:
    """The problem if the checkpoint's own step (trainer.json's train_state) is not its manifest's: a copied or
    renamed checkpoint would resume from a step it never reached. None where there is no trainer.json."""
    if not trainer_json.is_file():
        return None
    trainer = json.loads(trainer_json.read_bytes())  # check_readable parsed it
    state = trainer.get("train_state") if isinstance(trainer, dict) else None
    own = state.get("step") if isinstance(state, dict) else None
    if own != step:
        return f"its trainer.json is at step {own!r}, its manifest says {step}"
    return None


def best_manifest(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The checkpoint of the best tuning evaluation, as the newest manifest names it (`best_step`), if any."""
    best_step = manifests[-1].get("best_step") if manifests else None
    return next((m for m in manifests if m["step"] == best_step), None)
