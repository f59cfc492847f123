"""`ehrseq bench`: the figures design.md section 5 asks for, measured side by side in one run.

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
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

bench_app = typer.Typer(help="Benchmarks: checkpoint/preemption timing, checkpoint overhead, memory, step time "
                        "against HuggingFace BERT, data pipeline throughput.",
                        no_args_is_help=True)
console = Console(stderr=True)
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

    from ehrseq.data.masking import mask_codes
    from ehrseq.data.vocab import Vocabulary
    from ehrseq.models import BEHRTConfig, BEHRTForMLM, count_parameters
    from ehrseq.training.device import resolve_device
    from ehrseq.training.optim import build_optimizer
    from ehrseq.training.precision import autocast, grad_scaler, resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision(precision, device)
    cfg = BEHRTConfig.preset(preset, vocab_size=vocab_size, **config)
    torch.manual_seed(0)
    behrt = BEHRTForMLM(cfg).to(device)
    hf = BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        layer_norm_eps=cfg.layer_norm_eps, max_position_embeddings=max(512, seq_len), type_vocab_size=2,
        pad_token_id=cfg.pad_id, attn_implementation="sdpa")).to(device)

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size, 1), generator=g)
    real = torch.arange(seq_len)[None, :] < lengths  # (B, T)
    special = len(Vocabulary.SPECIALS)
    codes = torch.randint(special, vocab_size, (batch_size, seq_len), generator=g) * real  # PAD = 0 after the end
    inputs, labels = mask_codes(codes, mask_id=Vocabulary.MASK, num_special=special, vocab_size=vocab_size,
                                generator=g)
    ages = torch.randint(0, cfg.max_age, (batch_size, seq_len), generator=g)
    positions = torch.randint(0, cfg.max_position, (batch_size, seq_len), generator=g)
    segments = positions % 2
    inputs, labels, ages, positions, segments, mask = (
        t.to(device) for t in (inputs, labels, ages, positions, segments, real))

    def masked_only() -> torch.Tensor:
        return behrt(inputs, ages, segments, positions, mask, labels)[0]

    def full_vocab() -> torch.Tensor:
        logits = behrt.head(behrt.behrt(inputs, ages, segments, positions, mask))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def huggingface() -> torch.Tensor:
        return hf(input_ids=inputs, attention_mask=mask, token_type_ids=segments, labels=labels).loss

    def trainer_step(model: torch.nn.Module, loss_fn):
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

    sides = {"behrt": trainer_step(behrt, masked_only), "behrt_full_vocab": trainer_step(behrt, full_vocab),
             "hf": trainer_step(hf, huggingface)}
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


@bench_app.command("data")
def data_pipeline(
    num_patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 20000,
    max_seq_len: Annotated[int, typer.Option(help="Tokens per patient.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Patients per batch.")] = 32,
    repeats: Annotated[int, typer.Option(help="Runs of the pipeline; each stage's median is reported.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """Data pipeline throughput in MEDS events/s: synthetic cohort -> MEDS -> tokenised patients -> batches."""
    rows = data_throughput(num_patients, max_seq_len, batch_size, repeats)
    _print(f"Data pipeline ({num_patients} synthetic patients)", rows, out)


def data_throughput(num_patients: int, max_seq_len: int = 128, batch_size: int = 32,
                    repeats: int = 3) -> list[dict[str, Any]]:
    """Seconds per stage (median of `repeats` fresh runs) and events/s through it, plus the whole pipeline."""
    from ehrseq.data.batching import EpochOrder, collate
    from ehrseq.data.cohort import patients_by_split, synthetic_dataset
    from ehrseq.data.meds_io import read_meds_dataset
    from ehrseq.data.tokenize import encode_patient
    from ehrseq.data.vocab import Vocabulary

    timings: dict[str, list[float]] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            clock = time.perf_counter()

            def lap(stage: str) -> None:
                nonlocal clock
                now = time.perf_counter()
                timings.setdefault(stage, []).append(now - clock)
                clock = now

            folder = synthetic_dataset(num_patients, 0, Path(tmp))
            lap("synthetic cohort -> MEDS parquet")
            dataset = read_meds_dataset(folder)
            splits = patients_by_split(dataset)
            lap("MEDS -> patients")
            vocab = Vocabulary.build(splits["train"], min_count=5)
            encoded = [encode_patient(p, vocab, max_seq_len) for patients in splits.values() for p in patients]
            lap("patients -> vocabulary, tokens")
            order = EpochOrder([len(p.codes) for p in encoded], batch_size, seed=0)
            tokens = sum(collate([encoded[i] for i in order.batch_indices(0, b)]).num_tokens
                         for b in range(len(order)))
            lap("tokens -> padded batches (one epoch)")
    events = dataset.data.num_rows
    rows = [{"stage": stage, "seconds": statistics.median(s), "events_per_s": events / statistics.median(s)}
            for stage, s in timings.items()]
    total = sum(r["seconds"] for r in rows)
    rows.append({"stage": "whole pipeline", "seconds": total, "events_per_s": events / total})
    for row in rows:
        row |= {"events": events, "tokens_batched": tokens}
    return rows


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
