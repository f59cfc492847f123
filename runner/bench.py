"""`ehrseq bench`: the figures design.md section 5 asks for, measured side by side in one run.

Timings on a shared machine are noisy, so every comparison alternates its two sides and is
reported as a ratio of medians; nothing here is a pass/fail test.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from runner.run_folder import RunFolder
from runner.storage import open_storage

bench_app = typer.Typer(help="Benchmarks: checkpoint/preemption timing, checkpoint overhead, step speed, memory.",
                        no_args_is_help=True)
console = Console(stderr=True)
SPEC = Path(__file__).resolve().parents[1] / "jobs" / "behrt_small.yaml"
PRESETS = ["small", "medium", "large"]


def _print(title: str, rows: list[dict[str, Any]], out: Path | None) -> None:
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=max(120, Console().width)).print(table)
    if out:
        out.write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {out}")


@bench_app.command()
def preemption(
    presets: Annotated[list[str], typer.Option("--preset", help="Presets to measure (repeatable).")] = None,
    storage: Annotated[str, typer.Option(help="Where checkpoints go: file://... or s3://bucket/prefix.")] = "",
    warmup_s: Annotated[float, typer.Option(help="Seconds of training before SIGTERM.")] = 20.0,
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """SIGTERM -> final checkpoint committed in storage -> process exited, per preset (a real `ehrseq run`)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = storage or f"file://{tmp}/runs"
        for preset in presets or PRESETS:
            name = f"bench-preempt-{preset}-{int(time.time())}"
            args = [sys.executable, "-m", "runner", "run", str(SPEC), "--fresh"] + [
                a for item in [f"name={name}", f"model.size={preset}", f"storage.uri={uri}", "train.max_steps=100000",
                               "data.num_patients=2000", "checkpoint.interval_seconds=100000",
                               f"runtime.work_dir={tmp}/work", "train.eval_every=0"]
                for a in ("--set", item)]
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            run = RunFolder(open_storage(uri), name)
            metrics = Path(tmp) / "work" / name / "metrics.jsonl"
            until = time.monotonic() + 300
            while not (metrics.is_file() and metrics.stat().st_size > 0) and time.monotonic() < until:
                time.sleep(0.2)  # training has started
            time.sleep(warmup_s)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
            exited = time.monotonic() - sent
            status = run.read_status() or {}
            rows.append({"preset": preset, "sigterm_to_exit_s": exited, "exit_code": proc.returncode,
                         "state": status.get("state"), "durable_step": status.get("durable_step"),
                         "steps_lost": status.get("steps_lost"), "storage": uri.split("://")[0]})
    _print("SIGTERM -> committed -> exit", rows, out)


@bench_app.command()
def overhead(
    preset: Annotated[str, typer.Option(help="Model preset.")] = "small",
    interval_s: Annotated[float, typer.Option(help="Checkpoint interval for the 'with' side.")] = 3.0,
    steps: Annotated[int, typer.Option(help="Steps per measured segment.")] = 150,
    rounds: Annotated[int, typer.Option(help="Alternations of with/without.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """Training throughput with timed checkpoints every few seconds vs none, alternated in one process."""
    import torch

    from runner.checkpointing import Checkpointer
    from runner.checkpoints import CheckpointStore

    trainer, tmp = _bench_trainer(preset, steps * rounds * 2)
    with_ckpt: list[float] = []
    without: list[float] = []

    for r in range(rounds):
        for side in ("without", "with"):
            store = CheckpointStore(RunFolder(open_storage(f"file://{tmp}/runs"), f"r{r}{side}"))
            ckpt = Checkpointer(store, Path(tmp) / "ckpt", interval_s if side == "with" else 1e12, 2,
                                metadata=lambda: ({}, {}), on_commit=lambda step: None)
            trainer.callbacks = [ckpt]
            trainer.config.max_steps = trainer.state.step + steps
            start, first = time.perf_counter(), trainer.state.step
            trainer.fit()
            ckpt.wait()
            rate = (trainer.state.step - first) / (time.perf_counter() - start)
            (with_ckpt if side == "with" else without).append(rate)
    ratio = statistics.median(with_ckpt) / statistics.median(without)
    _print("Timed-checkpoint overhead", [{
        "preset": preset, "interval_s": interval_s, "steps_per_s_without": statistics.median(without),
        "steps_per_s_with": statistics.median(with_ckpt), "throughput_ratio": ratio,
        "overhead_pct": 100 * (1 - ratio), "threads": torch.get_num_threads()}], out)


def _bench_trainer(preset: str, max_steps: int):
    """A trainer on the synthetic cohort, outside the runner (no storage, no signals)."""
    import torch

    from ehrseq.data.cohort import load_dataset, patients_by_split
    from ehrseq.data.tokenize import encode_patient
    from ehrseq.data.vocab import Vocabulary
    from ehrseq.models import BEHRTConfig, BEHRTForMLM
    from ehrseq.tasks.mlm import MLMTask
    from ehrseq.training.device import resolve_device
    from ehrseq.training.trainer import TrainConfig, Trainer

    tmp = tempfile.mkdtemp(prefix="ehrseq-bench-")
    patients = patients_by_split(load_dataset("synthetic", None, 2000, 0, Path(tmp) / "data"))
    vocab = Vocabulary.build(patients["train"], min_count=5)
    train = [encode_patient(p, vocab, 128) for p in patients["train"]]
    torch.manual_seed(0)
    model = BEHRTForMLM(BEHRTConfig.preset(preset, vocab_size=len(vocab)))
    trainer = Trainer(model, MLMTask(vocab), train, train[:64],
                      TrainConfig(max_steps=max_steps, batch_size=32, eval_every=0, log_every=10 ** 9),
                      resolve_device("auto"))
    return trainer, tmp


@bench_app.command()
def memory(
    presets: Annotated[list[str], typer.Option("--preset", help="Presets to measure (repeatable).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per preset.")] = 30,
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """Peak memory of training each preset (a fresh process each: peak RSS on CPU, allocator peak on CUDA)."""
    rows = []
    for preset in presets or PRESETS:
        code = (f"import resource, torch, json; from runner.bench import _bench_trainer; "
                f"t, _ = _bench_trainer({preset!r}, {steps}); t.fit(); "
                "cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None; "
                "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
                "'cuda_peak_mb': cuda}))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        rows.append({"preset": preset, **json.loads(result.stdout.strip().splitlines()[-1])})
    _print("Peak memory while training (batch 32, 128 tokens)", rows, out)
