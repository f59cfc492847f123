"""Device choice: `auto` prefers CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os

import torch

from ehrseq.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda()
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("train.device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return _cuda() if name == "cuda" else torch.device(name)


def _cuda() -> torch.device:
    """Under torchrun each process drives the GPU of its LOCAL_RANK."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
