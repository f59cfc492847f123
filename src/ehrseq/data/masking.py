"""BERT masking for MLM: 15% of code tokens chosen; of those 80% -> [MASK], 10% -> random code, 10% kept."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label value F.cross_entropy skips


def mask_codes(
    codes: torch.Tensor,  # (B, T) token ids
    *,
    mask_id: int,
    num_special: int,
    vocab_size: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (inputs, labels), both (B, T); labels hold the original id where masked, else -100.

    Only real codes (id >= num_special) are candidates: never PAD, CLS, SEP, MASK or UNK.
    All randomness comes from `generator`, so a step's masks are reproducible from its seed.
    """
    candidates = codes >= num_special
    chosen = (torch.rand(codes.shape, generator=generator) < mask_prob) & candidates
    labels = torch.where(chosen, codes, torch.full_like(codes, IGNORE_INDEX))

    action = torch.rand(codes.shape, generator=generator)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_codes = torch.randint(num_special, vocab_size, codes.shape, generator=generator)

    inputs = torch.where(to_mask, torch.full_like(codes, mask_id), codes)
    inputs = torch.where(to_random, random_codes, inputs)
    return inputs, labels
