"""LoRA fine-tuning of BEHRT with peft.

Adapters go on BEHRT's explicit `nn.Linear` layers (attention query/key/value/output, feed-forward
up/down), whose `forward` is called on every step, so the adapters really receive gradients (the
seed project's LoRA wrapped `nn.MultiheadAttention.out_proj`, which PyTorch's fused kernel never calls).
The base weights are frozen; the task head is trained in full. peft is imported lazily: it brings
transformers, several seconds of import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

# BEHRT's Linear layers by their module names (ehrseq.models.behrt SelfAttention and FeedForward).
LORA_TARGETS = ("query", "key", "value", "output", "up", "down")


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input
    targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "output"])
    trained_in_full: list[str] = field(default_factory=lambda: ["head"])  # modules trained without adapters

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets {unknown or self.targets} are not BEHRT Linear layers; "
                             f"choose from {list(LORA_TARGETS)}")


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wraps `model` (BEHRTForPrediction) in a peft model: base frozen, adapters and full modules trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), modules_to_save=list(settings.trained_in_full),
                        bias="none")
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with each adapter folded into its base weight (W + alpha/r * B A)."""
    return model.merge_and_unload()

