"""Downloading a run's bundle from storage, refusing keys that would land outside the destination."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from rich.progress import Progress

from ehrseq.errors import InputError
from runner.checkpoints import MANIFEST, best_manifest, checkpoint_dir
from runner.run_folder import RunFolder

WHAT = ("all", "final", "best", "plots")


def select_keys(run: RunFolder, what: str) -> list[str]:
    """Run-relative names to download: all | final (the bundle, no checkpoints) | best (+ best checkpoint) | plots."""
    if what not in WHAT:
        raise InputError(f"--what {what!r}: choose one of {', '.join(WHAT)}")
    names = [k[len(run.key("")):] for k in run.storage.list(run.key(""))]
    if not names:
        raise InputError(f"{run.uri}: no such run (nothing stored there)")
    if what == "all":
        return names
    if what == "plots":
        return [n for n in names if n.startswith("plots/") or n in ("SUMMARY.md", "summary.json")]
    bundle = [n for n in names if not n.startswith("checkpoints/")]
    if what == "final":
        return bundle
    manifests = [json.loads(run.storage.get_bytes(run.key(n))) for n in names if n.endswith(f"/{MANIFEST}")]
    best = best_manifest(manifests)
    if best is None:
        return bundle
    prefix = checkpoint_dir(best["step"]) + "/"
    return bundle + [n for n in names if n.startswith(prefix)]


def safe_destination(dest: Path, name: str) -> Path:
    """dest/name, or InputError if a stored key (absolute, '..') would escape `dest`."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise InputError(f"refusing to write stored key {name!r}: it would escape {dest}")
    target = (dest / pure).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise InputError(f"refusing to write stored key {name!r}: it would escape {dest}")
    return target


def pull(run: RunFolder, dest: Path, what: str = "final") -> list[Path]:
    names = select_keys(run, what)
    targets = [safe_destination(dest, n) for n in names]  # all checked before anything is written
    with Progress(transient=True) as progress:
        task = progress.add_task(f"pulling {run.uri}", total=len(names))
        for name, target in zip(names, targets, strict=True):
            run.storage.get_file(run.key(name), target)
            progress.advance(task)
    return targets
