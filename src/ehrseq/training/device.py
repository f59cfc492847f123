"""Device choice: `auto` prefers CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from ehrseq.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("train.device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)
