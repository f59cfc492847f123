"""Med2Vec's own self-supervised objective (code-level skip-gram + visit-level context prediction).

Noise codes for negative sampling come from the trainer's per-step generator, on CPU, so a resumed run
draws exactly the noise the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ehrseq.data.batching import Batch
from ehrseq.data.vocab import Vocabulary
from ehrseq.models.med2vec import Med2VecForPretraining

NOISE_POWER = 0.75  # unigram^0.75, as word2vec


@dataclass
class Med2VecEvaluation:
    """Per-subject sums, so metrics and their bootstrap intervals resample subjects."""

    subject_ids: np.ndarray  # (S,)
    code_loss_sum: np.ndarray  # (S,) negative-sampling loss summed over the subject's code pairs
    code_pairs: np.ndarray  # (S,)
    visit_loss_sum: np.ndarray  # (S,) cross-entropy summed over the codes of neighbouring visits
    visit_targets: np.ndarray  # (S,)

    def metrics(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """Pooled metrics over all subjects, or over `rows` (a bootstrap resample)."""
        sel = slice(None) if rows is None else rows
        code = float(self.code_loss_sum[sel].sum()) / max(float(self.code_pairs[sel].sum()), 1.0)
        visit = float(self.visit_loss_sum[sel].sum()) / max(float(self.visit_targets[sel].sum()), 1.0)
        return {"med2vec_loss": code + visit, "code_loss": code, "visit_loss": visit}


class Med2VecTask:
    name = "med2vec"

    def __init__(self, vocab: Vocabulary, num_negatives: int) -> None:
        counts = torch.zeros(len(vocab), dtype=torch.float64)
        counts[vocab.num_special:] = torch.tensor(list(vocab.counts.values()), dtype=torch.float64)
        if not counts.any():
            raise ValueError("Med2Vec needs at least one code in the vocabulary")
        self.noise = counts ** NOISE_POWER  # specials and [UNK] are never drawn
        self.num_negatives = num_negatives

    def _negatives(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        B, T = batch.codes.shape
        draws = torch.multinomial(self.noise, B * T * self.num_negatives, replacement=True, generator=generator)
        return draws.view(B, T, self.num_negatives)  # (B, T, k)

    def _losses(self, model: Med2VecForPretraining, batch: Batch, generator: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, ...]:
        negatives = self._negatives(batch, generator)  # drawn on CPU: identical on every device
        b = batch.to(device)
        return model(b.codes, b.ages, b.segments, b.positions, b.attention_mask, negatives.to(device))

    def training_loss(self, model: Med2VecForPretraining, batch: Batch, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        """Code-level loss per pair plus visit-level loss per target code, as the paper sums the two."""
        code_sum, pairs, visit_sum, targets = self._losses(model, batch, generator, device)
        return code_sum.sum() / pairs.sum().clamp_min(1) + visit_sum.sum() / targets.sum().clamp_min(1)

    @torch.no_grad()
    def evaluate(self, model: Med2VecForPretraining, batches: Iterable[Batch], device: torch.device, seed: int,
                 should_stop: Callable[[], bool] = lambda: False) -> Med2VecEvaluation | None:
        """Noise codes from a fixed seed, so evaluations at different steps compare; None if stopped mid-way."""
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        ids, sums = [], []
        try:
            for batch in batches:
                if should_stop():
                    return None
                ids.append(batch.subject_ids.numpy())
                sums.append([t.double().cpu().numpy() for t in self._losses(model, batch, generator, device)])
        finally:
            model.train(was_training)
        if not ids:
            raise ValueError("evaluation split is empty")
        return Med2VecEvaluation(np.concatenate(ids), *(np.concatenate(column) for column in zip(*sums, strict=True)))
