"""Pretraining never sees a labelled patient's future: the events at or after a prediction time, its outcome least.

A fine-tuned model is evaluated on "k labels"; if its pretraining read the training patients' whole timelines,
it read their outcomes too (the outcome code itself, in every positive example) and k means nothing. So the
data a pretraining reads is one of:

- `cut` (the default): every labelled patient's events strictly before its earliest prediction time, static
  codes kept; unlabelled patients whole;
- `pool`: unlabelled patients only (no labelled patient at all: an unlabelled pool);
- `all`: whole timelines; a fine-tune on the same data refuses such a base unless its spec says so.

"Labelled" means holding a row in any label file the pretraining is given: every task under the dataset's
`labels/` and the `task.labels_path` files, so one pretraining serves every task on them. The same rule applies
to the vocabulary and the numeric value bins fitted during the pretraining, and its identity (mode and the label
files' names, sizes and sha256) is part of the token cache's key and of the run's summary, which a fine-tune
checks (ehrseq_runner.job.pretrained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrseq.data.labels import LABELS_DIR, label_files
from ehrseq.data.meds_io import sha256_of
from ehrseq.data.stream import Shard
from ehrseq.errors import DataError, one_line

MODES = ("cut", "pool", "all")


@dataclass(frozen=True)
class PretrainCut:
    mode: str  # cut | pool | all
    files: tuple[Path, ...]  # the label files whose subjects are "labelled"
    subjects: np.ndarray  # (L,) int64 sorted labelled subjects
    times: np.ndarray  # (L,) int64 microseconds: each one's earliest prediction time

    @classmethod
    def of(cls, mode: str, dataset: Path | None, labels_path: str | Path | None = None,
           task: str | None = None) -> PretrainCut:
        """The labelled patients of every task under `dataset`/labels/ and of `labels_path` (`task` names one
        inside a folder of tasks), with their earliest prediction times."""
        files = sorted((Path(dataset) / LABELS_DIR).glob("**/*.parquet")) if dataset is not None else []
        if labels_path is not None:
            files += label_files(labels_path, task)
        subjects, times = [], []
        for f in files:
            try:
                t = pq.read_table(f, columns=["subject_id", "prediction_time"])
                subjects.append(t.column("subject_id").cast(pa.int64()).to_numpy())
                times.append(t.column("prediction_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy())
            except (pa.ArrowException, OSError, KeyError) as e:
                raise DataError(f"{f}: not a MEDS label file with subject_id and prediction_time "
                                f"({one_line(e)})") from e
        subject, time = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (subjects, times))
        return cls.of_rows(mode, subject, time, tuple(files))

    @classmethod
    def of_rows(cls, mode: str, subject: np.ndarray, time: np.ndarray, files: tuple[Path, ...] = ()) -> PretrainCut:
        """From label rows (subject ids, prediction times in microseconds), any number per subject."""
        order = np.lexsort((time, subject))
        subject, time = subject[order], time[order]
        first = np.r_[True, subject[1:] != subject[:-1]] if len(subject) else np.zeros(0, bool)
        return cls(mode, files, subject[first], time[first])

    def identity(self, root: Path | None = None) -> dict[str, Any]:
        """The mode and each label file's name, size and sha256: what the data a pretraining read depends on."""
        def name(f: Path) -> str:
            return f.relative_to(root).as_posix() if root is not None and f.is_relative_to(root) else f.name
        return {"mode": self.mode, "labels": sorted([name(f), f.stat().st_size, sha256_of(f)] for f in self.files)}

    def keep(self, subject: np.ndarray, time: np.ndarray, has_time: np.ndarray) -> np.ndarray:
        """(R,) bool: which rows pretraining may read."""
        if self.mode == "all" or not len(self.subjects):
            return np.ones(len(subject), bool)
        i = np.minimum(np.searchsorted(self.subjects, subject), len(self.subjects) - 1)
        labelled = self.subjects[i] == subject
        if self.mode == "pool":
            return ~labelled
        return ~labelled | ~has_time | (time < self.times[i])  # strictly before, or static

    def apply(self, shard: Shard) -> Shard:
        """The shard's rows pretraining may read."""
        return shard.rows(self.keep(shard.subject, shard.time, shard.has_time))

    def covers(self, files: list[Path]) -> bool:
        """Whether every one of `files` (a fine-tune's labels) is among the label files this cut used."""
        mine = {sha256_of(f) for f in self.files}
        return all(sha256_of(f) in mine for f in files)
