"""Supervised fine-tuning of BEHRT: binary outcomes (BCE) and survival (Cox partial likelihood).

Batches carry example ids (LabelledSplit.example_ids: a subject may have several prediction times) in the place
of subject ids; labels are looked up from the labelled splits, so the Trainer (and with it checkpoints and
resume) stays the same as for MLM pretraining. Predictions name the subjects again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrseq.data.batching import Batch
from ehrseq.data.supervised import LabelledSplit
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions
from ehrseq.models.prediction import BEHRTForPrediction, cox_partial_nll


class SupervisedTask:
    """`kind` is "binary" or "survival"; `splits` are every labelled split the trainer will see."""

    num_outputs = 1  # one logit per subject: log-odds or log relative hazard

    def __init__(self, kind: str, splits: Iterable[LabelledSplit], horizon: float = 365.0) -> None:
        if kind not in ("binary", "survival"):
            raise ValueError(f"unknown supervised task kind {kind!r}")
        self.name, self.kind, self.horizon = kind, kind, horizon
        self.rows: dict[int, tuple[int, np.datetime64, bool, float]] = {}  # example id -> subject, time, label, days
        for split in splits:
            for row in zip(split.example_ids.tolist(), split.subject_ids.tolist(), split.prediction_times,
                           split.labels, split.times, strict=True):
                self.rows[row[0]] = (row[1], row[2], bool(row[3]), float(row[4]))

    def _targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.rows[e] for e in batch.subject_ids.tolist()]  # (example ids)
        return (torch.tensor([r[2] for r in rows], dtype=torch.bool),
                torch.tensor([r[3] for r in rows], dtype=torch.float32))

    def training_loss(self, model: BEHRTForPrediction, batch: Batch, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        b = batch.to(device)
        logits = model(b.codes, b.ages, b.segments, b.positions, b.attention_mask).float()
        labels, times = (t.to(device) for t in self._targets(batch))
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return cox_partial_nll(logits, times, labels)

    def evaluate(self, model: BEHRTForPrediction, batches: Iterable[Batch], device: torch.device, seed: int,
                 should_stop: Callable[[], bool] = lambda: False) -> BinaryPredictions | SurvivalPredictions | None:
        """Scores every subject; None if `should_stop()` turned true mid-way."""
        scored = score_subjects(model, batches, device, should_stop,
                                lambda b: model(b.codes, b.ages, b.segments, b.positions, b.attention_mask))
        return None if scored is None else self.predictions(scored[0], scored[1].astype(float))

    def predictions(self, example_ids: np.ndarray, logits: np.ndarray) -> BinaryPredictions | SurvivalPredictions:
        """Binary: probability = sigmoid(logit). Survival: the logit is the risk (log relative hazard)."""
        rows = [self.rows[int(e)] for e in example_ids]
        subject_ids = np.array([r[0] for r in rows], dtype=np.int64)
        times = np.array([r[1] for r in rows], dtype="datetime64[us]")
        labels = np.array([r[2] for r in rows], dtype=bool)
        if self.kind == "binary":
            return BinaryPredictions(subject_ids, times, labels, 1.0 / (1.0 + np.exp(-logits)))
        return SurvivalPredictions(subject_ids, times, np.array([r[3] for r in rows]), labels, logits, self.horizon)


@torch.no_grad()
def score_subjects(model: nn.Module, batches: Iterable[Batch], device: torch.device, should_stop: Callable[[], bool],
                   score: Callable[[Batch], torch.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """(subject ids, `score(batch)` stacked) over every batch in eval mode; None if stopped mid-way."""
    was_training = model.training
    model.eval()
    ids, scores = [], []
    try:
        for batch in batches:
            if should_stop():
                return None
            scores.append(score(batch.to(device)).float().cpu().numpy())
            ids.append(batch.subject_ids.numpy())
    finally:
        model.train(was_training)
    if not ids:
        raise ValueError("evaluation split is empty")
    return np.concatenate(ids), np.concatenate(scores)
