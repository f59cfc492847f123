"""Resume, one decision for every rank: rank 0 picks the checkpoint once, across both tiers (checkpoint.local_dir
first, then storage), and every other rank restores exactly that step.

Each rank choosing on its own could disagree after a preemption: the local tier can hold a newer checkpoint than
storage (the final one committed locally while the upload missed the grace budget), and a rank reading only
storage would start from an older step than rank 0, training different steps in lockstep collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ehrseq.training import distributed
from ehrseq.training.state import load_snapshot, set_rng_state
from ehrseq.training.trainer import Trainer
from ehrseq_runner.checkpoints.local_tier import fetch_newest
from ehrseq_runner.checkpoints.store import CheckpointStore


def fetch_resume_checkpoint(tiers: list[CheckpointStore], dest: Path,
                            warn: Callable[[str], None]) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint every rank resumes from, copied under `dest`: rank 0's choice (`fetch_newest` over `tiers`,
    earlier tiers preferred at equal steps); None for a fresh start on every rank."""
    picked = fetch_newest(tiers, dest, warn=warn) if distributed.rank() == 0 else None
    step = distributed.from_rank_zero(picked[0]["step"] if picked else None)
    if picked is not None or step is None:
        return picked
    return fetch_step(tiers, step, dest, warn)


def fetch_step(tiers: list[CheckpointStore], step: int, dest: Path,
               warn: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    """Checkpoint `step` from the first tier holding a verified copy; RuntimeError when none does (the ranks
    would otherwise train from different states)."""
    for tier, store in enumerate(tiers):
        for manifest in store.manifests(warn):
            if manifest["step"] == step:
                try:
                    return manifest, store.fetch(manifest, dest / f"tier-{tier}")
                except ValueError as e:
                    warn(f"{store.run.uri}: {e}")
    raise RuntimeError(f"rank {distributed.rank()}: no tier holds a verified copy of step {step}, the checkpoint "
                       "rank 0 resumes from")


def resume_snapshot(tiers: list[CheckpointStore], dest: Path, device: torch.device,
                    warn: Callable[[str], None]) -> tuple[dict[str, Any], Path, dict[str, Any]] | None:
    """(manifest, folder, snapshot) of the checkpoint every rank resumes from (rank 0's choice),
    copied under `dest`; None for a fresh start."""
    resumed = fetch_resume_checkpoint(tiers, dest, warn=warn)
    if resumed is None:
        return None
    manifest, folder = resumed
    return manifest, folder, load_snapshot(folder, device)


def restore(trainer: Trainer, snapshot: dict[str, Any]) -> None:
    """The trainer (weights, optimizer, schedule, step) and the RNGs as the snapshot left them."""
    trainer.load_state_dict(snapshot)
    set_rng_state(snapshot["rng"])
