"""BEHRT with a linear head on the [CLS] hidden state: one logit for binary outcomes and survival risk scores,
one per code for next-visit prediction. A linear probe of a frozen pretrained encoder reads the mean of the
token states instead: masked-code pretraining never trains [CLS] to summarise the sequence."""

from __future__ import annotations

import torch
from torch import nn

from ehrseq.models.behrt import BEHRT, BEHRTConfig, init_weights


class BEHRTForPrediction(nn.Module):
    """`forward(...)` -> (B,) logits: log-odds for a binary task, log relative hazard for survival; with
    `num_outputs` > 1, (B, num_outputs) logits (next visit: the log-odds of each code).

    The encoder sits at `self.behrt`, as in BEHRTForMLM, so pretrained `behrt.*` weights load by name.
    """

    def __init__(self, config: BEHRTConfig, num_outputs: int = 1) -> None:
        super().__init__()
        self.config = config
        self.behrt = BEHRT(config)
        self.dropout = nn.Dropout(config.dropout)
        self.num_outputs = num_outputs
        self.head = nn.Linear(config.hidden_size, num_outputs)
        init_weights(self.head)

    def forward(self, codes, ages, segments, positions, attention_mask) -> torch.Tensor:
        h = self.behrt(codes, ages, segments, positions, attention_mask)  # (B, T, C)
        if self.config.pooling == "cls":
            pooled = h[:, 0]  # [CLS] is token 0
        else:
            real = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * real).sum(1) / real.sum(1).clamp(min=1)  # (B, C)
        logits = self.head(self.dropout(pooled))
        return logits.squeeze(-1) if self.num_outputs == 1 else logits


def cox_partial_nll(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow) within a batch, averaged over its events.

    Each event's risk set is everyone in the batch still followed at its time (time >= its time).
    """
    at_risk = times[None, :] >= times[:, None]  # (B, B): row i's risk set
    log_denominator = torch.logsumexp(risk[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    if not events.any():
        return risk.sum() * 0.0  # no event in the batch: no information, keep the graph
    return -(risk - log_denominator)[events].mean()
