"""Numeric values (MEDS `numeric_value`: labs, vitals) as quantile-binned tokens, as CEHR-BERT, ESGPT, meds-torch
and CLMBR's vocabulary do: an event `LOINC//2160-0` with a value becomes `LOINC//2160-0//Q3`, the third of that
code's value bins counted from the lowest, so a model reads "creatinine, high" instead of "creatinine measured".

Bins are fitted on the training split only (`BinFitter`): per code, the cut points at the 1/N, ..., (N-1)/N
quantiles of its training values, repeated cut points merged (a code with few distinct values gets fewer bins).
A value on a cut point goes to the bin above it. Events without a value, and codes with no training values,
keep their plain code. The fit streams: each code keeps a bounded sample (the SAMPLE_SIZE rows of lowest hash
priority, a uniform sample that depends on the rows, not on their order or sharding), so memory stays flat in
dataset size and the token cache's streamed fit equals a fit on the whole table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SAMPLE_SIZE = 50_000  # training values kept per code to place its cut points (exact below this many)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def bin_token(code: str, k: int) -> str:
    """The token of `code`'s k-th value bin (1 = lowest)."""
    return f"{code}//Q{k}"


@dataclass(frozen=True)
class NumericBins:
    """Per code, its ascending distinct cut points; `num_bins` the N asked for (a code has at most N bins)."""

    num_bins: int
    edges: dict[str, tuple[float, ...]]

    def to_dict(self) -> dict:
        return {"num_bins": self.num_bins, "edges": {code: list(e) for code, e in sorted(self.edges.items())}}

    @classmethod
    def from_dict(cls, obj: dict) -> NumericBins:
        return cls(int(obj["num_bins"]), {code: tuple(float(x) for x in e) for code, e in obj["edges"].items()})

    def apply(self, names: list[str], code: np.ndarray, value: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Rows of (code index into `names`, value; NaN for none) -> (new names, new code index per row).

        Only names that occur in the result are kept, so the dictionary stays as small as the data."""
        code = np.asarray(code, np.int64)
        width = self.num_bins + 1  # slot 0: the plain code; 1..N: its bins
        has_edges = np.array([name in self.edges for name in names] or [False])
        rows = np.flatnonzero(has_edges[code] & ~np.isnan(value)) if len(code) else np.zeros(0, np.int64)
        k = np.zeros(len(code), np.int64)
        if len(rows):
            order = rows[np.argsort(code[rows], kind="stable")]  # rows grouped by code
            groups = np.flatnonzero(np.r_[True, code[order][1:] != code[order][:-1]])
            for a, b in zip(groups, np.r_[groups[1:], len(order)], strict=True):
                at = order[a:b]
                k[at] = 1 + np.searchsorted(self.edges[names[code[at[0]]]], value[at], side="right")
        key = code * width + k
        used = np.bincount(key, minlength=len(names) * width) > 0
        remap = np.cumsum(used) - 1
        new_names = [names[u // width] if u % width == 0 else bin_token(names[u // width], u % width)
                     for u in np.flatnonzero(used).tolist()]
        return new_names, remap[key]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 hash of each uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.int64).view(np.uint64)


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class BinFitter:
    """Collects training values shard by shard, then places each code's cut points (`result`)."""

    def __init__(self, num_bins: int, sample_size: int = SAMPLE_SIZE) -> None:
        if num_bins < 2:
            raise ValueError(f"numeric bins need at least 2 bins, got {num_bins}")
        self.num_bins, self.sample_size = num_bins, sample_size
        self.names: dict[str, int] = {}  # code -> index into the arrays below
        self.code = np.zeros(0, np.int64)
        self.priority = np.zeros(0, np.uint64)
        self.value = np.zeros(0, np.float64)

    def add(self, names: list[str], code: np.ndarray, value: np.ndarray, subject: np.ndarray) -> None:
        """Training rows: code index into `names`, value (NaN: none) and subject id (for the rows' sampling
        priorities; a subject's equal values of one code share one, which leaves the sample uniform)."""
        rows = np.isfinite(value)  # (an infinite value would make its code's cut points NaN)
        code, value, subject = np.asarray(code)[rows], value[rows], subject[rows]
        if not len(code):
            return
        local = np.array([self.names.setdefault(n, len(self.names)) for n in names], np.int64)[code]
        name_hash = np.array([_name_hash(n) for n in names], np.uint64)[code]
        with np.errstate(over="ignore"):
            priority = _mix(_mix(_bits(subject) * _GOLDEN ^ name_hash) ^ value.view(np.uint64))
        self.code = np.r_[self.code, local]
        self.priority = np.r_[self.priority, priority]
        self.value = np.r_[self.value, value]
        order = np.lexsort((self.value, self.priority, self.code))  # by code, then priority (ties: value)
        first = np.flatnonzero(np.r_[True, self.code[order][1:] != self.code[order][:-1]])
        rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
        keep = order[rank < self.sample_size]
        self.code, self.priority, self.value = self.code[keep], self.priority[keep], self.value[keep]

    def result(self) -> NumericBins:
        names = list(self.names)
        quantiles = np.arange(1, self.num_bins) / self.num_bins
        edges = {}
        for c in np.unique(self.code).tolist():
            edges[names[c]] = tuple(np.unique(np.quantile(self.value[self.code == c], quantiles)).tolist())
        return NumericBins(self.num_bins, edges)


def numeric_values(column: pa.ChunkedArray) -> np.ndarray:
    """MEDS numeric_value (float32) as float64, NaN where null."""
    return pc.fill_null(column.cast(pa.float32()), np.nan).to_numpy().astype(np.float64)
