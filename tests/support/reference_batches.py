"""Lists of EncodedPatient as the product's TokenArrays and batches, test-only: hand-built inputs for the trainer
and the tasks, and the per-row collation loop that `TokenArrays.collate` is proven equal to."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from ehrseq.data.batching import Batch, batch_of, pad_rows
from ehrseq.data.token_arrays import DTYPES, TokenArrays

from support.reference_histories import EncodedPatient

FEATURES = ("codes", "ages", "segments", "positions")


def flatten(patients: Sequence[EncodedPatient], dtypes: dict[str, type] | None = None,
            ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(offsets (P + 1,), one (N,) array per FEATURES entry, subject_ids (P,)) of these patients.

    int64 unless `dtypes` says otherwise; a value that does not fit raises OverflowError, never wraps.
    """
    dtypes = dtypes or {}
    lengths = np.fromiter((len(p.codes) for p in patients), np.int64, len(patients))  # (P,)
    offsets = np.zeros(len(patients) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arrays = []
    for attr in FEATURES:
        values = [getattr(p, attr) for p in patients]
        if any(len(v) != n for v, n in zip(values, lengths.tolist(), strict=True)):
            raise ValueError(f"{attr} and codes differ in length in a patient")
        arrays.append(np.fromiter(itertools.chain.from_iterable(values), dtypes.get(attr, np.int64),
                                  int(offsets[-1])))  # (N,)
    return offsets, arrays, np.fromiter((p.subject_id for p in patients), np.int64, len(patients))


def token_arrays(patients: Sequence[EncodedPatient]) -> TokenArrays:
    """The patients as TokenArrays in the cache's dtypes (a value that does not fit raises OverflowError)."""
    offsets, (codes, ages, segments, positions), subject_ids = flatten(patients, DTYPES)
    return TokenArrays(codes, ages, segments, positions, offsets, subject_ids)


def row(arrays: TokenArrays, i: int) -> EncodedPatient:
    """Patient `i` of `arrays` (negative counts from the end, as for a list) as an EncodedPatient (lists of ints)."""
    n = len(arrays)
    if not -n <= i < n:
        raise IndexError(f"patient {i} out of range for {n} patients")
    i = i + n if i < 0 else i
    a, b = int(arrays.offsets[i]), int(arrays.offsets[i + 1])
    return EncodedPatient(int(arrays.subject_ids[i]), arrays.codes[a:b].tolist(), arrays.ages[a:b].tolist(),
                          arrays.segments[a:b].tolist(), arrays.positions[a:b].tolist())


def rows(arrays: TokenArrays) -> list[EncodedPatient]:
    """Every patient of `arrays` as an EncodedPatient."""
    return [row(arrays, i) for i in range(len(arrays))]


def collate(patients: Sequence[EncodedPatient], pad_id: int = 0) -> Batch:
    """The batch of these patients, losslessly in int64, through the same `pad_rows` as `TokenArrays.collate`."""
    if not patients:
        raise ValueError("cannot collate an empty batch")
    offsets, arrays, subject_ids = flatten(patients)
    codes, ages, segments, positions = pad_rows(arrays, offsets[:-1], np.diff(offsets), pad_id)
    return batch_of(codes, ages, segments, positions, torch.from_numpy(subject_ids), pad_id)


def collate_rows(patients: Sequence[EncodedPatient], pad_id: int = 0) -> Batch:
    """The original per-row loop (about 1M tokens/s): the reference `collate` and `TokenArrays.collate` equal."""
    T = max(len(p.codes) for p in patients)

    def padded(attr: str) -> torch.Tensor:
        out = torch.full((len(patients), T), pad_id, dtype=torch.long)
        for i, p in enumerate(patients):
            values = getattr(p, attr)
            out[i, : len(values)] = torch.as_tensor(values, dtype=torch.long)
        return out

    codes = padded("codes")
    return Batch(codes=codes, ages=padded("ages"), segments=padded("segments"), positions=padded("positions"),
                 attention_mask=codes != pad_id,
                 subject_ids=torch.tensor([p.subject_id for p in patients], dtype=torch.long))
