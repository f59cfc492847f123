"""The training loop: AdamW, warm-up/decay, clipping, periodic logs and tuning evaluations.

Every random draw of step `s` (masks, dropout) comes from a seed derived from (seed, s), and
the batch order from (seed, epoch). With the state below saved, a resumed run repeats the
uninterrupted run's losses bit for bit on CPU.

An optimizer step takes one batch of `batch_size` patients. With `grad_accum_steps` k > 1 the
batch (length-sorted) is cut into k contiguous micro-batches, run one after another with their
gradients summed; each micro-batch's loss is weighted 1/k, so the step's gradient and loss are
the mean of the micro-batches' (exactly the full batch's for per-patient losses such as binary
cross-entropy; for MLM, whose loss is a mean over masked tokens, the micro-batches weigh equally
rather than by their masked-token counts). Each micro-batch draws its masks and dropout from its
own seed. The logged `loss` is the mean of the step losses since the last record.

Each tuning evaluation is compared with the best so far on `monitor` (e.g. AUROC, higher is better); the
state keeps the best step, so the runner can score held-out with that step's checkpointed weights, and with
`patience` set training stops after that many evaluations in a row without improvement. Being part of the
checkpointed state, a resumed run stops at the same step as an uninterrupted one.

Under torchrun (ehrseq.training.distributed) the model is wrapped in DistributedDataParallel and the
batch is cut into (processes x grad_accum_steps) parts; each process takes every world-size-th part, so
all get similar lengths. Stop requests are agreed across processes each step, so all stop at the same one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ehrseq.data.batching import Batch, EpochOrder
from ehrseq.data.token_arrays import TokenArrays
from ehrseq.seeding import EVALUATION, TRAIN_STEP, derive_seed
from ehrseq.training import distributed
from ehrseq.training.optim import build_optimizer, warmup_linear_decay
from ehrseq.training.precision import autocast, grad_scaler, resolve_precision
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
    precision: str = "auto"  # auto|fp32|bf16|fp16 (ehrseq.training.precision)
    grad_accum_steps: int = 1  # micro-batches per optimizer step; batch_size is the whole step's batch
    compile: bool = False  # torch.compile the model (speed only: same math)
    monitor: str | None = None  # tuning metric that picks the best evaluation (a key of the task's metrics)
    higher_is_better: bool = False  # True for AUROC / C-index, False for losses
    patience: int | None = None  # evaluations in a row without improvement before stopping; None: never stop
    min_steps: int = 0  # patience never stops the run before this step (ehrseq.training.length)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    offset: int = 0  # batches of `epoch` already consumed
    window_loss: float = 0.0  # summed loss of the steps since the last training record
    window_steps: int = 0
    eval_pending: bool = False  # a tuning evaluation was interrupted: run it first on resume
    best_value: float | None = None  # best tuning `monitor` value so far
    best_step: int | None = None  # the step it was measured at
    evals_since_best: int = 0
    stopped_early: bool = False  # patience ran out before max_steps

    @property
    def underfit(self) -> bool:
        """The best tuning evaluation is the last one: the run ended still improving, so a longer one might do
        better (a flag for the summary, not a verdict)."""
        return self.best_step is not None and self.best_step == self.step


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
        train_set: TokenArrays,
        tuning_set: TokenArrays,
        config: TrainConfig,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model.to(device)
        self.task = task
        # every step and tuning evaluation gathers its batch from the flat arrays: no per-patient objects
        self.train_set = train_set
        self.tuning_set = tuning_set
        self.config = config
        self.device = device
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        self.order = EpochOrder(np.asarray(self.train_set.lengths), config.batch_size, config.seed)
        self.optimizer = build_optimizer(model, config.lr, config.weight_decay)
        self.scheduler = warmup_linear_decay(self.optimizer, config.warmup_steps, config.max_steps)
        self.state = TrainState()
        self.precision = resolve_precision(config.precision, device)
        self.scaler = grad_scaler(self.precision, device)
        self._pending_losses: list[torch.Tensor] = []  # step losses not yet added to the window (on device)
        if config.compile:
            self.model.compile()  # in place: parameter names, and so checkpoints, stay the same
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        # training steps go through the DDP wrapper (gradients averaged across processes); `model` stays the
        # plain module for evaluation and checkpoints
        self.train_model = self.model if self.world_size == 1 else DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> bool:
        """Trains until `max_steps` or patience runs out; returns False if stopped by `should_stop`."""
        cfg, st = self.config, self.state
        self.model.train()
        if st.eval_pending and not self._tuning_evaluation():
            return False
        window_start, window_tokens = time.perf_counter(), 0
        while st.step < cfg.max_steps and not st.stopped_early:
            if self._stop_requested():
                return False
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            parts = self.micro_batches(st.step, self.order.batch_indices(st.epoch, st.offset))
            for j, (seed, indices) in enumerate(parts):
                batch = self.train_set.collate(indices)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()  # lets the copy to the GPU overlap with compute
                torch.manual_seed(seed)  # dropout
                with self._gradient_sync(last=j == len(parts) - 1):
                    with autocast(self.precision, self.device):
                        loss = self.task.training_loss(self.train_model, batch,
                                                       torch.Generator().manual_seed(seed),
                                                       self.device) / cfg.grad_accum_steps
                    self.scaler.scale(loss).backward()
                step_loss += loss.detach()
                window_tokens += batch.num_tokens
            if self.world_size > 1:
                step_loss = distributed.sum_over_ranks(step_loss) / self.world_size
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)  # fp16: skipped when a gradient overflowed
            self.scaler.update()
            self.scheduler.step()

            st.step += 1
            st.offset += 1
            if st.offset == len(self.order):
                st.epoch, st.offset = st.epoch + 1, 0
            self._pending_losses.append(step_loss)  # no .item() here: the GPU runs ahead of the host
            st.window_steps += 1
            if len(self._pending_losses) >= 100:
                self._fold_losses()

            if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                self._fold_losses()
                window_tokens = int(distributed.sum_over_ranks(torch.tensor(window_tokens)))
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

    def micro_batches(self, step: int, indices: list[int]) -> list[tuple[int, list[int]]]:
        """This process's parts of the step's batch, each with its seed (masks, dropout).

        The batch is cut into grad_accum_steps x world_size contiguous (similar-length) parts; this process
        takes every world_size-th. A single part keeps the step's own seed, so a single-process run without
        accumulation draws what it always did.
        """
        k = self.config.grad_accum_steps * self.world_size
        step_seed = derive_seed(self.config.seed, TRAIN_STEP, step)
        n = len(indices)
        return [(step_seed if k == 1 else derive_seed(step_seed, TRAIN_STEP, j), indices[j * n // k:(j + 1) * n // k])
                for j in range(self.rank, k, self.world_size)]

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP averages gradients across processes once per step, on the last micro-batch's backward."""
        return contextlib.nullcontext() if last or self.world_size == 1 else self.train_model.no_sync()

    def _stop_requested(self) -> bool:
        """This process's stop request, or any other's: every process stops at the same step."""
        return distributed.any_rank(self.should_stop())

    def _fold_losses(self) -> None:
        """Adds the pending step losses to the loss window, in step order (one host sync for all)."""
        if self._pending_losses:
            for value in torch.stack(self._pending_losses).tolist():
                self.state.window_loss += value
            self._pending_losses.clear()

    def _tuning_evaluation(self) -> bool:
        result = self.evaluate(self.tuning_set, self._stop_requested)  # every process evaluates, so all can stop
        if result is None:
            return False
        self.state.eval_pending = False
        metrics = result.metrics()
        self._track_best(metrics.get(self.config.monitor) if self.config.monitor else None)
        self._emit({"step": self.state.step, "split": "tuning", **metrics})
        return True

    def _track_best(self, value: float | None) -> None:
        """Best value and step of the monitored metric, and whether patience has run out (NaN never improves)."""
        cfg, st = self.config, self.state
        improved = value is not None and not math.isnan(value) and (
            st.best_value is None or (value > st.best_value if cfg.higher_is_better else value < st.best_value))
        if improved:
            st.best_value, st.best_step, st.evals_since_best = float(value), st.step, 0
        else:
            st.evals_since_best += 1
        st.stopped_early = (cfg.patience is not None and st.evals_since_best >= cfg.patience
                            and cfg.min_steps <= st.step < cfg.max_steps)

    def evaluate(self, patients: TokenArrays, should_stop: Callable[[], bool] | None = None) -> Any:
        """The task's evaluation on `patients` (fixed masks); None if stopped mid-way.

        Batches are consecutive runs of `eval_batch_size` patients.
        """
        size, n = self.config.eval_batch_size, len(patients)
        batches = (patients.collate(range(i, min(i + size, n))) for i in range(0, n, size))
        with autocast(self.precision, self.device):
            return self.task.evaluate(self.model, batches, self.device,
                                      derive_seed(self.config.seed, EVALUATION), should_stop or self.should_stop)

    def _emit(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        for cb in self.callbacks:
            cb.on_record(record)

    # -- state for checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Frozen parameters (a LoRA run's base) are left out: they come from the base checkpoint."""
        self._fold_losses()
        return {"model": trainable_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "train_state": asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # fp16 runs only: empty for fp32/bf16 (and absent in older checkpoints)
            self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train_state"])
        self._pending_losses.clear()
