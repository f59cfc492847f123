"""A rich progress bar (loss, tokens/s, ETA) on a terminal; periodic plain lines in pod logs."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ehrseq.training.trainer import Callback


class ProgressReporter(Callback):
    def __init__(self, total_steps: int, start_step: int = 0, console: Console | None = None,
                 line_every_s: float = 15.0) -> None:
        self.console = console or Console(stderr=True)
        self.total = total_steps
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._train: dict[str, Any] = {}
        self._tuning: dict[str, Any] = {}
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[tok_s]} tok/s  {task.fields[tuning]}"),
            TimeRemainingColumn(), console=self.console, disable=not self.console.is_terminal,
        )
        self.task_id = self.progress.add_task("train", total=total_steps, completed=start_step,
                                              loss="-", tok_s="-", tuning="")

    def __enter__(self) -> ProgressReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_record(self, record: dict[str, Any]) -> None:
        if record["split"] == "train":
            self._train = record
        else:
            self._tuning = record
        tuning = f"tuning loss {self._tuning['mlm_loss']:.3f}" if "mlm_loss" in self._tuning else ""
        self.progress.update(self.task_id, completed=record["step"],
                             loss=f"{self._train.get('loss', float('nan')):.3f}",
                             tok_s=f"{self._train.get('tokens_per_s', 0):,.0f}", tuning=tuning)
        now = time.monotonic()
        if not self.console.is_terminal and (now - self._last_line >= self.line_every_s
                                             or record["split"] != "train" or record["step"] == self.total):
            self._last_line = now
            self.console.print(f"step {record['step']}/{self.total}  loss {self._train.get('loss', 0):.4f}  "
                               f"{self._train.get('tokens_per_s', 0):,.0f} tok/s  {tuning}")
