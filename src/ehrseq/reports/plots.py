"""Training-curve plots from metrics records (what metrics.jsonl holds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless pods and CI
import matplotlib.pyplot as plt  # noqa: E402


def _series(records: Sequence[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_loss(records: Sequence[dict[str, Any]], path: Path, title: str,
              tuning_key: str = "mlm_loss") -> Path:
    """Training loss (window means) and tuning loss on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    steps, loss = _series(records, "train", "loss")
    ax.plot(steps, loss, label="train (window mean)", color="tab:blue", linewidth=1.2)
    steps, tuning = _series(records, "tuning", tuning_key)
    if steps:
        ax.plot(steps, tuning, "o-", label=f"tuning ({tuning_key})", color="tab:orange", linewidth=1.5)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_lr_throughput(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Learning-rate schedule and training throughput over steps."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=120)
    steps, lr = _series(records, "train", "lr")
    ax1.plot(steps, lr, color="tab:green")
    ax1.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    steps, tps = _series(records, "train", "tokens_per_s")
    ax2.plot(steps, tps, color="tab:purple")
    ax2.set(xlabel="optimizer step", ylabel="tokens / second", title="Throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
