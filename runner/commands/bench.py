"""`ehrseq bench`: the speed and memory targets (docs/benchmarks.md), measured side by side in one run.

Timings on a shared machine are noisy, so every comparison alternates its two sides and is
reported as a ratio of medians; nothing here is a pass/fail test.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

bench_app = typer.Typer(help="Benchmarks: checkpoint/preemption timing, checkpoint overhead, memory, step time "
                        "against HuggingFace BERT, step time and memory by window length, data pipeline throughput.",
                        no_args_is_help=True)
console = Console(stderr=True)
PRESETS = ["small", "medium", "large"]


def _print(title: str, rows: list[dict[str, Any]], out: Path | None, caption: str | None = None) -> None:
    table = Table(*rows[0].keys(), title=title, caption=caption)
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v) for v in row.values()))
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
    from ehrseq_runner.commands.gpu_check import preemption_timing

    with tempfile.TemporaryDirectory() as tmp:
        rows = [preemption_timing(preset, storage or f"file://{tmp}/runs", Path(tmp) / "work", warmup_s, "auto")
                for preset in presets or PRESETS]
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

    from ehrseq_runner.checkpoints.checkpointing import Checkpointer
    from ehrseq_runner.checkpoints.store import CheckpointStore

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
    """A trainer on the synthetic cohort's whole patients from the token cache, outside the runner (no storage,
    no signals)."""
    import torch

    from ehrseq.data.prepared import DataSettings, prepare
    from ehrseq.models import BEHRTConfig, BEHRTForMLM
    from ehrseq.tasks.mlm import MLMTask
    from ehrseq.training.device import resolve_device
    from ehrseq.training.trainer import TrainConfig, Trainer

    tmp = tempfile.mkdtemp(prefix="ehrseq-bench-")
    data = prepare(DataSettings(num_patients=2000, seed=0, max_seq_len=128, min_code_count=5, pretrain_data="all"),
                   Path(tmp) / "data")
    train = data.encoded["train"]
    torch.manual_seed(0)
    model = BEHRTForMLM(BEHRTConfig.preset(preset, vocab_size=len(data.vocab)))
    trainer = Trainer(model, MLMTask(data.vocab), train, train.select(slice(0, 64)),
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
        code = (f"import resource, torch, json; from ehrseq_runner.commands.bench import _bench_trainer; "
                f"t, _ = _bench_trainer({preset!r}, {steps}); t.fit(); "
                "cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None; "
                "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
                "'cuda_peak_mb': cuda}))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        rows.append({"preset": preset, **json.loads(result.stdout.strip().splitlines()[-1])})
    _print("Peak memory while training (batch 32, 128 tokens)", rows, out)


def hf_comparison(preset: str, vocab_size: int = 1000, batch_size: int = 32, seq_len: int = 128,
                  steps: int = 2, rounds: int = 10, precision: str = "auto", **config: Any) -> dict[str, Any]:
    """Median training-step time of BEHRT and of HF `BertForMaskedLM` of the same shape, alternated.

    Both get the same batch (rows padded to lengths between T/2 and T, 15% of real tokens masked),
    the same AdamW recipe, clipping and precision. BEHRT projects only masked positions onto the
    vocabulary while HF projects every token, so a third side times BEHRT with HF's full projection.
    `config` overrides BEHRTConfig fields (tests use a tiny shape).
    """
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForMaskedLM

    from ehrseq.models import BEHRTConfig, BEHRTForMLM, count_parameters
    from ehrseq.training.device import resolve_device
    from ehrseq.training.precision import resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision(precision, device)
    cfg = BEHRTConfig.preset(preset, vocab_size=vocab_size, **{"positions": "learned", **config})  # as BERT's
    torch.manual_seed(0)
    behrt = BEHRTForMLM(cfg).to(device)
    hf = BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        layer_norm_eps=cfg.layer_norm_eps, max_position_embeddings=max(512, seq_len), type_vocab_size=2,
        pad_token_id=cfg.pad_id, attn_implementation="sdpa")).to(device)

    inputs, labels, ages, positions, segments, mask = _mlm_batch(cfg, batch_size, seq_len, seq_len // 2, device)

    def masked_only() -> torch.Tensor:
        return behrt(inputs, ages, segments, positions, mask, labels)[0]

    def full_vocab() -> torch.Tensor:
        logits = behrt.head(behrt.behrt(inputs, ages, segments, positions, mask))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def huggingface() -> torch.Tensor:
        return hf(input_ids=inputs, attention_mask=mask, token_type_ids=segments, labels=labels).loss

    sides = {"behrt": _train_step(behrt, masked_only, precision, device),
             "behrt_full_vocab": _train_step(behrt, full_vocab, precision, device),
             "hf": _train_step(hf, huggingface, precision, device)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds + 1):  # round 0 warms up (allocator, kernels) and is not counted
        for name, step in list(sides.items())[::1 if r % 2 else -1]:  # ABC CBA ...: no side always goes first
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            if r:
                seconds[name].append((time.perf_counter() - start) / steps)
    ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    return {"preset": preset, "shape": f"B{batch_size} T{seq_len} C{cfg.hidden_size} L{cfg.num_layers} "
            f"H{cfg.num_heads} I{cfg.intermediate_size} V{vocab_size}",
            "params behrt/hf": f"{count_parameters(behrt)[0]:,}/{count_parameters(hf)[0]:,}",
            "masked": float((labels != -100).sum() / mask.sum()),
            "behrt_ms": ms["behrt"], "behrt_full_vocab_ms": ms["behrt_full_vocab"], "hf_ms": ms["hf"],
            "behrt/hf": ms["behrt"] / ms["hf"], "full_vocab/hf": ms["behrt_full_vocab"] / ms["hf"],
            "device": f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else
            torch.cuda.get_device_name(device) if device.type == "cuda" else str(device), "precision": precision}


def _mlm_batch(cfg: Any, batch_size: int, seq_len: int, shortest: int, device: Any) -> tuple[Any, ...]:
    """A seeded random MLM batch on `device`: (inputs, labels, ages, positions, segments, mask), each (B, T), rows
    padded to lengths in [shortest, T], 15% of real tokens masked."""
    import torch

    from ehrseq.data.masking import mask_codes
    from ehrseq.data.vocab import Vocabulary

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(shortest, seq_len + 1, (batch_size, 1), generator=g)
    real = torch.arange(seq_len)[None, :] < lengths  # (B, T)
    special = len(Vocabulary.SPECIALS)
    codes = torch.randint(special, cfg.vocab_size, (batch_size, seq_len), generator=g) * real  # PAD = 0 after the end
    inputs, labels = mask_codes(codes, mask_id=Vocabulary.MASK, num_special=special, vocab_size=cfg.vocab_size,
                                generator=g)
    ages = torch.randint(0, cfg.max_age, (batch_size, seq_len), generator=g)
    positions = torch.randint(0, cfg.max_position, (batch_size, seq_len), generator=g)
    return tuple(t.to(device) for t in (inputs, labels, ages, positions, positions % 2, real))


def _train_step(model: Any, loss_fn: Callable[[], Any], precision: str, device: Any) -> Callable[[], None]:
    """One training step as the trainer takes it: AdamW, autocast and grad scaler for `precision`, clipping."""
    import torch

    from ehrseq.training.optim import build_optimizer
    from ehrseq.training.precision import autocast, grad_scaler

    optimizer, scaler = build_optimizer(model, 1e-4, 0.01), grad_scaler(precision, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    return step


@bench_app.command("length")
def length(
    presets: Annotated[list[str], typer.Option("--preset", help="BEHRT sizes (repeatable).")] = None,
    seq_lens: Annotated[list[int], typer.Option("--seq-len", help="Tokens per patient (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Patients per batch, every row full length.")] = 4,
    steps: Annotated[int, typer.Option(help="Timed steps (after one warm-up step).")] = 3,
    vocab_size: Annotated[int, typer.Option(help="Codes in the vocabulary.")] = 1000,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """What a longer window (data.max_seq_len) costs: BEHRT MLM training step time and peak memory per size and
    length, each in a fresh process (peak RSS on CPU, allocator peak on CUDA). Defaults: small at 512, 1,024 and
    2,048 tokens, batch 4, 3 steps (about a minute on 2 CPU cores)."""
    from ehrseq.windows import SEQ_LENS

    rows = []
    for preset in presets or ["small"]:
        for seq_len in seq_lens or [512, 1024, 2048]:
            if seq_len > SEQ_LENS[preset][1]:
                console.print(f"{preset}: skipping {seq_len:,} tokens (sized for up to {SEQ_LENS[preset][1]:,})")
                continue
            rows.append(run_child("length_child", preset=preset, seq_len=seq_len, batch_size=batch_size,
                                  steps=steps, vocab_size=vocab_size, precision=precision))
    _print(f"Training step by window length (BEHRT MLM, batch {batch_size} of full-length rows, median of {steps} "
           "steps)", rows, out)


def length_child(preset: str, seq_len: int, batch_size: int, steps: int, vocab_size: int,
                 precision: str) -> dict[str, Any]:
    """One `bench length` row, in this (fresh) process: median step time, tokens/s and peak memory."""
    import torch

    from ehrseq.models import BEHRTConfig, BEHRTForMLM, count_parameters
    from ehrseq.training.device import resolve_device
    from ehrseq.training.precision import resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision(precision, device)
    cfg = BEHRTConfig.preset(preset, vocab_size=vocab_size, max_seq_len=seq_len)
    torch.manual_seed(0)
    model = BEHRTForMLM(cfg).to(device)
    inputs, labels, ages, positions, segments, mask = _mlm_batch(cfg, batch_size, seq_len, seq_len, device)
    step = _train_step(model, lambda: model(inputs, ages, segments, positions, mask, labels)[0], precision, device)
    step()  # warm-up: allocator, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {"preset": preset, "seq_len": seq_len, "params": count_parameters(model)[0], "ms_per_step": ms,
            "tokens_per_s": batch_size * seq_len / ms * 1000, "peak_mb": peak,
            "memory": "CUDA allocator peak" if device.type == "cuda" else "peak RSS (process)",
            "device": f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else
            torch.cuda.get_device_name(device), "precision": precision}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


@bench_app.command("hf")
def hf_step(
    presets: Annotated[list[str], typer.Option("--preset", help="Presets to measure (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Patients per batch.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per patient (rows padded to lengths in [T/2, T]).")] = 128,
    vocab_size: Annotated[int, typer.Option(help="Codes in the vocabulary.")] = 1000,
    steps: Annotated[int, typer.Option(help="Steps per side per round.")] = 2,
    rounds: Annotated[int, typer.Option(help="Alternations (after one warm-up round).")] = 10,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16, for both models.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """BEHRT training step vs HuggingFace BertForMaskedLM of the same shape, alternated in one process.

    behrt/hf < 1: BEHRT is faster. HF computes logits on every token, BEHRT only on masked ones;
    full_vocab/hf times BEHRT doing HF's full projection, the like-for-like figure.
    """
    rows = [hf_comparison(p, vocab_size, batch_size, seq_len, steps, rounds, precision)
            for p in presets or ["small"]]
    _print("Training step: BEHRT vs HF BertForMaskedLM (median ms per step)", rows, out)


SHARD_PATIENTS = 20_000  # patients per synthetic MEDS shard


@bench_app.command("data")
def data_pipeline(
    num_patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 20000,
    max_seq_len: Annotated[int, typer.Option(help="Tokens per patient.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Patients per batch.")] = 32,
    min_count: Annotated[int, typer.Option(help="Codes rarer than this in the train split become [UNK].")] = 5,
    numeric_bins: Annotated[int, typer.Option(help="data.numeric_bins: labs as value-bin tokens (adds pass 0, the "
                                              "bins' fit).")] = 0,
    repeats: Annotated[int, typer.Option(help="Runs of each timed stage; medians are reported.")] = 3,
    work: Annotated[Path | None, typer.Option(help="Keep the synthetic MEDS dataset here and reuse it on the next "
                                              "run (default: a temporary folder, removed).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
) -> None:
    """What a run does with its data, stage by stage.

    Writes a synthetic MEDS dataset shard by shard (not timed in the throughput), builds the token cache from
    it (events/s, pass 1 / pass 2 seconds, peak RSS of a fresh process), looks the cache up again (the
    rerun's hit), collates one epoch of batches from it (tokens/s), builds the binary task's examples cache and
    the gbm's count features from it. Wall-clock medians on a possibly shared machine. (The old per-patient
    path is timed beside the cache by tests/benchmarks/data_prep.py, its per-row collation by
    tests/benchmarks/collate.py.)
    """
    with console.status("bench data") as status:
        report = data_throughput(num_patients, max_seq_len, batch_size, repeats, min_count=min_count,
                                 work=work, progress=status.update, numeric_bins=numeric_bins)
    _print(f"Data pipeline: {num_patients:,} synthetic patients, {report['counts']['events']:,} events, "
           f"max_seq_len {max_seq_len}, batch {batch_size}, medians of {repeats}", report["stages"], None,
           caption="speedup of the reuse: build s / reuse s. Wall clock; load average "
           + " ".join(f"{x:.1f}" for x in report["config"]["load_average"]))
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {out}")


def write_synthetic_shards(dest: Path, num_patients: int, seed: int = 0, chunk: int = SHARD_PATIENTS,
                           progress: Callable[[str], None] | None = None) -> float:
    """The seeded synthetic cohort as a MEDS dataset at `dest`, `chunk` patients per shard (never the whole
    cohort in memory); seconds taken, 0 if `dest` already holds it. Data, splits and the binary task's labels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ehrseq.data.labels import label_path
    from ehrseq.data.meds_io import MedsWriter
    from ehrseq.data.synthetic import BINARY_TASK, assign_splits, generate_synthetic

    if (dest / "metadata" / "dataset.json").is_file():
        return 0.0
    start = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn((num_patients + chunk - 1) // chunk)
    labels = []
    with MedsWriter(dest, dest.name) as writer:
        for i, s in enumerate(seeds):
            if progress:
                progress(f"writing synthetic MEDS shard {i + 1}/{len(seeds)}")
            cohort = generate_synthetic(min(chunk, num_patients - i * chunk), int(s.generate_state(1)[0]))
            ids = pc.add(cohort.data.column("subject_id"), i * 10_000_000)  # each chunk numbers subjects from 10,000
            writer.write_shard(cohort.data.set_column(0, "subject_id", ids))
            task = cohort.labels[BINARY_TASK]
            labels.append(task.set_column(0, "subject_id", pc.add(task.column("subject_id"), i * 10_000_000)))
        writer.finish(assign_splits(writer.all_subject_ids(), seed),
                      {label_path(BINARY_TASK): pa.concat_tables(labels)})
    return time.perf_counter() - start


def synthetic_shards(work: Path, num_patients: int, seed: int = 0, chunk: int = SHARD_PATIENTS,
                     progress: Callable[[str], None] | None = None) -> tuple[Path, float]:
    """(the folder under `work` named by these settings, seconds taken to write it: 0 when reused)."""
    path = Path(work) / f"synthetic-n{num_patients}-seed{seed}-chunk{chunk}-labelled"
    return path, write_synthetic_shards(path, num_patients, seed, chunk, progress)


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux from /proc (VmHWM): ru_maxrss keeps, across exec, the RSS of
    the process it was forked from, so a child started by a big parent would report the parent's size."""
    import resource

    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def run_child(function: str, **kwargs: Any) -> dict[str, Any]:
    """`function(**kwargs)` of this module in a fresh interpreter (so its peak RSS is its own); its JSON result."""
    code = (f"import json; from ehrseq_runner.commands.bench import {function}; "
            f"print(json.dumps({function}(**json.loads({json.dumps(kwargs)!r}))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise RuntimeError(f"{function} failed in its subprocess: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _binary_examples(dataset: Path) -> Any:
    """The synthetic cohort's binary task as the token cache's LabelledTask (what a BEHRT binary run reads)."""
    from ehrseq.data.supervised import read_task_labels, task_label_files
    from ehrseq.data.synthetic import BINARY_TASK
    from ehrseq.data.token_cache import LabelledTask

    labels, report = read_task_labels(dataset, BINARY_TASK, "binary")
    return LabelledTask("binary", labels, report, task_label_files(dataset, BINARY_TASK, None))


def build_child(dataset: str, work: str, max_len: int, min_count: int, repeats: int = 1,
                numeric_bins: int = 0, examples: bool = False) -> dict[str, Any]:
    """`repeats` token-cache builds as a run does them (`token_cache` into an empty folder: key + pass 1 + pass 2
    + finish), each followed by a second `token_cache` call that hits; the last cache is kept in `work`. With
    `examples`, of the binary task's examples (as a BEHRT binary run: label rows read each time).

    peak_rss_mb: this process's high-water mark after the first build and hit (what a run, which builds once,
    peaks at; torch is never imported); peak_rss_mb_all_runs: after every run (repeats raise it a little)."""
    import shutil

    from ehrseq.data.token_cache import read_manifest, token_cache

    runs, folder, first_rss = [], None, 0.0
    for r in range(repeats):
        if folder is not None:
            shutil.rmtree(folder.parent)
        start = time.perf_counter()
        folder, how = token_cache(Path(dataset), Path(work) / f"cache-{r}", max_len, min_count,
                                  numeric_bins=numeric_bins, task=_binary_examples(Path(dataset)) if examples else None)
        build = time.perf_counter() - start
        start = time.perf_counter()
        again = token_cache(Path(dataset), Path(work) / f"cache-{r}", max_len, min_count, numeric_bins=numeric_bins,
                            task=_binary_examples(Path(dataset)) if examples else None)
        hit = time.perf_counter() - start
        if (how, again) != ("built", (folder, "reused")):
            raise RuntimeError(f"the build was {how!r} and the second lookup {again}, not a hit on {folder}")
        manifest = read_manifest(folder, verify=False)
        runs.append({"build_s": build, "hit_s": hit, **{f"{k}_s": v for k, v in manifest["seconds"].items()}})
        if r == 0:
            first_rss = peak_rss_mb()
    counts = {**manifest["counts"], **({"label_rows": manifest["examples"]["report"]["rows"]} if examples else {})}
    return {"runs": runs, "counts": counts, "folder": str(folder), "peak_rss_mb": first_rss,
            "peak_rss_mb_all_runs": peak_rss_mb(), "cache_bytes": sum(f.stat().st_size for f in folder.iterdir())}


def features_child(folder: str, min_count: int, repeats: int = 1) -> dict[str, Any]:
    """`repeats` builds of the gbm's full-strength count features from an examples cache (what a gbm run does
    after the cache lookup): load its labels and whole histories, fit the columns on the training split, build
    every split's matrix; with this process's peak RSS."""
    from ehrseq.data.token_cache import load_examples, load_histories, load_token_cache
    from ehrseq.models.count_features import FULL_STRENGTH, CountFeatures

    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        vocab, arrays = load_token_cache(Path(folder), verify=False)
        splits, _ = load_examples(Path(folder), arrays, load_histories(Path(folder), vocab))
        features = CountFeatures.fit(splits["train"].histories, FULL_STRENGTH, min_count=min_count)
        cells = sum(features.matrix(s.histories, s.prediction_times).size for s in splits.values())
        runs.append({"total_s": time.perf_counter() - start})
    return {"runs": runs, "counts": {"examples": sum(map(len, splits.values())), "columns": features.width,
                                     "cells": cells}, "peak_rss_mb": peak_rss_mb()}


def epoch_collation(arrays: Any, batch_size: int, repeats: int,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One epoch of EpochOrder batches from `arrays` (TokenArrays) by `TokenArrays.collate(indices)`, the
    trainer's path, `repeats` times: seconds per run, and the real (unpadded) tokens batched."""
    from ehrseq.data.batching import EpochOrder

    order = EpochOrder(arrays.lengths, batch_size, seed=0)
    batches = [order.batch_indices(0, b) for b in range(len(order))]
    seconds, tokens = [], 0
    for r in range(repeats):
        start, tokens = time.perf_counter(), 0
        for b, idx in enumerate(batches):
            if progress and b % 500 == 0:
                progress(f"collating one epoch (run {r + 1}/{repeats}): batch {b:,}/{len(batches):,}")
            tokens += arrays.collate(idx).num_tokens
        seconds.append(time.perf_counter() - start)
    return {"batches": len(batches), "tokens": tokens, "seconds": seconds}


def data_throughput(num_patients: int, max_seq_len: int = 128, batch_size: int = 32, repeats: int = 3,
                    min_count: int = 5, work: Path | None = None, progress: Callable[[str], None] | None = None,
                    numeric_bins: int = 0) -> dict[str, Any]:
    """Every stage `ehrseq bench data` reports: {"config", "counts", "stages" (the table's rows), "raw"}.

    The dataset is written (or reused from `work`) untimed; the token-cache builds and hits run in one fresh
    subprocess (its peak RSS is the build's), as do the examples cache and the count features; collation runs
    here on the memory-mapped train split."""
    import shutil

    from ehrseq.data.stream import data_shards
    from ehrseq.data.token_cache import load_token_cache

    say = progress or (lambda message: None)
    tmp = Path(tempfile.mkdtemp(prefix="ehrseq-bench-data-"))
    try:
        say(f"writing {num_patients:,} synthetic patients as MEDS")
        dataset, write_s = synthetic_shards(work or tmp, num_patients, progress=say)
        say(f"building the token cache ({repeats} runs, in a subprocess)")
        built = run_child("build_child", dataset=str(dataset), work=str(tmp / "caches"), max_len=max_seq_len,
                          min_count=min_count, repeats=repeats, numeric_bins=numeric_bins)
        counts = built["counts"]
        shards = len(data_shards(dataset))
        import ehrseq.data.token_arrays  # noqa: F401  (torch: imported before the load is timed)

        start = time.perf_counter()
        _, splits = load_token_cache(Path(built["folder"]), verify=False)
        load_s = time.perf_counter() - start
        collation = epoch_collation(splits["train"], batch_size, repeats, say)
        del splits
        say(f"building the binary task's examples cache ({repeats} runs, in a subprocess)")
        examples = run_child("build_child", dataset=str(dataset), work=str(tmp / "examples"), max_len=max_seq_len,
                             min_count=min_count, repeats=repeats, numeric_bins=numeric_bins, examples=True)
        say(f"building the gbm's count features from the examples cache ({repeats} runs, in a subprocess)")
        features = run_child("features_child", folder=examples["folder"], min_count=min_count, repeats=repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    events = counts["events"]
    build_s, hit_s = median(built["runs"], "build_s"), median(built["runs"], "hit_s")
    examples_s, features_s = median(examples["runs"], "build_s"), median(features["runs"], "total_s")
    collate_s, tokens = statistics.median(collation["seconds"]), collation["tokens"]

    def row(stage: str, seconds: float | None, events_per_s: float | None = None, tokens_per_s: float | None = None,
            speedup: float | None = None, peak_rss_mb: float | None = None, detail: str = "") -> dict[str, Any]:
        return {"stage": stage, "seconds": seconds, "events_per_s": events_per_s, "tokens_per_s": tokens_per_s,
                "speedup": speedup, "peak_rss_mb": peak_rss_mb, "detail": detail}

    stages = [
        row("write synthetic MEDS (untimed)", write_s,
            detail=f"{shards} shards of up to {SHARD_PATIENTS:,} patients" + (", reused" if not write_s else "")),
        row("MEDS -> token cache: build", build_s, events / build_s, peak_rss_mb=built["peak_rss_mb"],
            detail=(f"pass 0 (numeric bins) {median(built['runs'], 'numeric_bins_s'):.2f} s, " if numeric_bins else "")
            + f"pass 1 (vocab) {median(built['runs'], 'vocab_s'):.2f} s, pass 2 (tokenise) "
            f"{median(built['runs'], 'tokenise_s'):.2f} s, finish {median(built['runs'], 'finish_s'):.2f} s; "
            f"{counts['tokens']:,} tokens, {built['cache_bytes'] / 2**20:.0f} MB"),
        row("token cache: reuse (lookup hits)", hit_s, speedup=build_s / hit_s,
            detail=f"dataset re-hashed, cache verified; then load_token_cache(verify=False) {1000 * load_s:.0f} ms"),
        row("batches: TokenArrays.collate (1 epoch)", collate_s, tokens_per_s=tokens / collate_s,
            detail=f"train split, {collation['batches']:,} batches, {tokens:,} tokens"),
        row("binary examples -> token cache: build", examples_s, events / examples_s,
            peak_rss_mb=examples["peak_rss_mb"],
            detail=f"{examples['counts']['patients']:,} examples of {examples['counts']['label_rows']:,} label rows, "
            f"{examples['counts']['tokens']:,} tokens; reuse {median(examples['runs'], 'hit_s'):.2f} s"),
        row("gbm count features from the examples cache", features_s, events / features_s,
            peak_rss_mb=features["peak_rss_mb"],
            detail=f"load labels and whole histories, fit {features['counts']['columns']:,} columns on "
            f"train, {features['counts']['examples']:,} rows (after the examples cache build above)"),
    ]
    return {"config": {"num_patients": num_patients, "max_seq_len": max_seq_len, "batch_size": batch_size,
                       "min_count": min_count, "numeric_bins": numeric_bins, "repeats": repeats,
                       "cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "counts": {**counts, "shards": shards, "train_tokens_batched": tokens, "examples": examples["counts"]},
            "stages": stages,
            "raw": {"write_s": write_s, "build": built, "load_s": load_s, "collation": collation,
                    "examples": examples, "features": features}}


@bench_app.command("gpu")
def gpu(
    out: Annotated[Path, typer.Option(help="Where to write every figure as JSON.")] = Path("bench-gpu.json"),
    storage: Annotated[str, typer.Option(help="Storage for the SIGTERM timings: file://... (default: a temp "
                                         "folder) or s3://bucket/prefix.")] = "",
    num_patients: Annotated[int, typer.Option(help="Synthetic patients for the throughput runs.")] = 20000,
    batch_size: Annotated[int, typer.Option(help="Patients per step (behrt_large.yaml: 128).")] = 128,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per patient (default: behrt_large.yaml's).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Untimed steps per mode (compilation, allocator).")] = 20,
    steps: Annotated[int, typer.Option(help="Timed steps per mode.")] = 50,
    sigterm_warmup_s: Annotated[float, typer.Option(help="Seconds of training before each SIGTERM.")] = 5.0,
    preset: Annotated[str, typer.Option(hidden=True)] = "large",
    sigterm_presets: Annotated[list[str], typer.Option("--sigterm-preset", hidden=True)] = None,
    resume_patients: Annotated[int, typer.Option(hidden=True)] = 500,
    allow_cpu: Annotated[bool, typer.Option("--allow-cpu", hidden=True,
                                            help="Without CUDA, run the CPU parts (tests).")] = False,
) -> None:
    """Every CUDA path in one go (about 5 minutes on one GPU): large-preset tokens/s and MFU for fp32, bf16 and
    bf16 + compile; host collation vs GPU consumption; peak memory; SIGTERM -> committed -> exit (small, large);
    verify-resume with deterministic algorithms; a DDP smoke run over NCCL. Exit 2 without a CUDA GPU.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    import torch

    from ehrseq_runner.commands import gpu_check
    from ehrseq_runner.job.prepare import prepare_data

    if not torch.cuda.is_available() and not allow_cpu:
        console.print("ehrseq bench gpu: no CUDA GPU visible to torch "
                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU pod",
                      soft_wrap=True)
        raise typer.Exit(2)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    modes = gpu_check.MODES if cuda else gpu_check.MODES[:1]  # bf16 autocast and compile: CUDA only
    started = time.monotonic()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
        "flops_per_token": "6 N + 12 L C T (N: encoder weight matrices; L layers, width C, padded length T)"}

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [gpu_check.large_job(num_patients, batch_size, mode, warmup_steps + steps, device.type, preset,
                                    seq_len) for mode in modes]
        data = prepare_data(jobs[0], Path(tmp) / "data")
        result["training"] = [gpu_check.training_throughput(job, data, mode, device, warmup_steps, steps)
                              for job, mode in zip(jobs, modes, strict=True)]
        _print(f"Training {preset} ({result['device']})", result["training"], None)

        collation = gpu_check.collation_throughput(data.encoded["train"], batch_size, pin=cuda)
        consumed = max(row["tokens_per_s"] for row in result["training"])
        share = consumed / collation
        result["collation"] = {"collate_tokens_per_s": collation, "train_tokens_per_s": consumed,
                               "host_share": share, "gpu_waits_on_host": share > 0.5}
        _print("Collation (training thread) vs GPU consumption: host_share = fraction of the thread's time "
               "spent collating", [result["collation"]], None)

        uri = storage or f"file://{tmp}/runs"
        result["sigterm"] = [gpu_check.preemption_timing(p, uri, Path(tmp) / "work", sigterm_warmup_s, device.type)
                             for p in sigterm_presets or ["small", "large"]]
        _print("SIGTERM -> committed -> exit", result["sigterm"], None)

        result["verify_resume"] = gpu_check.resume_check(device, 20, resume_patients)
        _print("verify-resume (deterministic algorithms on)", [result["verify_resume"]], None)

        nproc = min(torch.cuda.device_count(), 2) if cuda else 1
        result["ddp"] = gpu_check.ddp_smoke(nproc, f"file://{tmp}/runs", Path(tmp) / "work", device.type)
        _print("DDP smoke run", [result["ddp"]], None)
    result["wall_s"] = time.monotonic() - started
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out} ({result['wall_s']:.0f} s)")
