"""Supervised examples streamed shard by shard: each label row becomes a patient of its own, for the token cache.

The per-patient reference the tests keep (tests/support/reference_splits.py) cuts the whole MEDS table at every label's
prediction time and builds a Patient per example. Here the same cut runs on one shard's arrays
at a time: a subject's rows are repeated once per label row of that subject, the rows at or after its
prediction time dropped (static rows kept), and the example's id (its row in the label table) takes the place
of the subject id, so ehrseq.data.stream's `histories` and `encode` tokenise examples exactly as they do
patients. Examples without an event before their time, or whose subject is in no split or not in the data,
are left out and counted by the rules of ehrseq.data.labels (LabelReport).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import meds
import numpy as np
import pyarrow as pa

from ehrseq.data.labels import LabelReport
from ehrseq.data.stream import Shard, SplitTable


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """lo[0]..hi[0]-1, lo[1]..hi[1]-1, ... concatenated."""
    n = hi - lo
    return np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


@dataclass
class ExampleLabels:
    """The label rows of a task (example id = row), with what the shards have shown about each so far."""

    subject: np.ndarray  # (L,) int64
    time: np.ndarray  # (L,) int64 microseconds: the prediction time
    split: np.ndarray  # (L,) int8 the subject's split code (stream.SPLITS), -1 for none
    in_data: np.ndarray  # (L,) bool: the subject has rows in a shard seen so far
    has_history: np.ndarray  # (L,) bool: an event (not birth, not static) before the prediction time
    order: np.ndarray  # (L,) label rows by subject, then row (example id order)

    @classmethod
    def of(cls, labels: pa.Table, splits: SplitTable) -> ExampleLabels:
        subject = labels.column("subject_id").cast(pa.int64()).to_numpy()
        time = labels.column("prediction_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
        return cls(subject, time, splits.of(subject), np.zeros(len(subject), bool), np.zeros(len(subject), bool),
                   np.argsort(subject, kind="stable"))

    def cut(self, shard: Shard) -> tuple[Shard, SplitTable]:
        """The shard's rows as examples (subject = example id), and the split of each example that has history
        (-1, dropped by `histories`, for the others)."""
        order, by_subject = self.order, self.subject[self.order]
        lo = np.searchsorted(by_subject, shard.subject, "left")  # (R,) each row's label rows: order[lo:hi]
        hi = np.searchsorted(by_subject, shard.subject, "right")
        row = np.repeat(np.arange(len(shard.subject)), hi - lo)  # each row once per label row of its subject
        example = order[_ranges(lo, hi)]
        self.in_data[example] = True
        keep = ~shard.has_time[row] | (shard.time[row] < self.time[example])  # strictly before, or static
        row, example = row[keep], example[keep]
        cut = replace(shard, subject=example, time=shard.time[row], has_time=shard.has_time[row],
                      code=shard.code[row], value=None if shard.value is None else shard.value[row])
        event = cut.has_time & (cut.code != (shard.names.index(meds.birth_code) if meds.birth_code in shard.names
                                             else -1))
        self.has_history[example[event]] = True
        ids = np.unique(example)
        split = np.where(self.has_history[ids], self.split[ids], -1).astype(np.int8)
        return cut, SplitTable(ids, split, shard.path)

    def report(self, report: LabelReport) -> LabelReport:
        """`report` (the rows read and duplicates) completed with what the shards showed: the rows dropped, by
        rule, and the examples and subjects kept."""
        split = self.split >= 0
        usable = self.in_data & split & self.has_history
        return replace(report, absent_subjects=int((~self.in_data).sum()),
                       unsplit_subjects=int((self.in_data & ~split).sum()),
                       no_history=int((self.in_data & split & ~self.has_history).sum()),
                       examples=int(usable.sum()), subjects=len(np.unique(self.subject[usable])))
