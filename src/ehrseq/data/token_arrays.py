"""Encoded patients as flat arrays: the in-memory (or memory-mapped) form of a token cache.

One array per token feature, concatenated over patients, plus `offsets` (P + 1) marking where each patient
starts, as in nanoGPT's `train.bin`: no Python object per patient, so a million patients cost their bytes.
`collate` gathers a batch straight from these arrays (no per-patient objects, no per-row loop), which is
what the trainer uses; `select` takes a subset of patients (a split) as another TokenArrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ehrseq.data.batching import Batch, batch_of, pad_rows
from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.stream import encode, histories_of
from ehrseq.data.vocab import Vocabulary

DTYPES = {"codes": np.int32, "ages": np.int16, "segments": np.int8, "positions": np.int16}


@dataclass(frozen=True)
class TokenArrays:
    """Patients i = 0..P-1 own tokens offsets[i]:offsets[i+1] of each feature array."""

    codes: np.ndarray  # (N,) vocabulary ids
    ages: np.ndarray  # (N,) months
    segments: np.ndarray  # (N,) 0/1 per visit, 2 on static codes
    positions: np.ndarray  # (N,) visit index
    offsets: np.ndarray  # (P + 1,) int64, offsets[0] == 0, offsets[-1] == N
    subject_ids: np.ndarray  # (P,) int64

    @classmethod
    def encode(cls, histories: HistoryArrays, ids: np.ndarray, vocab: Vocabulary, max_len: int) -> TokenArrays:
        """Whole histories tokenised as the token cache tokenises them (the order probe's edited copies)."""
        t = encode(histories_of(histories, ids), vocab, max_len)
        return cls(t.codes, t.ages, t.segments, t.positions, np.r_[0, np.cumsum(t.lengths)].astype(np.int64),
                   t.subjects)

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def lengths(self) -> np.ndarray:
        """(P,) tokens per patient."""
        return np.diff(self.offsets)

    def _positions(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B,) int64 patient indices, negatives wrapped, all checked in range."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"patient index out of range for {n} patients")
        return np.where(idx < 0, idx + n, idx)

    def collate(self, indices: Sequence[int] | np.ndarray, pad_id: int = 0) -> Batch:
        """The batch of these patients (any order, repeats allowed), padded to the longest, gathered straight from the
        flat arrays (tests/support/reference_batches.py keeps the per-row loop it equals)."""
        idx = self._positions(indices)  # (B,)
        if len(idx) == 0:
            raise ValueError("cannot collate an empty batch")
        starts = np.asarray(self.offsets[idx], dtype=np.int64)  # (B,)
        lengths = np.asarray(self.offsets[idx + 1], dtype=np.int64) - starts  # (B,)
        codes, ages, segments, positions = pad_rows([self.codes, self.ages, self.segments, self.positions],
                                                    starts, lengths, pad_id)
        subject_ids = torch.from_numpy(np.asarray(self.subject_ids[idx], dtype=np.int64))  # (B,)
        return batch_of(codes, ages, segments, positions, subject_ids, pad_id)

    def select(self, indices: Sequence[int] | np.ndarray | slice) -> TokenArrays:
        """These patients as a TokenArrays of their own (a split of a cache), patient k being patient indices[k] here.

        A slice with step 1 (e.g. `ta.select(slice(0, 1000))`) is a view: no token is copied, memmaps stay
        memmaps. Any other selection copies the selected patients' tokens into fresh in-memory arrays.
        """
        if isinstance(indices, slice):
            start, stop, step = indices.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                a, b = int(self.offsets[start]), int(self.offsets[stop])
                offsets = np.asarray(self.offsets[start : stop + 1], dtype=np.int64) - a
                return TokenArrays(self.codes[a:b], self.ages[a:b], self.segments[a:b], self.positions[a:b],
                                   offsets, self.subject_ids[start:stop])
            indices = range(start, stop, step)
        idx = self._positions(indices)  # (P',)
        starts = np.asarray(self.offsets[idx], dtype=np.int64)
        lengths = np.asarray(self.offsets[idx + 1], dtype=np.int64) - starts
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)  # (P' + 1,)
        # flat gather index: token j of selected patient k sits at starts[k] + j
        src = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)  # (N',)
        return TokenArrays(*(np.asarray(f)[src] for f in (self.codes, self.ages, self.segments, self.positions)),
                           offsets, np.asarray(self.subject_ids[idx], dtype=np.int64))
