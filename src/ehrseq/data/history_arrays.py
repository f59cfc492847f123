"""Each patient's whole history as flat arrays, stored in the token cache beside the tokens.

The tokens keep only the most recent visits that fit the model's window; the count baselines, next-visit targets
and the order probe need every visit, its time and the birth date. So the cache also holds, per patient (or
example, cut before its prediction time), the history itself, in nanoGPT's flat style with one `*_offsets`
(P + 1) array per ragged group: visits (their times), events (each visit's distinct codes, with the visit they
belong to) and static codes. Codes are vocabulary ids ([UNK] where a code is outside the vocabulary), `names` the
vocabulary's tokens in id order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_BIRTH = np.iinfo(np.int64).min  # births where the data has no MEDS_BIRTH
# the ragged groups: offsets array -> its per-element arrays and their dtypes
GROUPS = {"visit_offsets": {"visit_times": np.int64},
          "event_offsets": {"event_codes": np.int32, "event_visits": np.int32},
          "static_offsets": {"static_codes": np.int32}}


def ragged_take(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source index of every element of `rows` in order, the offsets of the result) for a ragged array."""
    starts = np.asarray(offsets[rows], np.int64)
    lengths = np.asarray(offsets[rows + 1], np.int64) - starts
    new = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return np.arange(new[-1], dtype=np.int64) + np.repeat(starts - new[:-1], lengths), new


@dataclass(frozen=True)
class HistoryArrays:
    """Patients i = 0..P-1: visits visit_offsets[i]:visit_offsets[i+1], events event_offsets[i]:..., and so on."""

    births: np.ndarray  # (P,) int64 microseconds, NO_BIRTH where unknown
    visit_offsets: np.ndarray  # (P + 1,)
    visit_times: np.ndarray  # (V,) int64 microseconds: each visit's first event, in time order per patient
    event_offsets: np.ndarray  # (P + 1,)
    event_codes: np.ndarray  # (E,) int32 vocabulary ids, each visit's distinct codes in first-seen order
    event_visits: np.ndarray  # (E,) int32 the event's visit, counted within its patient from 0
    static_offsets: np.ndarray  # (P + 1,)
    static_codes: np.ndarray  # (S,) int32 vocabulary ids, sorted by name within a patient
    names: Sequence[str]  # the vocabulary's tokens: names[id]

    def __len__(self) -> int:
        return len(self.births)

    def select(self, rows: Sequence[int] | np.ndarray) -> HistoryArrays:
        """These patients, in this order, as HistoryArrays of their own (copied)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = {"births": np.asarray(self.births[rows])}
        for offsets, arrays in GROUPS.items():
            src, out[offsets] = ragged_take(getattr(self, offsets), rows)
            out |= {name: np.asarray(getattr(self, name))[src] for name in arrays}
        return HistoryArrays(**out, names=self.names)

    def event_rows(self) -> np.ndarray:
        """(E,) the patient of each event."""
        return np.repeat(np.arange(len(self)), np.diff(self.event_offsets))

    def event_times(self) -> np.ndarray:
        """(E,) int64 microseconds: the time of each event's visit."""
        return np.asarray(self.visit_times)[self.visit_offsets[:-1][self.event_rows()] + self.event_visits]

    def static_rows(self) -> np.ndarray:
        """(S,) the patient of each static code."""
        return np.repeat(np.arange(len(self)), np.diff(self.static_offsets))
