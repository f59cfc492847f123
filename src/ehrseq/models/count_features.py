"""Hand-made count features of a patient's history at its prediction time: what the count baselines see.

Per visit code (columns fixed on the training split), any of: the number of visits holding it (`count`), the
sum over those visits of exp(-days before the prediction time / RECENCY_DAYS) (`recency`: a recent diagnosis
weighs more than an old one, which also leaks some order), the days since its last and since its first
occurrence (`days_since_last`, `days_since_first`; NaN when never seen: for trees, which route missing values),
and the visits holding it within the last 30 and 365 days (`count_30d`, `count_365d`). With `count` (all
time) these are MEDS-Tab's standard per-code aggregates: first and last times and windowed counts see the order
of two codes' onsets, so a control whose order only a sequence reveals must hide it from all of them. Then one
0/1 column per static code (sex, ...) and the age at the prediction time in decades (0 when the birth date is
unknown).

Built with numpy over all (visit, code) pairs at once, from the whole histories the token cache stores beside
the tokens (ehrseq.data.history_arrays), so a million patients need no Python object each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehrseq.data.history_arrays import NO_BIRTH, HistoryArrays
from ehrseq.data.vocab import Vocabulary

RECENCY_DAYS = 365.0
WINDOWS = {"count_30d": 30.0, "count_365d": 365.0}  # windowed counts: visits within this many days before
KINDS = ("count", "recency", "days_since_last", "days_since_first", *WINDOWS)
FULL_STRENGTH = KINDS  # what the strongest count baseline (gbm) sees
_DAY_US = 86_400 * 1_000_000
_DESCRIPTIONS = {
    "count": "counts of {n} codes (visits holding each)",
    "recency": f"recency-weighted counts of {{n}} codes (each visit weighs exp(-days before / {RECENCY_DAYS:.0f}))",
    "days_since_last": "days since the last occurrence of {n} codes (missing if never)",
    "days_since_first": "days since the first occurrence of {n} codes (missing if never)",
    **{kind: f"counts of {{n}} codes within the last {days:.0f} days" for kind, days in WINDOWS.items()},
}


def code_index(rows: np.ndarray, codes: np.ndarray, names: list[str], min_count: int = 1,
               max_codes: int | None = None) -> dict[str, int]:
    """Codes held by at least `min_count` patients, most frequent first (ties by code), as feature columns.

    `rows` (N,) and `codes` (N,) are each occurrence's patient and vocabulary id; [UNK] and the other special
    tokens are never a column."""
    ids = np.asarray(codes, np.int64)
    known = ids >= len(Vocabulary.SPECIALS)
    held = np.bincount(np.unique(rows[known] * len(names) + ids[known]) % len(names), minlength=len(names))
    counts = [(-int(held[i]), names[i]) for i in np.flatnonzero((held >= min_count) & (held > 0))]
    return {code: i for i, (_, code) in enumerate(sorted(counts)[:max_codes])}


@dataclass(frozen=True)
class CountFeatures:
    """The feature layout, fixed on the training split: `kinds` blocks over `codes`, then `static`, then age."""

    codes: dict[str, int]  # visit code -> column within each kind's block
    static: dict[str, int]  # static code -> column within the static block
    kinds: tuple[str, ...] = ("recency",)
    age: bool = True

    @classmethod
    def fit(cls, histories: HistoryArrays, kinds: tuple[str, ...] = ("recency",), age: bool = True,
            min_count: int = 1, max_codes: int | None = None) -> CountFeatures:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"feature kinds {kinds!r}: choose from {KINDS}")
        names = list(histories.names)
        codes = code_index(histories.event_rows(), histories.event_codes, names, min_count, max_codes)
        return cls(codes, code_index(histories.static_rows(), histories.static_codes, names, min_count),
                   tuple(kinds), age)

    @property
    def width(self) -> int:
        return len(self.kinds) * len(self.codes) + len(self.static) + int(self.age)

    def describe(self) -> list[str]:
        """The hand-made features in words, for summary.json and SUMMARY.md."""
        out = [_DESCRIPTIONS[kind].format(n=len(self.codes)) for kind in self.kinds]
        if self.static:
            out.append(f"{len(self.static)} static codes, one 0/1 column each ({', '.join(self.static)})")
        if self.age:
            out.append("age at the prediction time in decades")
        return out

    def names(self) -> list[str]:
        """One name per column, in order."""
        return ([f"{kind}:{code}" for kind in self.kinds for code in self.codes]
                + [f"static:{code}" for code in self.static] + (["age_decades"] if self.age else []))

    def matrix(self, histories: HistoryArrays, prediction_times: np.ndarray) -> np.ndarray:
        """(S, width) float32, one row per patient; histories must already end before their prediction time."""
        S, V = len(histories), len(self.codes)
        t_us = prediction_times.astype("datetime64[us]").astype(np.int64)  # (S,)
        column = np.array([self.codes.get(n, -1) for n in histories.names], np.int64)[histories.event_codes]  # (E,)
        known = column >= 0
        row = histories.event_rows()[known]  # (M,) one entry per (visit, code) with a column
        days = (t_us[row] - histories.event_times()[known]) / _DAY_US  # (M,) days before prediction
        cell = row * V + column[known]
        blocks = []
        for kind in self.kinds:
            if kind == "count":
                block = np.bincount(cell, minlength=S * V)
            elif kind == "recency":
                block = np.bincount(cell, weights=np.exp(-days / RECENCY_DAYS), minlength=S * V)
            elif kind in WINDOWS:
                block = np.bincount(cell, weights=(days < WINDOWS[kind]).astype(float), minlength=S * V)
            else:  # days since the last (fewest days) or first (most days) occurrence
                last = kind == "days_since_last"
                block = np.full(S * V, np.inf if last else -np.inf)
                (np.minimum if last else np.maximum).at(block, cell, days)
                block[np.isinf(block)] = np.nan
            blocks.append(block.reshape(S, V).astype(np.float32))
        static = np.zeros((S, len(self.static)), np.float32)
        column = np.array([self.static.get(n, -1) for n in histories.names], np.int64)[histories.static_codes]
        static[histories.static_rows()[column >= 0], column[column >= 0]] = 1.0
        blocks.append(static)
        if self.age:
            births = np.asarray(histories.births)
            decades = np.where(births != NO_BIRTH, (t_us - births) / _DAY_US / 3652.5, 0.0)
            blocks.append(decades.astype(np.float32)[:, None])
        return np.concatenate(blocks, axis=1)
