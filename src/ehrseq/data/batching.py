"""Padded batches of encoded patients, and a resumable, seeded epoch order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ehrseq.data.tokenize import EncodedPatient
from ehrseq.seeding import EPOCH_ORDER, derive_seed


@dataclass
class Batch:
    codes: torch.Tensor  # (B, T) long, PAD = 0
    ages: torch.Tensor  # (B, T) long, months
    segments: torch.Tensor  # (B, T) long, 0/1 alternating per visit
    positions: torch.Tensor  # (B, T) long, visit index
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    subject_ids: torch.Tensor  # (B,) long

    def to(self, device: torch.device | str) -> Batch:
        non_blocking = torch.device(device).type == "cuda"
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(patients: Sequence[EncodedPatient], pad_id: int = 0) -> Batch:
    """Pads to the longest sequence in the batch (not to max_len): short cohorts train faster."""
    T = max(len(p.codes) for p in patients)

    def padded(attr: str) -> torch.Tensor:
        out = torch.full((len(patients), T), pad_id, dtype=torch.long)
        for i, p in enumerate(patients):
            values = getattr(p, attr)
            out[i, : len(values)] = torch.as_tensor(values, dtype=torch.long)
        return out

    codes = padded("codes")
    return Batch(
        codes=codes,
        ages=padded("ages"),
        segments=padded("segments"),
        positions=padded("positions"),
        attention_mask=codes != pad_id,
        subject_ids=torch.tensor([p.subject_id for p in patients], dtype=torch.long),
    )


class EpochOrder:
    """Shuffled batch order for each epoch, a pure function of (seed, epoch).

    Nothing here has hidden state: a run resumes at (epoch, offset) and sees exactly the
    batches the uninterrupted run would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        if num_items == 0:
            raise ValueError("cannot train on an empty split")
        self.num_items = num_items
        self.batch_size = min(batch_size, num_items)
        self.seed = seed
        self._cached: tuple[int, torch.Tensor] | None = None  # (epoch, permutation)

    def __len__(self) -> int:  # batches per epoch (the last partial batch is dropped)
        return self.num_items // self.batch_size

    def batch_indices(self, epoch: int, offset: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH_ORDER, epoch))
            self._cached = (epoch, torch.randperm(self.num_items, generator=g))
        return self._cached[1][offset * self.batch_size : (offset + 1) * self.batch_size].tolist()
