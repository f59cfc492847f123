"""Proof that save/restore is exact: N steps straight vs the same N steps through a checkpoint."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ehrseq.training.state import capture, load_snapshot, set_rng_state
from ehrseq.training.trainer import Callback, Trainer


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def on_record(self, record: dict[str, Any]) -> None:
        if record["split"] == "train":
            self.losses.append((record["step"], record["loss"]))


def parameter_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class ResumeCheck:
    steps: int
    split_at: int
    straight_losses: list[tuple[int, float]]
    resumed_losses: list[tuple[int, float]]
    straight_hash: str
    resumed_hash: str

    @property
    def losses_match(self) -> bool:
        return self.straight_losses == self.resumed_losses  # exact float equality, by design

    @property
    def parameters_match(self) -> bool:
        return self.straight_hash == self.resumed_hash


def verify_resume(make_trainer: Callable[[], Trainer], split_at: int | None = None) -> ResumeCheck:
    """`make_trainer()` must build a fresh, identically seeded trainer each call; N is its max_steps.

    Straight: steps 1..N. Resumed: 1..k, snapshot written to disk, a fresh trainer loads it
    (through the same files a pod would download) and runs k+1..N. The training-record losses of
    both must be equal bit for bit, and so must the final parameters.
    """
    straight, straight_log = make_trainer(), _Losses()
    steps = straight.config.max_steps
    split_at = split_at or max(1, steps // 2)
    straight.callbacks = [straight_log]
    straight.fit()

    first, log = make_trainer(), _Losses()
    first.callbacks = [log]
    first.should_stop = lambda: first.state.step >= split_at  # a preemption, not a shorter run
    first.fit()
    with tempfile.TemporaryDirectory() as tmp:
        capture(first.state_dict(), split_at, {}, {}).write(Path(tmp))
        snapshot = load_snapshot(Path(tmp), first.device)
    second = make_trainer()
    second.load_state_dict(snapshot)
    set_rng_state(snapshot["rng"])
    second.callbacks = [log]
    second.fit()
    return ResumeCheck(steps, split_at, straight_log.losses, log.losses, parameter_hash(straight.model),
                       parameter_hash(second.model))
