"""Padded batches of token rows, and a resumable, seeded epoch order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from ehrseq.seeding import EPOCH_ORDER, derive_seed


@dataclass
class Batch:
    codes: torch.Tensor  # (B, T) long, PAD = 0
    ages: torch.Tensor  # (B, T) long, months
    segments: torch.Tensor  # (B, T) long, 0/1 alternating per visit, 2 on static codes
    positions: torch.Tensor  # (B, T) long, visit index
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    subject_ids: torch.Tensor  # (B,) long

    def to(self, device: torch.device | str) -> Batch:
        non_blocking = torch.device(device).type == "cuda"
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def pin_memory(self) -> Batch:
        """Page-locked copies, so `to("cuda")` runs asynchronously."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_rows(features: Sequence[np.ndarray], starts: np.ndarray, lengths: np.ndarray,
             pad_id: int = 0) -> list[torch.Tensor]:
    """Rows features[k][starts[b]:starts[b] + lengths[b]] padded to the longest, as (B, T) long tensors.

    A single (B, T) gather index from starts/lengths, one fancy-index gather per feature in its stored dtype
    (int8/16/32 read less memory, and memmaps stay untouched), then one widening copy to int64, the dtype the
    model's embeddings take. No per-row loop.
    """
    T = int(lengths.max()) if len(lengths) else 0
    cols = np.arange(T, dtype=np.int64)  # (T,)
    pad = cols >= lengths[:, None]  # (B, T) True past each row's end
    index = starts[:, None] + cols  # (B, T) positions into the flat arrays
    index[pad] = 0  # any in-range position; overwritten with pad_id below (T > 0 implies a non-empty array)
    out = []
    for flat in features:
        rows = np.asarray(flat)[index].astype(np.int64)  # (B, T); asarray: a plain ndarray, even from a memmap
        rows[pad] = pad_id
        out.append(torch.from_numpy(rows))
    return out


def batch_of(codes: torch.Tensor, ages: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor,
             subject_ids: torch.Tensor, pad_id: int = 0) -> Batch:
    """The Batch of padded (B, T) features; the attention mask is every non-PAD code."""
    return Batch(codes=codes, ages=ages, segments=segments, positions=positions,
                 attention_mask=codes != pad_id, subject_ids=subject_ids)


class EpochOrder:
    """Shuffled batches for each epoch, a pure function of (seed, epoch).

    Within each pool of `pool_batches` random batches, patients are grouped by length so a
    batch pads little (histories vary from a few tokens to max_len); the batch order is then
    shuffled. Nothing here has hidden state: a run resumes at (epoch, offset) and sees exactly
    the batches the uninterrupted run would have seen.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool_batches: int = 50) -> None:
        if len(lengths) == 0:  # len(): a numpy array of lengths (TokenArrays.lengths) has no truth value
            raise ValueError("cannot train on an empty split")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = min(batch_size, len(lengths))
        self.seed = seed
        self.pool = pool_batches * self.batch_size
        self._cached: tuple[int, list[torch.Tensor]] | None = None  # (epoch, its batches)
        self.num_batches = len(self._batches(0))

    def __len__(self) -> int:  # batches per epoch (a last partial batch is dropped)
        return self.num_batches

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH_ORDER, epoch))
            perm = torch.randperm(len(self.lengths), generator=g)
            batches: list[torch.Tensor] = []
            for start in range(0, len(perm), self.pool):
                pool = perm[start : start + self.pool]
                pool = pool[torch.argsort(self.lengths[pool], descending=True, stable=True)]
                batches += [b for b in pool.split(self.batch_size) if len(b) == self.batch_size]
            self._cached = (epoch, [batches[i] for i in torch.randperm(len(batches), generator=g)])
        return self._cached[1]

    def batch_indices(self, epoch: int, offset: int) -> list[int]:
        return self._batches(epoch)[offset].tolist()
