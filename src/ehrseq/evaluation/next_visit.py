"""Next-visit prediction (multi-label): held-out predictions, their parquet file, and the figures they give.

Each held-out subject has a probability for every vocabulary code and the set of codes its next visit
recorded. The figures:

- `auroc_micro`: AUROC pooled over every (subject, code) pair;
- `auroc_macro`: AUROC per code, averaged over the codes with both classes in the evaluated set;
- `ap_micro`: average precision pooled over every (subject, code) pair;
- `recall_at_10`, `recall_at_20`: share of a subject's true codes among its k highest-scored codes (ties
  broken towards the lower vocabulary index), averaged over subjects with at least one true code;
- `bce`: mean binary cross-entropy per (subject, code), the training objective; lower is better.

AUROC and AP follow scikit-learn's definitions exactly (tied scores count 1/2; AP is the step-wise sum over
distinct thresholds, no interpolation), and the tests hold them to it and to brute-force pair counts. They are
computed here from scores sorted once: a bootstrap resample only changes how many times each subject counts,
so each of the 1,000 resamples re-weights the sorted arrays (integer sums, exact) instead of sorting
S x V scores again, which with scikit-learn takes about a second per resample at 200 subjects and 330 codes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from ehrseq.errors import DataError

RECALL_AT = (10, 20)
CODES_METADATA = b"codes"  # the schema metadata key holding the probability columns' codes (a JSON list)
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] for the cross-entropy


@dataclass(frozen=True)
class _Ranked:
    """Scores sorted descending within each column (all pairs one column for micro), in runs of tied scores."""

    subject: np.ndarray  # (N,) subject row of each sorted entry
    positive: np.ndarray  # (N,) 1.0 where the entry is a true code
    group: np.ndarray  # (N,) id of its run of equal scores within its column, 0..G-1 in sorted order
    group_column: np.ndarray  # (G,) the column of each run, non-decreasing
    num_columns: int

    @classmethod
    def build(cls, targets: np.ndarray, scores: np.ndarray, per_code: bool) -> _Ranked:
        S, V = scores.shape
        column = np.tile(np.arange(V), S) if per_code else np.zeros(S * V, dtype=np.int64)
        flat = scores.ravel()
        order = np.lexsort((-flat, column))
        column, flat = column[order], flat[order]
        starts = np.r_[True, (column[1:] != column[:-1]) | (flat[1:] != flat[:-1])]
        return cls(order // V, targets.ravel()[order].astype(float), np.cumsum(starts) - 1, column[starts],
                   V if per_code else 1)

    def counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted positives and negatives of each run; `weights` (S,) say how often each subject counts."""
        w = weights[self.subject]
        pos = np.bincount(self.group, w * self.positive, minlength=len(self.group_column))
        return pos, np.bincount(self.group, w, minlength=len(self.group_column)) - pos

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """(columns,) AUROC, NaN where a column lacks a class: P(positive above negative) + 1/2 P(tie)."""
        pos, neg = self.counts(weights)
        col = self.group_column
        num_pos = np.bincount(col, pos, minlength=self.num_columns)
        num_neg = np.bincount(col, neg, minlength=self.num_columns)
        neg_at_or_above = np.cumsum(neg) - np.r_[0.0, np.cumsum(num_neg)[:-1]][col]  # within the column
        wins = np.bincount(col, pos * (num_neg[col] - neg_at_or_above + 0.5 * neg), minlength=self.num_columns)
        defined = (num_pos > 0) & (num_neg > 0)
        return np.where(defined, wins / np.where(defined, num_pos * num_neg, 1.0), np.nan)

    def average_precision(self, weights: np.ndarray) -> float:
        """Step-wise AP of a single-column ranking: sum over thresholds of recall gained x precision there."""
        pos, neg = self.counts(weights)
        true_pos, predicted = np.cumsum(pos), np.cumsum(pos + neg)
        if true_pos[-1] == 0:
            return float("nan")
        precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
        return float((pos * precision).sum() / true_pos[-1])


def recall_at_k(targets: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """(S,) share of each subject's true codes among its k highest scores; NaN for a subject with none."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(targets, top, axis=1).sum(axis=1)
    total = targets.sum(axis=1)
    return np.where(total > 0, found / np.maximum(total, 1), np.nan)


@dataclass
class NextVisitPredictions:
    subject_ids: np.ndarray  # (S,) int64
    prediction_times: np.ndarray  # (S,) datetime64[us]: the start of the visit being predicted
    codes: list[str]  # (V,) the vocabulary's codes (vocab.json order): the columns of the arrays below
    targets: np.ndarray  # (S, V) bool: recorded at that visit
    probabilities: np.ndarray  # (S, V) float32

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=bool)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32)  # as stored in the file
        if self.targets.shape != self.probabilities.shape or self.targets.shape[1:] != (len(self.codes),):
            raise ValueError(f"targets {self.targets.shape} and probabilities {self.probabilities.shape} must both "
                             f"be (subjects, {len(self.codes)} codes)")

    @cached_property
    def _micro(self) -> _Ranked:
        return _Ranked.build(self.targets, self.probabilities, per_code=False)

    @cached_property
    def _per_code(self) -> _Ranked:
        return _Ranked.build(self.targets, self.probabilities, per_code=True)

    @cached_property
    def _per_subject(self) -> dict[str, np.ndarray]:
        """Figures that are means over subjects, so a resample only re-weights them."""
        p = np.clip(self.probabilities.astype(float), _EPS, 1 - _EPS)
        out = {f"recall_at_{k}": recall_at_k(self.targets, self.probabilities, k) for k in RECALL_AT}
        out["bce"] = -np.where(self.targets, np.log(p), np.log1p(-p)).mean(axis=1)
        return out

    def metrics(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """The figures over all subjects, or over `rows` (a bootstrap resample, with repeats)."""
        n = len(self.subject_ids)
        weights = np.ones(n) if rows is None else np.bincount(rows, minlength=n).astype(float)
        per_code = self._per_code.auroc(weights)
        out = {"auroc_micro": float(self._micro.auroc(weights)[0]),
               "auroc_macro": float(np.nanmean(per_code)) if not np.isnan(per_code).all() else float("nan"),
               "ap_micro": self._micro.average_precision(weights)}
        for name, values in self._per_subject.items():
            counted = weights * ~np.isnan(values)
            out[name] = float(np.nansum(counted * values) / counted.sum()) if counted.any() else float("nan")
        return out

    def to_table(self) -> pa.Table:
        """`subject_id`, `prediction_time`, `codes` (the true codes) and `predicted_probabilities` (one per
        code, in the order of the JSON list under the schema metadata key `codes`)."""
        S, V = self.probabilities.shape
        codes = np.array(self.codes, dtype=object)
        return pa.table({
            "subject_id": pa.array(self.subject_ids, pa.int64()),
            "prediction_time": pa.array(self.prediction_times.astype("datetime64[us]"), pa.timestamp("us")),
            "codes": pa.array([codes[row].tolist() for row in self.targets], pa.list_(pa.string())),
            "predicted_probabilities": pa.ListArray.from_arrays(
                pa.array(np.arange(S + 1, dtype=np.int32) * V), pa.array(self.probabilities.ravel(), pa.float32())),
        }, metadata={CODES_METADATA: json.dumps(self.codes)})

    @classmethod
    def from_table(cls, table: pa.Table) -> NextVisitPredictions:
        metadata = table.schema.metadata or {}
        if CODES_METADATA not in metadata:
            raise DataError("predictions: schema metadata 'codes' (the probability columns' codes) is missing")
        codes = json.loads(metadata[CODES_METADATA])
        probabilities = table["predicted_probabilities"].combine_chunks()
        lengths = probabilities.value_lengths().to_numpy(zero_copy_only=False)
        if (lengths != len(codes)).any():
            raise DataError(f"predicted_probabilities: every row needs {len(codes)} values (one per code), "
                            f"got {sorted(set(lengths.tolist()))}")
        column = {code: j for j, code in enumerate(codes)}
        targets = np.zeros((table.num_rows, len(codes)), dtype=bool)
        for i, row in enumerate(table["codes"].to_pylist()):
            unknown = [c for c in row if c not in column]
            if unknown:
                raise DataError(f"codes: row {i} has {unknown[0]!r}, which is not among the predicted codes")
            targets[i, [column[c] for c in row]] = True
        return cls(table["subject_id"].to_numpy(), table["prediction_time"].to_numpy(), codes, targets,
                   probabilities.flatten().to_numpy().reshape(table.num_rows, len(codes)))
