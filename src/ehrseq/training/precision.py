"""Mixed precision: which dtype to compute in, and the autocast context and grad scaler for it.

`auto` picks bf16 on CUDA where the GPU has it (Ampere and newer: A40, H100), fp16 with a
dynamic loss scale on older GPUs, and fp32 on CPU and Apple MPS, where autocast is slower or
less mature than plain fp32. Any explicit choice is honoured on any device that supports it.
"""

from __future__ import annotations

import contextlib

import torch

from ehrseq.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """`requested` (auto|fp32|bf16|fp16) made concrete for `device`: fp32, bf16 or fp16."""
    if requested not in PRECISIONS:
        raise InputError(f"train.precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if requested == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InputError("train.precision: bf16 requested but this GPU does not support it; use fp16 or auto")
    return requested


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context: autocast to bf16/fp16, or nothing for fp32 (bit-identical to no AMP)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without a loss scale; bf16 has fp32's range and needs none.

    A disabled scaler passes losses and optimizer steps through untouched.
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
