"""Next-visit prediction: from the history before a visit, the codes that visit records (multi-label BCE).

The model scores every vocabulary code (special tokens excluded: column j is vocabulary id num_special + j).
Codes of the target visit outside the vocabulary ([UNK]) cannot be predicted and are not part of the target.
Batches carry subject ids and targets are looked up by them, so the Trainer, checkpoints and resume stay the
same as for the other tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ehrseq.data.batching import Batch
from ehrseq.data.supervised import NextVisitSplit
from ehrseq.data.vocab import Vocabulary
from ehrseq.evaluation.next_visit import NextVisitPredictions
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.tasks.supervised import score_subjects


class NextVisitTask:
    """`splits` are every split the trainer will see; `vocab` fixes the columns (its codes, in order)."""

    name = "next_visit"

    def __init__(self, vocab: Vocabulary, splits: Iterable[NextVisitSplit]) -> None:
        self.codes = vocab.itos[vocab.num_special:]
        self.rows: dict[int, tuple[np.datetime64, np.ndarray]] = {}  # subject -> (prediction time, target columns)
        for split in splits:
            for sid, t, codes in zip(split.subject_ids.tolist(), split.prediction_times, split.next_codes,
                                     strict=True):
                ids = [vocab.encode(c) for c in codes]
                self.rows[sid] = (t, np.array([i - vocab.num_special for i in ids if i >= vocab.num_special], np.int64))

    @property
    def num_outputs(self) -> int:
        return len(self.codes)

    def targets(self, subject_ids: Iterable[int]) -> np.ndarray:
        """(B, num_outputs) bool: the codes of each subject's next visit."""
        subject_ids = list(subject_ids)
        out = np.zeros((len(subject_ids), self.num_outputs), dtype=bool)
        for i, sid in enumerate(subject_ids):
            out[i, self.rows[sid][1]] = True
        return out

    def _logits(self, model: BEHRTForPrediction, b: Batch) -> torch.Tensor:
        return model(b.codes, b.ages, b.segments, b.positions, b.attention_mask).float().reshape(len(b.codes), -1)

    def training_loss(self, model: BEHRTForPrediction, batch: Batch, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        """Binary cross-entropy averaged over subjects and codes (what the `bce` figure reports)."""
        logits = self._logits(model, batch.to(device))
        targets = torch.from_numpy(self.targets(batch.subject_ids.tolist())).to(device)
        return F.binary_cross_entropy_with_logits(logits, targets.float())

    def evaluate(self, model: BEHRTForPrediction, batches: Iterable[Batch], device: torch.device, seed: int,
                 should_stop: Callable[[], bool] = lambda: False) -> NextVisitPredictions | None:
        """Scores every subject; None if `should_stop()` turned true mid-way."""
        scored = score_subjects(model, batches, device, should_stop,
                                lambda b: torch.sigmoid(self._logits(model, b)))
        if scored is None:
            return None
        subject_ids, probabilities = scored
        times = np.array([self.rows[int(s)][0] for s in subject_ids], dtype="datetime64[us]")
        return NextVisitPredictions(subject_ids, times, self.codes, self.targets(subject_ids.tolist()), probabilities)
