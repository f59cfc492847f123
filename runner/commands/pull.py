"""Downloading a run's bundle from storage, refusing keys that would land outside the destination."""

from __future__ import annotations

from pathlib import Path

from rich.progress import Progress

from ehrseq.errors import InputError
from ehrseq_runner.checkpoints.store import CheckpointStore, best_manifest, checkpoint_dir
from ehrseq_runner.storage.lease import LEASE
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.safe_paths import inside

WHAT = ("all", "final", "best", "plots")


def select_keys(run: RunFolder, what: str) -> list[str]:
    """Run-relative names to download: all | final (the bundle, no checkpoints) | best (+ best checkpoint) | plots."""
    if what not in WHAT:
        raise InputError(f"--what {what!r}: choose one of {', '.join(WHAT)}")
    # an S3 console's zero-byte folder markers ('plots/') hold nothing to pull
    names = [k[len(run.key("")):] for k in run.storage.list(run.key("")) if not k.endswith("/")]
    if not names:
        raise InputError(f"{run.uri}: no such run (nothing stored there)")
    folders = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    clash = sorted(folders.intersection(names))
    if clash:  # refused before anything is written, not a FileExistsError halfway through
        raise InputError(f"{run.uri}: {clash[0]!r} is stored both as a file and as a folder ({clash[0]}/...); "
                         "remove one of them, then pull again")
    if what == "all":
        return names
    if what == "plots":
        return [n for n in names if n.startswith("plots/") or n in ("SUMMARY.md", "summary.json")]
    bundle = [n for n in names if not n.startswith("checkpoints/") and n != LEASE]  # the writer's lock: not results
    if what == "final":
        return bundle
    best = best_manifest(CheckpointStore(run).manifests())
    if best is None:
        return bundle
    prefix = checkpoint_dir(best["step"]) + "/"
    return bundle + [n for n in names if n.startswith(prefix)]


def pull(run: RunFolder, dest: Path, what: str = "final") -> list[Path]:
    names = select_keys(run, what)
    targets = [inside(dest, n) for n in names]  # all checked before anything is written
    with Progress(transient=True) as progress:
        task = progress.add_task(f"pulling {run.uri}", total=len(names))
        for name, target in zip(names, targets, strict=True):
            run.storage.get_file(run.key(name), target)
            progress.advance(task)
    return targets
