"""Med2Vec: code and visit representations learned from co-occurrence (Choi et al., KDD 2016).

Two levels, trained together:

- **Code level**: within a visit, each code predicts the others (skip-gram). The code vectors are
  ReLU(W_c) rows, on both sides of the pair as in the authors' code, so they are non-negative and each
  coordinate reads as a soft "concept" a code belongs to. The paper normalises p(c_j | c_i) with a full
  softmax over every code; we use **negative sampling** instead (Mikolov et al., 2013): per code pair,
  -log σ(w_i·w_j + β) plus, for k noise codes drawn from the unigram^0.75 distribution, -log σ(-(w_i·w_n + β)).
  No (pairs × vocabulary) matrix per batch. The softmax is shift-invariant and the sigmoid is not: with
  non-negative vectors every score is >= 0, and the noise terms alone would shrink all vectors to zero, so a
  learned offset β, started at -log k (where positive and noise pulls balance), stands in for the normaliser.
- **Visit level**: a visit's codes x_t give u_t = ReLU(W_c x_t + b_c); demographics d_t (age / 120 years and
  log1p(months since the previous visit), the continuous time BEHRT also reads) are concatenated and
  v_t = ReLU(W_v [u_t; d_t] + b_v). Static codes (sex, ...) are the time-invariant part of the paper's
  demographics: they are kept out of the visits and pooled the same way, u_s = ReLU(W_c x_s + b_c), which the
  downstream head reads beside the visits. v_t predicts, with a
  softmax over codes, every code of the visits within ±w of it (the paper's first cross-entropy term; its
  (1 - x)·log(1 - ŷ) term is left out).

The input is the same `(B, T)` token batch BEHRT reads (`[CLS] static codes v1 codes [SEP] v2 codes [SEP] ...`,
visit index as position, static codes in STATIC_SEGMENT): special tokens and [UNK] are skipped, tokens are pooled
into visits by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ehrseq.data.tokenize import MAX_AGE_MONTHS, STATIC_SEGMENT


@dataclass
class Med2VecConfig:
    vocab_size: int
    code_size: int = 64  # m: code representation
    visit_size: int = 64  # n: visit representation
    window: int = 3  # w: a visit predicts the codes of the w visits either side
    num_negatives: int = 5  # k: noise codes per code pair (code level)
    num_special: int = 5  # token ids below this ([PAD] [CLS] [SEP] [MASK] [UNK]) are not codes
    recency_months: float = 12.0  # downstream: visit weight exp(-months before the last visit / this)
    dropout: float = 0.1  # downstream: on the patient representation

    @classmethod
    def preset(cls, size: str, vocab_size: int, **kw) -> Med2VecConfig:
        """small / medium / large: code and visit sizes 64 / 128 / 256; paper: the authors' defaults (200)."""
        sizes = {"small": 64, "medium": 128, "large": 256, "paper": 200}
        if size not in sizes:
            raise ValueError(f"unknown Med2Vec size {size!r}; choose one of {sorted(sizes)}")
        return cls(vocab_size, **{"code_size": sizes[size], "visit_size": sizes[size], **kw})


@dataclass
class Visits:
    """A batch pooled into visits; P is the most visits of any patient in the batch."""

    vectors: torch.Tensor  # (B, P, n) visit representations v_t
    mask: torch.Tensor  # (B, P) bool, True for visits holding at least one known code
    ages: torch.Tensor  # (B, P) long, months
    static: torch.Tensor  # (B, m) u_s: the pooled static codes (ReLU(b_c) when a patient has none)


class Med2Vec(nn.Module):
    """The encoder: `(codes, ages, segments, positions, attention_mask)` (B, T) -> Visits (B, P, n)."""

    def __init__(self, config: Med2VecConfig) -> None:
        super().__init__()
        self.config = config
        self.code = nn.Embedding(config.vocab_size, config.code_size)  # W_c, one row per code
        self.code_bias = nn.Parameter(torch.zeros(config.code_size))  # b_c
        self.visit = nn.Linear(config.code_size + 2, config.visit_size)  # W_v over [u_t; age; log1p(gap)]
        nn.init.uniform_(self.code.weight, -0.1, 0.1)

    def code_vectors(self) -> torch.Tensor:
        """ReLU(W_c): the non-negative code representations, (V, m)."""
        return F.relu(self.code.weight)

    def forward(self, codes, ages, segments, positions, attention_mask) -> Visits:  # (B, T) each
        B = codes.shape[0]
        m = self.config.code_size
        known = visit_codes(codes, segments, attention_mask, self.config.num_special)  # (B, T)
        P = int(positions[known].max()) + 1 if known.any() else 1
        index = positions.clamp(0, P - 1)  # (B, T)
        embedded = self.code(codes)  # (B, T, m)
        x = embedded * known[..., None]  # (B, T, m)
        u = torch.zeros(B, P, m, dtype=x.dtype, device=x.device).scatter_add_(1, index[..., None].expand(B, -1, m), x)
        u = F.relu(u + self.code_bias)  # (B, P, m)  u_t = ReLU(W_c x_t + b_c)
        is_static = attention_mask.bool() & (segments == STATIC_SEGMENT) & (codes >= self.config.num_special)
        static = F.relu((embedded * is_static[..., None]).sum(1) + self.code_bias)  # (B, m) u_s
        mask = torch.zeros(B, P, dtype=torch.long, device=codes.device).scatter_add_(1, index, known.long()) > 0
        visit_ages = torch.zeros(B, P, dtype=torch.long, device=codes.device).scatter_reduce_(
            1, index, ages * known, "amax")  # (B, P); every token of a visit carries its age
        gap = (visit_ages[:, 1:] - visit_ages[:, :-1]).clamp(min=0)  # (B, P-1) months from the previous visit
        gap = torch.cat([torch.zeros_like(gap[:, :1]), gap], dim=1).to(x.dtype)  # (B, P)
        demographics = torch.stack([visit_ages.to(x.dtype) / MAX_AGE_MONTHS, torch.log1p(gap)], dim=-1)  # (B, P, 2)
        v = F.relu(self.visit(torch.cat([u, demographics], dim=-1)))  # (B, P, n)
        return Visits(v, mask, visit_ages, static)


def visit_codes(codes, segments, attention_mask, num_special: int) -> torch.Tensor:
    """(B, T) bool: the tokens that are codes of a visit (not special, [UNK], padding or static codes)."""
    return attention_mask.bool() & (codes >= num_special) & (segments != STATIC_SEGMENT)


class Med2VecForPretraining(nn.Module):
    """Med2Vec with its visit-level softmax; `forward` gives each patient's summed losses and their counts.

    The encoder sits at `self.med2vec` so fine-tuning loads its `med2vec.*` weights by name.
    """

    def __init__(self, config: Med2VecConfig) -> None:
        super().__init__()
        self.config = config
        self.med2vec = Med2Vec(config)
        self.visit_head = nn.Linear(config.visit_size, config.vocab_size)  # W_s
        self.pair_bias = nn.Parameter(torch.tensor(-math.log(config.num_negatives)))  # see _code_level

    def forward(self, codes, ages, segments, positions, attention_mask, negatives) -> tuple[torch.Tensor, ...]:
        """negatives (B, T, k): noise codes per token. Returns per patient (B,) each:
        code-level loss sum, code pairs, visit-level loss sum, visit-level targets (visit codes only)."""
        known = visit_codes(codes, segments, attention_mask, self.config.num_special)  # (B, T)
        code_sum, pairs = self._code_level(codes, positions, known, negatives)
        visit_sum, targets = self._visit_level(codes, ages, segments, positions, attention_mask, known)
        return code_sum, pairs, visit_sum, targets

    def _code_level(self, codes, positions, known, negatives):
        # F.embedding, not w[codes]: indexing's backward accumulates in parallel on CPU, in varying order, so
        # two runs (or a run and its resume) would drift apart in the last bits.
        w = self.med2vec.code_vectors()  # (V, m)
        c = F.embedding(codes, w)  # (B, T, m)
        T = codes.shape[1]
        pair = (positions[:, :, None] == positions[:, None, :]) & known[:, :, None] & known[:, None, :]
        pair &= ~torch.eye(T, dtype=torch.bool, device=codes.device)  # (B, T, T): same visit, other code
        context = pair.sum(-1)  # (B, T) context codes per centre code
        positive = -F.logsigmoid(c @ c.transpose(1, 2) + self.pair_bias) * pair  # (B, T, T)
        noise_logits = (c[:, :, None, :] * F.embedding(negatives, w)).sum(-1) + self.pair_bias  # (B, T, k)
        noise = -F.logsigmoid(-noise_logits).sum(-1)  # (B, T)
        return (positive.sum(-1) + noise * context).sum(-1), context.sum(-1)  # each pair gets k noise codes

    def _visit_level(self, codes, ages, segments, positions, attention_mask, known):
        visits = self.med2vec(codes, ages, segments, positions, attention_mask)
        B, P = visits.mask.shape
        V = self.config.vocab_size
        log_p = F.log_softmax(self.visit_head(visits.vectors).float(), dim=-1).reshape(B, P * V)  # (B, P*V)
        total = torch.zeros(B, device=codes.device)
        count = torch.zeros(B, dtype=torch.long, device=codes.device)
        for offset in [j for j in range(-self.config.window, self.config.window + 1) if j]:
            source = positions - offset  # (B, T): the visit that predicts this token's code
            ok = known & (source >= 0) & (source < P)
            source = source.clamp(0, P - 1)
            ok &= visits.mask.gather(1, source)
            total += -(log_p.gather(1, source * V + codes) * ok).sum(-1)  # gather: deterministic backward
            count += ok.sum(-1)
        return total, count


class Med2VecForPrediction(nn.Module):
    """`forward(...)` -> (B,) logits from a recency-weighted mean of the visit vectors beside the pooled static
    codes; with `num_outputs` > 1, (B, num_outputs) (next visit: one per code).

    Same call as BEHRTForPrediction, so the supervised tasks run it unchanged; the encoder sits at
    `self.med2vec`, so a pretraining run's `med2vec.*` weights load by name.
    """

    def __init__(self, config: Med2VecConfig, num_outputs: int = 1) -> None:
        super().__init__()
        self.config = config
        self.med2vec = Med2Vec(config)
        self.dropout = nn.Dropout(config.dropout)
        self.num_outputs = num_outputs
        self.head = nn.Linear(config.visit_size + config.code_size, num_outputs)

    def forward(self, codes, ages, segments, positions, attention_mask) -> torch.Tensor:
        logits = self.head(self.dropout(self.patient(codes, ages, segments, positions, attention_mask)))
        return logits.squeeze(-1) if self.num_outputs == 1 else logits  # (B,) or (B, num_outputs)

    def patient(self, codes, ages, segments, positions, attention_mask) -> torch.Tensor:
        """(B, n + m): visits weighted by exp(-months before the patient's last visit / recency_months), then u_s."""
        visits = self.med2vec(codes, ages, segments, positions, attention_mask)
        ages = visits.ages.masked_fill(~visits.mask, -1)
        months_before = (ages.max(1, keepdim=True).values - ages).to(visits.vectors.dtype)  # (B, P)
        weight = torch.exp(-months_before / self.config.recency_months) * visits.mask  # (B, P)
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        return torch.cat([(weight[..., None] * visits.vectors).sum(1), visits.static], dim=-1)  # (B, n + m)
