"""`checkpoint.local_dir`: a first checkpoint tier on local disk, committed before the upload to storage.

A spot pod's volume disk survives the pod (RunPod keeps `/workspace`), and a local commit takes a fraction
of the grace budget an upload needs. Each checkpoint is written straight into `<local_dir>/<run_id>/
checkpoints/step-N/` and committed there with the same manifest protocol (manifest last); the background
thread then uploads the same files and commits them in storage. Resume takes the newest checkpoint whose files
match their checksums across both tiers (`fetch_newest`); at equal steps the local one, which needs no download.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrseq_runner.checkpoints.store import MANIFEST, CheckpointStore, checkpoint_dir, sha256_file
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.local import LocalStorage
from ehrseq_runner.storage.run_folder import RunFolder


class LocalTier:
    def __init__(self, local_dir: Path, run_id: str, lease: Lease, required: tuple[str, ...] = ()) -> None:
        self.store = CheckpointStore(RunFolder(LocalStorage(local_dir), run_id), required=required)
        self.folder = local_dir / run_id / "checkpoints"  # where the checkpointer writes each step's files
        self.lease = lease

    def commit(self, step: int, files: list[Path], meta: dict[str, Any]) -> None:
        """The files are already in this tier's step folder: only the manifest is written (last)."""
        if self.lease.lost:
            raise self.lease.lost  # a writer whose lease was taken over commits nowhere
        entries = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
        manifest = {"step": step, "files": entries, "committed_at": time.time(), **meta,
                    "fencing": self.lease.fencing}
        self.store.run.put_text(f"{checkpoint_dir(step)}/{MANIFEST}", json.dumps(manifest, indent=2))


    def has(self, step: int) -> bool:
        return self.store.run.storage.exists(self.store.run.key(f"{checkpoint_dir(step)}/{MANIFEST}"))


def fetch_newest(stores: list[CheckpointStore], dest: Path,
                 warn: Callable[[str], None]) -> tuple[dict[str, Any], Path] | None:
    """The newest verified checkpoint across `stores` (earlier ones preferred at equal steps), copied under
    `dest`; an unusable one is skipped with a warning, falling back to the next newest in any tier."""
    candidates = sorted(((m["step"], -tier, m) for tier, store in enumerate(stores) for m in store.manifests(warn)),
                        key=lambda c: c[:2], reverse=True)
    for _, minus_tier, manifest in candidates:
        store = stores[-minus_tier]
        try:
            return manifest, store.fetch(manifest, dest / f"tier-{-minus_tier}")
        except ValueError as e:
            warn(f"{store.run.uri}: {e}; trying the next newest")
    return None
