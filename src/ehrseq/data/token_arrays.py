"""Encoded patients as flat arrays: the in-memory (or memory-mapped) form of a token cache.

One array per token feature, concatenated over patients, plus `offsets` (P + 1) marking where each patient
starts, as in nanoGPT's `train.bin`: no Python object per patient, so a million patients cost their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ehrseq.data.batching import Batch, collate
from ehrseq.data.tokenize import EncodedPatient

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
    def from_encoded(cls, patients: Sequence[EncodedPatient]) -> TokenArrays:
        lengths = np.array([len(p.codes) for p in patients], np.int64)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)

        def flat(attr: str) -> np.ndarray:
            values = [v for p in patients for v in getattr(p, attr)]
            return np.array(values, DTYPES[attr]) if values else np.zeros(0, DTYPES[attr])

        return cls(flat("codes"), flat("ages"), flat("segments"), flat("positions"), offsets,
                   np.array([p.subject_id for p in patients], np.int64))

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def lengths(self) -> np.ndarray:
        """(P,) tokens per patient."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> EncodedPatient:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return EncodedPatient(int(self.subject_ids[i]), self.codes[a:b].tolist(), self.ages[a:b].tolist(),
                              self.segments[a:b].tolist(), self.positions[a:b].tolist())

    def collate(self, indices: Sequence[int]) -> Batch:
        """The batch of these patients, equal to `batching.collate([self[i] for i in indices])`."""
        return collate([self[i] for i in indices])
