"""MLM runs read against a code-frequency (unigram) predictor scored on the same masked tokens."""

import math

import numpy as np
import pytest
import torch

from ehrseq.data.masking import IGNORE_INDEX, mask_codes
from ehrseq.data.vocab import Vocabulary
from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq.reports.summary import unigram_sentence
from ehrseq.tasks.mlm import MLMTask

from support.reference_batches import collate
from support.reference_histories import EncodedPatient

COUNTS = {"A": 50, "B": 30, "C": 12, "D": 5, "E": 3}  # the training split's code counts


def patients(n: int = 24) -> list[EncodedPatient]:
    rng = np.random.default_rng(3)
    vocab = Vocabulary(COUNTS)
    out = []
    for i in range(n):
        visits = int(rng.integers(2, 6))
        codes, positions = [Vocabulary.CLS], [0]
        for v in range(visits):
            k = int(rng.integers(1, 4))
            codes += [vocab.encode(c) for c in rng.choice(list("ABCDE"), k)] + [Vocabulary.SEP]
            positions += [v] * (k + 1)
        out.append(EncodedPatient(100 + i, codes, [400 + p for p in positions], [p % 2 for p in positions], positions))
    return out


def test_unigram_figures_are_those_of_code_frequencies_on_the_same_masked_tokens():
    vocab, people = Vocabulary(COUNTS), patients()
    task = MLMTask(vocab, mask_prob=0.4)
    torch.manual_seed(0)
    model = BEHRTForMLM(BEHRTConfig.small(vocab_size=len(vocab)))
    batches = [collate(people[i:i + 8]) for i in range(0, len(people), 8)]
    result = task.evaluate(model, iter(batches), torch.device("cpu"), seed=11)

    # directly: the same masks (seed 11, batch after batch), shares of COUNTS, the most frequent code as the guess
    generator, total = torch.Generator().manual_seed(11), sum(COUNTS.values())
    nll, hits, model_nll, per_subject = [], [], [], {}
    model.eval()
    for batch in batches:
        inputs, labels = mask_codes(batch.codes, mask_id=Vocabulary.MASK, num_special=vocab.num_special,
                                    vocab_size=len(vocab), generator=generator, mask_prob=0.4)
        with torch.no_grad():
            _, logits = model(inputs, batch.ages, batch.segments, batch.positions, batch.attention_mask, labels)
        targets = labels[labels != IGNORE_INDEX]
        model_nll += torch.nn.functional.cross_entropy(logits, targets, reduction="none").tolist()
        for subject, row in zip(batch.subject_ids.tolist(), labels, strict=True):
            codes = [vocab.decode(t) for t in row[row != IGNORE_INDEX].tolist()]
            per_subject[subject] = sum(-math.log(COUNTS[c] / total) for c in codes)
            nll += [-math.log(COUNTS[c] / total) for c in codes]
            hits += [c == "A" for c in codes]

    assert int(result.count.sum()) == len(nll) > 20
    metrics = result.metrics()
    assert metrics["mlm_unigram_loss"] == pytest.approx(np.mean(nll))
    assert metrics["mlm_unigram_accuracy"] == pytest.approx(np.mean(hits))
    assert metrics["mlm_unigram_perplexity"] == pytest.approx(math.exp(np.mean(nll)))
    assert metrics["mlm_loss"] == pytest.approx(np.mean(model_nll), rel=1e-5)  # the model's on those same tokens
    assert dict(zip(result.subject_ids.tolist(), result.unigram_nll_sum, strict=True)) == pytest.approx(per_subject)
    # an untrained model knows less than frequencies: its loss is above the unigram's (near log of the vocabulary)
    assert metrics["mlm_loss"] > metrics["mlm_unigram_loss"]
    half = np.arange(len(result.subject_ids)) < 12  # a resample of subjects pools only their tokens
    assert result.metrics(np.flatnonzero(half))["mlm_unigram_loss"] == pytest.approx(
        result.unigram_nll_sum[half].sum() / result.count[half].sum())


def test_the_summary_reads_the_model_against_the_unigram():
    metrics = {"mlm_loss": 2.0, "mlm_accuracy": 0.4, "perplexity": math.exp(2.0), "mlm_unigram_loss": 3.5,
               "mlm_unigram_accuracy": 0.1, "mlm_unigram_perplexity": math.exp(3.5)}
    text = unigram_sentence(metrics)
    assert "perplexity 33.1 and accuracy 0.1000" in text and "the model is 1.500 nats per token better" in text
    assert "worse" in unigram_sentence({**metrics, "mlm_loss": 4.0})
    assert unigram_sentence({"auroc": 0.7}) == ""
