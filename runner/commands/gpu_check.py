"""`ehrseq bench gpu`: one pass over every CUDA code path, in about 5 minutes on one GPU.

Large-preset training throughput and model FLOPs utilisation (MFU) for fp32, bf16 and bf16 + torch.compile,
host collation against what the GPU consumes, peak GPU memory, SIGTERM -> committed -> exit for the small and
large presets, verify-resume with deterministic algorithms, and a DistributedDataParallel smoke run (NCCL, one
process per GPU). `allow_cpu` runs the same code on CPU with the CUDA-only parts (bf16 autocast, compile) left
out, so a test can exercise it.

MFU = tokens/s x FLOPs per token / the GPU's peak. FLOPs per token of a training step = 6 N + 12 L C T
(forward 2 N + 4 L C T, backward twice that): N = the encoder layers' weight-matrix parameters (embeddings,
biases, norms and the masked-position vocabulary head left out), L layers of width C attending over the
padded length T of the batch (token-weighted mean over an epoch's batches). Tokens are the real (unpadded)
ones. Peaks are dense (no sparsity): bf16 tensor-core for bf16, plain FP32 for fp32 (PyTorch leaves TF32 off
for float32 matmuls by default).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

JOBS = Path(__file__).resolve().parents[2] / "jobs"  # the checkout's jobs/ (this file: runner/commands/gpu_check.py)
SPEC, LARGE_SPEC = JOBS / "behrt_small.yaml", JOBS / "behrt_large.yaml"
# torch.cuda.get_device_name() substring -> (dense bf16 tensor TFLOPS, FP32 TFLOPS), from NVIDIA's data sheets;
# the first match wins (H100 PCIe before H100, L40S before L4).
PEAK_TFLOPS: list[tuple[str, tuple[float, float]]] = [
    ("H200", (989.0, 67.0)), ("H100 PCIe", (756.0, 51.0)), ("H100 NVL", (835.0, 60.0)), ("H100", (989.0, 67.0)),
    ("A100", (312.0, 19.5)), ("L40S", (362.0, 91.6)), ("A40", (149.7, 37.4)), ("A6000", (154.8, 38.7)),
    ("L4", (121.0, 30.3)), ("A10", (125.0, 31.2)),
]
# verify-resume: losses must agree to this relative difference when not bit for bit (deterministic algorithms on)
RESUME_TOLERANCE = 1e-5


@dataclass
class Mode:
    name: str
    precision: str  # fp32 | bf16
    compile: bool


MODES = [Mode("fp32", "fp32", False), Mode("bf16", "bf16", False), Mode("bf16+compile", "bf16", True)]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The GPU's dense peak for `precision`, or None for a GPU not in PEAK_TFLOPS (MFU is then not reported)."""
    for key, (bf16, fp32) in PEAK_TFLOPS:
        if key in device_name:
            return bf16 if precision == "bf16" else fp32
    return None


def attention_length(patients: Any, batch_size: int) -> float:
    """The padded length T a real token attends over, averaged over one epoch's batches weighted by their tokens.

    `patients`: the TokenArrays the trainer batches from."""
    from ehrseq.data.batching import EpochOrder

    lengths = patients.lengths
    order = EpochOrder(lengths, batch_size, seed=0)
    batches = [lengths[order.batch_indices(0, b)] for b in range(len(order))]  # each (B,)
    return float(sum(int(b.sum()) * int(b.max()) for b in batches) / sum(int(b.sum()) for b in batches))


def flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """6 N + 12 L C T for one training token of a BEHRT encoder (see the module docstring)."""
    layers = model.behrt.layers
    weights = sum(p.numel() for p in layers.parameters() if p.dim() >= 2)
    width = model.behrt.config.hidden_size
    return 6.0 * weights + 12.0 * len(layers) * width * seq_len


def large_job(num_patients: int, batch_size: int, mode: Mode, steps: int, device: str, preset: str = "large",
              seq_len: int | None = None) -> Any:
    """jobs/behrt_large.yaml as `ehrseq run` would train it, on a smaller cohort, in `mode` (tests: small preset)."""
    from ehrseq_runner.spec.job_spec import load_spec

    sets = [f"data.num_patients={num_patients}", f"train.batch_size={batch_size}", f"train.max_steps={steps}",
            f"train.precision={mode.precision}", f"train.compile={str(mode.compile).lower()}",
            f"train.device={device}", f"model.size={preset}", "train.eval_every=0", "train.eval_batch_size=256"]
    return load_spec(str(LARGE_SPEC), sets + ([f"data.max_seq_len={seq_len}"] if seq_len else []))


def training_throughput(job: Any, data: Any, mode: Mode, device: torch.device, warmup_steps: int,
                        steps: int) -> dict[str, Any]:
    """Tokens/s of `steps` Trainer steps after `warmup_steps` (compilation, allocator), with MFU and peak memory."""
    from ehrseq_runner.job.prepare import make_trainer

    trainer = make_trainer(job, data, device)
    records: list[dict[str, Any]] = []
    trainer.callbacks = [_Records(records)]
    trainer.config.max_steps, trainer.config.log_every = warmup_steps, warmup_steps
    trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.config.max_steps, trainer.config.log_every = warmup_steps + steps, steps
    trainer.fit()  # one training record for the timed steps: the Trainer's own tokens/s (host-synced)
    timed = next(r for r in records if r["split"] == "train" and r["step"] == warmup_steps + steps)
    attended = attention_length(trainer.train_set, job.train.batch_size)  # the TokenArrays it batches from
    flops = flops_per_token(trainer.model, attended)
    peak = peak_tflops(torch.cuda.get_device_name(device), mode.precision) if device.type == "cuda" else None
    return {"mode": mode.name, "preset": job.model.size, "batch_size": job.train.batch_size,
            "seq_len": job.data.max_seq_len, "attended_len": attended, "tokens_per_s": timed["tokens_per_s"],
            "ms_per_step": 1000 * timed["seconds_per_step"], "gflops_per_token": flops / 1e9,
            "achieved_tflops": timed["tokens_per_s"] * flops / 1e12, "peak_tflops": peak,
            "mfu": timed["tokens_per_s"] * flops / (peak * 1e12) if peak else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
            "loss": timed["loss"]}


class _Records:
    """A Trainer callback that keeps the records (the Trainer's own throughput figures)."""

    def __init__(self, into: list[dict[str, Any]]) -> None:
        self.into = into

    def on_record(self, record: dict[str, Any]) -> None:
        self.into.append(record)

    def on_step_end(self, trainer: Any) -> None:
        pass


def collation_throughput(arrays: Any, batch_size: int, pin: bool, seconds: float = 5.0) -> float:
    """Real tokens/s the host turns into padded batches (pinned when feeding a GPU), as the training thread does:
    `TokenArrays.collate` of EpochOrder's batches."""
    from ehrseq.data.batching import EpochOrder

    order = EpochOrder(arrays.lengths, batch_size, seed=0)
    tokens, start, b = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = arrays.collate(order.batch_indices(b // len(order), b % len(order)))
        if pin:
            batch = batch.pin_memory()
        tokens += batch.num_tokens
        b += 1
    return tokens / (time.perf_counter() - start)


def preemption_timing(preset: str, uri: str, work: Path, warmup_s: float, device: str) -> dict[str, Any]:
    """SIGTERM -> final checkpoint committed in storage -> process exited, for a real `ehrseq run`."""
    import signal

    name = f"bench-preempt-{preset}-{int(time.time())}"
    sets = [f"name={name}", f"model.size={preset}", f"storage.uri={uri}", "train.max_steps=100000",
            "data.num_patients=2000", "checkpoint.interval_seconds=100000", f"runtime.work_dir={work}",
            "train.eval_every=0", f"train.device={device}"]
    args = [sys.executable, "-m", "ehrseq_runner", "run", str(SPEC), "--fresh",
            *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = work / name / "metrics.jsonl"
    until = time.monotonic() + 300
    while not (metrics.is_file() and metrics.stat().st_size > 0) and time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"ehrseq run exited {proc.returncode} before training: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)  # training has started
    time.sleep(warmup_s)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    exited = time.monotonic() - sent
    status = RunFolder(open_storage(uri), name).read_status() or {}
    return {"preset": preset, "sigterm_to_exit_s": exited, "exit_code": proc.returncode,
            "state": status.get("state"), "durable_step": status.get("durable_step"),
            "steps_lost": status.get("steps_lost"), "storage": uri.split("://")[0], "device": device}


def resume_check(device: torch.device, steps: int, num_patients: int) -> dict[str, Any]:
    """verify-resume (small preset, the spec's precision: bf16 on CUDA) with deterministic algorithms on."""
    from ehrseq.training.verify import verify_resume
    from ehrseq_runner.job.prepare import make_trainer, prepare_data
    from ehrseq_runner.spec.job_spec import load_spec

    job = load_spec(str(SPEC), [f"train.max_steps={steps}", f"data.num_patients={num_patients}",
                                f"train.device={device.type}", "train.eval_every=0", "train.log_every=1"])
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: a kernel without a deterministic
    try:                                                      # version runs anyway; the tolerance covers it
        with tempfile.TemporaryDirectory() as tmp:
            data = prepare_data(job, Path(tmp))
            result = verify_resume(lambda: make_trainer(job, data, device))
    finally:
        torch.use_deterministic_algorithms(False)
    diffs = [abs(a[1] - b[1]) / max(abs(a[1]), 1e-12)
             for a, b in zip(result.straight_losses, result.resumed_losses, strict=True)]
    worst = max(diffs)
    return {"device": str(device), "steps": steps, "split_at": result.split_at, "exact": result.losses_match
            and result.parameters_match, "parameters_match": result.parameters_match, "max_rel_loss_diff": worst,
            "tolerance": RESUME_TOLERANCE, "within_tolerance": worst <= RESUME_TOLERANCE}


def ddp_smoke(nproc: int, uri: str, work: Path, device: str, steps: int = 10) -> dict[str, Any]:
    """`ehrseq run --nproc N` on the small preset to completion: NCCL on CUDA, gloo on CPU."""
    name = f"bench-ddp-{int(time.time())}"
    sets = [f"name={name}", "model.size=small", f"storage.uri={uri}", f"train.max_steps={steps}",
            "data.num_patients=300", f"runtime.work_dir={work}", "train.eval_every=0", f"train.device={device}"]
    args = [sys.executable, "-m", "ehrseq_runner", "run", str(SPEC), "--fresh", "--nproc", str(nproc)]
    start = time.monotonic()
    proc = subprocess.run(args + [a for s in sets for a in ("--set", s)], capture_output=True, text=True)
    status = RunFolder(open_storage(uri), name).read_status() or {}
    return {"processes": nproc, "backend": "nccl" if device == "cuda" else "gloo", "exit_code": proc.returncode,
            "state": status.get("state"), "durable_step": status.get("durable_step"),
            "wall_s": time.monotonic() - start, "error": proc.stderr[-500:] if proc.returncode else None}
