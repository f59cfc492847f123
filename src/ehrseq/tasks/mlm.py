"""Masked-language-model pretraining: loss for a batch, and held-out loss/accuracy/perplexity.

Beside the model's figures, those of a code-frequency (unigram) predictor on the same masked tokens: it predicts
each masked code with its share of the training split's codes, whatever the context, so the gap between the two
is what the model learned from context (a perplexity of 43 reads differently next to a unigram 300 than next to 45).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ehrseq.data.batching import Batch
from ehrseq.data.masking import IGNORE_INDEX, mask_codes
from ehrseq.data.vocab import Vocabulary
from ehrseq.models.behrt import BEHRTForMLM


@dataclass
class MLMEvaluation:
    """Per-subject sums, so metrics and their bootstrap intervals resample subjects, not tokens."""

    subject_ids: np.ndarray  # (S,)
    nll_sum: np.ndarray  # (S,) summed cross-entropy over the subject's masked tokens
    correct: np.ndarray  # (S,) masked tokens predicted exactly
    count: np.ndarray  # (S,) masked tokens
    unigram_nll_sum: np.ndarray  # (S,) the same for the unigram predictor, on the same masked tokens
    unigram_correct: np.ndarray  # (S,)

    def metrics(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """Pooled metrics over all subjects, or over `rows` (a bootstrap resample)."""
        sel = slice(None) if rows is None else rows
        n = max(float(self.count[sel].sum()), 1.0)
        loss, unigram = float(self.nll_sum[sel].sum()) / n, float(self.unigram_nll_sum[sel].sum()) / n
        return {"mlm_loss": loss, "mlm_accuracy": float(self.correct[sel].sum()) / n,
                "perplexity": float(np.exp(min(loss, 50.0))),
                "mlm_unigram_loss": unigram, "mlm_unigram_accuracy": float(self.unigram_correct[sel].sum()) / n,
                "mlm_unigram_perplexity": float(np.exp(min(unigram, 50.0)))}


class MLMTask:
    name = "mlm"

    def __init__(self, vocab: Vocabulary, mask_prob: float = 0.15) -> None:
        self.vocab = vocab
        self.mask_prob = mask_prob
        counts = torch.tensor([0] * vocab.num_special + list(vocab.counts.values()), dtype=torch.float64)
        self.unigram_log_probs = (counts / counts.sum()).log()  # (V,) training-split shares; -inf on specials

    def _mask(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_codes(batch.codes, mask_id=Vocabulary.MASK, num_special=self.vocab.num_special,
                          vocab_size=len(self.vocab), generator=generator, mask_prob=self.mask_prob)

    def training_loss(self, model: BEHRTForMLM, batch: Batch, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        inputs, labels = self._mask(batch, generator)  # masks drawn on CPU: identical on every device
        b = batch.to(device)
        loss, _ = model(inputs.to(device), b.ages, b.segments, b.positions, b.attention_mask,
                        labels.to(device))
        return loss

    @torch.no_grad()
    def evaluate(self, model: BEHRTForMLM, batches: Iterable[Batch], device: torch.device, seed: int,
                 should_stop: Callable[[], bool] = lambda: False) -> MLMEvaluation | None:
        """Held-out masks are drawn from a fixed seed, so evaluations at different steps compare.

        Returns None if `should_stop()` turned true mid-way (a preemption during evaluation).
        """
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        ids, nll, correct, count, unigram_nll, unigram_correct = [], [], [], [], [], []
        most_frequent = int(self.unigram_log_probs.argmax())  # the unigram predictor's guess for every token
        try:
            for batch in batches:
                if should_stop():
                    return None
                inputs, labels = self._mask(batch, generator)
                b = batch.to(device)
                h = model.behrt(inputs.to(device), b.ages, b.segments, b.positions, b.attention_mask)
                selected = labels != IGNORE_INDEX  # (B, T) on CPU
                logits = model.head(h[selected.to(device)]).float()  # (N, V)
                targets = labels[selected].to(device)
                token_nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none").cpu()
                token_hit = (logits.argmax(-1) == targets).cpu().double()
                row = selected.nonzero()[:, 0]  # batch row of each masked token
                B = len(batch.subject_ids)
                ids.append(batch.subject_ids.numpy())
                nll.append(per_subject(token_nll, row, B))
                correct.append(per_subject(token_hit, row, B))
                count.append(torch.bincount(row, minlength=B).numpy())
                unigram_nll.append(per_subject(-self.unigram_log_probs[labels[selected]], row, B))
                unigram_correct.append(per_subject(labels[selected] == most_frequent, row, B))
        finally:
            model.train(was_training)
        if not ids:
            raise ValueError("evaluation split is empty")
        return MLMEvaluation(*(np.concatenate(a) for a in (ids, nll, correct, count, unigram_nll, unigram_correct)))


def per_subject(values: torch.Tensor, row: torch.Tensor, B: int) -> np.ndarray:
    """(N,) figures of the masked tokens, `row` (N,) their batch rows -> (B,) float64 sums per row."""
    return torch.zeros(B, dtype=torch.float64).index_add_(0, row, values.double()).numpy()
