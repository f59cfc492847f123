"""`ehrseq ladder LADDER.yaml --plan`: what a ladder will cost on a GPU before a pod is paid for.

Each cohort's data is prepared once (the token cache the runs will reuse), so the plan knows the training examples
and tokens per example; each run's optimizer steps come from the same `run_length` the trainer uses (an upper
bound: early stopping ends runs sooner). Training FLOPs per token are 6 N + 12 L C T (the GPU benchmark's model,
`ehrseq bench gpu`), evaluation 2 N + 4 L C T per token, and GPU time is FLOPs / (peak x MFU) plus a fixed
overhead per run (data from the cache, held-out scoring, the bundle and its upload). MFU and the overhead are
assumptions the user sets; `ehrseq bench gpu` measures MFU on the pod's GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ehrseq.data.prepared import PreparedData
from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig, Med2VecConfig
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.reports.compare import md_table
from ehrseq.reports.ladder import COUNT_KINDS
from ehrseq.training.length import run_length
from ehrseq_runner.commands.gpu_check import PEAK_TFLOPS, flops_per_token
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.spec.job_spec import JobSpec
from ehrseq_runner.spec.ladder_spec import LadderRun


@dataclass
class RungPlan:
    rung: str
    runs: int = 0
    steps: int = 0
    train_flops: float = 0.0
    eval_flops: float = 0.0


def plan_ladder(runs: Sequence[LadderRun], work: Path, gpu: str, mfu: float, overhead_s: float,
                price_per_hour: float | None) -> str:
    """A markdown table per rung (runs, steps, training and evaluation FLOPs, GPU-hours) and the total."""
    peak = next((bf16 for name, (bf16, _) in PEAK_TFLOPS if name.lower() in gpu.lower()), None)
    if peak is None:
        raise InputError(f"--plan: unknown GPU {gpu!r}; one of {', '.join(name for name, _ in PEAK_TFLOPS)}")
    prepared: dict[tuple[str, str], PreparedData] = {}  # (cohort, "pretrain" | "supervised") -> data at k = all
    plans: dict[str, RungPlan] = {}
    for r in runs:
        plan = plans.setdefault(r.rung + (" (pretraining)" if r.pretraining else ""),
                                RungPlan(r.rung + (" (pretraining)" if r.pretraining else "")))
        plan.runs += 1
        if r.spec.model.kind in COUNT_KINDS:
            continue
        key = (r.cohort, "pretrain" if r.pretraining else "supervised")
        if key not in prepared:
            spec = r.spec.model_copy(update={"train": r.spec.train.model_copy(update={"label_budget": None})})
            prepared[key] = prepare_data(spec, work)
        steps, train, evals = _run_flops(r.spec, prepared[key])
        plan.steps += steps
        plan.train_flops += train
        plan.eval_flops += evals
    seconds = {name: (p.train_flops + p.eval_flops) / (peak * 1e12 * mfu) + p.runs * overhead_s
               for name, p in plans.items()}
    rows = [[p.rung, str(p.runs), f"{p.steps:,}", f"{p.train_flops / 1e15:,.2f}", f"{p.eval_flops / 1e15:,.2f}",
             f"{seconds[name] / 3600:.2f}"] for name, p in plans.items()]
    hours = sum(seconds.values()) / 3600
    cost = f", ${hours * price_per_hour:,.2f} at ${price_per_hour}/h" if price_per_hour else ""
    return "\n".join([
        f"Plan on one {gpu} (bf16 peak {peak:g} TFLOPS) at MFU {mfu:g}, {overhead_s:g} s overhead per run; steps "
        "are upper bounds (early stopping ends runs sooner; LoRA and probes counted as full training); count "
        "baselines: overhead only (CPU fits).", "",
        md_table(["rung", "runs", "steps", "training PFLOPs", "evaluation PFLOPs", "GPU-hours"], rows), "",
        f"Total: {hours:.2f} GPU-hours{cost}."])


def _run_flops(spec: JobSpec, data: PreparedData) -> tuple[int, float, float]:
    """(steps, training FLOPs, evaluation FLOPs) of one run: its steps x batch x tokens per example for training,
    its tuning evaluations and one held-out pass for evaluation."""
    t = spec.train
    train = data.encoded["train"]
    examples = min(t.label_budget, len(train)) if t.label_budget else len(train)
    length = run_length(examples, t.batch_size, t.max_steps, epochs=t.epochs, min_steps=t.min_steps,
                        evals_per_epoch=t.evals_per_epoch, eval_every=t.eval_every)
    tokens_per_example = float(train.lengths.mean())
    per_token_train = _flops_per_token(spec.model.kind, spec.model.size, len(data.vocab), tokens_per_example)
    per_token_eval = per_token_train / 3  # a forward pass: a third of forward and backward
    tuning = min(t.label_budget, len(data.encoded["tuning"])) if t.label_budget else len(data.encoded["tuning"])
    evaluations = math.ceil(length.steps / length.eval_every) if length.eval_every else 1
    eval_tokens = (evaluations * tuning + len(data.encoded["held_out"])) * tokens_per_example
    return (length.steps, length.steps * min(t.batch_size, examples) * tokens_per_example * per_token_train,
            eval_tokens * per_token_eval)


def _flops_per_token(kind: str, size: str, vocab_size: int, seq_len: float) -> float:
    """Training FLOPs per token of the run's model: `ehrseq bench gpu`'s 6 N + 12 L C T (Med2Vec: its two
    projections as N, one layer of its visit width)."""
    if kind == "med2vec":
        c = Med2VecConfig.preset(size, vocab_size=vocab_size)
        return 6.0 * (vocab_size * c.code_size + c.code_size * c.visit_size) + 12.0 * c.visit_size * seq_len
    return flops_per_token(_behrt(size, vocab_size), seq_len)


@functools.cache
def _behrt(size: str, vocab_size: int) -> BEHRTForPrediction:
    return BEHRTForPrediction(BEHRTConfig.preset(size, vocab_size=vocab_size))
