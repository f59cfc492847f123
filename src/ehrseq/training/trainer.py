"""The training loop: AdamW, warm-up/decay, clipping, periodic logs and tuning evaluations.

Every random draw of step `s` (masks, dropout) comes from a seed derived from (seed, s), and
the batch order from (seed, epoch). With the state below saved, a resumed run repeats the
uninterrupted run's losses bit for bit on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ehrseq.data.batching import Batch, EpochOrder, collate
from ehrseq.data.tokenize import EncodedPatient
from ehrseq.seeding import EVALUATION, TRAIN_STEP, derive_seed
from ehrseq.training.optim import build_optimizer, warmup_linear_decay
from ehrseq.training.state import load_trainable_state_dict, trainable_state_dict


@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global gradient norm
    log_every: int = 10  # steps per training record (the loss is the window's mean)
    eval_every: int = 500  # steps between tuning evaluations; 0 = only at the end
    eval_batch_size: int = 64
    seed: int = 0


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    offset: int = 0  # batches of `epoch` already consumed
    window_loss: float = 0.0  # summed loss of the steps since the last training record
    window_steps: int = 0
    eval_pending: bool = False  # a tuning evaluation was interrupted: run it first on resume


class Task(Protocol):
    name: str

    def training_loss(self, model: nn.Module, batch: Batch, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches: Iterator[Batch], device: torch.device, seed: int,
                 should_stop: Callable[[], bool]) -> Any: ...


class Callback:
    """Hooks the runner plugs in (metrics file, progress bar, checkpoints); both default to no-ops."""

    def on_record(self, record: dict[str, Any]) -> None:
        """A training or evaluation record (what metrics.jsonl holds)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step: a safe point to checkpoint."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_set: Sequence[EncodedPatient],
        tuning_set: Sequence[EncodedPatient],
        config: TrainConfig,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model.to(device)
        self.task = task
        self.train_set = train_set
        self.tuning_set = tuning_set
        self.config = config
        self.device = device
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        self.order = EpochOrder([len(p.codes) for p in train_set], config.batch_size, config.seed)
        self.optimizer = build_optimizer(model, config.lr, config.weight_decay)
        self.scheduler = warmup_linear_decay(self.optimizer, config.warmup_steps, config.max_steps)
        self.state = TrainState()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> bool:
        """Trains until `max_steps`; returns False if stopped early by `should_stop`."""
        cfg, st = self.config, self.state
        self.model.train()
        if st.eval_pending and not self._tuning_evaluation():
            return False
        window_start, window_tokens = time.perf_counter(), 0
        while st.step < cfg.max_steps:
            if self.should_stop():
                return False
            batch = collate([self.train_set[i] for i in self.order.batch_indices(st.epoch, st.offset)])
            step_seed = derive_seed(cfg.seed, TRAIN_STEP, st.step)
            torch.manual_seed(step_seed)  # dropout
            loss = self.task.training_loss(self.model, batch, torch.Generator().manual_seed(step_seed),
                                           self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()

            st.step += 1
            st.offset += 1
            if st.offset == len(self.order):
                st.epoch, st.offset = st.epoch + 1, 0
            st.window_loss += loss.item()
            st.window_steps += 1
            window_tokens += batch.num_tokens

            if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                seconds = time.perf_counter() - window_start
                self._emit({"step": st.step, "split": "train", "loss": st.window_loss / st.window_steps,
                            "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                            "epoch": st.epoch, "tokens_per_s": window_tokens / max(seconds, 1e-9),
                            "seconds_per_step": seconds / st.window_steps})
                st.window_loss, st.window_steps = 0.0, 0
                window_start, window_tokens = time.perf_counter(), 0

            if (cfg.eval_every and st.step % cfg.eval_every == 0) or st.step == cfg.max_steps:
                st.eval_pending = True
                if not self._tuning_evaluation():
                    return False
                window_start = time.perf_counter()  # throughput excludes evaluation time
            for cb in self.callbacks:
                cb.on_step_end(self)
        return True

    def _tuning_evaluation(self) -> bool:
        result = self.evaluate(self.tuning_set)
        if result is None:
            return False
        self.state.eval_pending = False
        self._emit({"step": self.state.step, "split": "tuning", **result.metrics()})
        return True

    def evaluate(self, patients: Sequence[EncodedPatient]) -> Any:
        """The task's evaluation on `patients` (fixed masks); None if stopped mid-way."""
        size = self.config.eval_batch_size
        batches = (collate(patients[i : i + size]) for i in range(0, len(patients), size))
        return self.task.evaluate(self.model, batches, self.device,
                                  derive_seed(self.config.seed, EVALUATION), self.should_stop)

    def _emit(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        for cb in self.callbacks:
            cb.on_record(record)

    # -- state for checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Frozen parameters (a LoRA run's base) are left out: they come from the base checkpoint."""
        return {"model": trainable_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "train_state": asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(**state["train_state"])
