"""`ehrseq ladder`: every model on one cohort and task, then one comparison report.

The rungs, oldest and smallest first: bag-of-codes logistic regression, Cox (survival only), Med2Vec,
BEHRT small / medium / large (each pretrained with masked codes, then fine-tuned), and BEHRT-large with LoRA
adapters on the large base. Every rung is an ordinary run in storage, so a preempted ladder re-run continues
where it stopped (completed runs are skipped, an interrupted one resumes) and each bundle stands on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.compare import compare
from runner.job import EXIT_COMPLETED, run_job
from runner.spec import JobSpec


@dataclass(frozen=True)
class LadderScale:
    num_patients: int
    max_seq_len: int
    pretrain_steps: int  # masked-code (BEHRT) and Med2Vec pretraining
    finetune_steps: int
    batch_size: int
    eval_every: int


SCALES = {
    "tiny": LadderScale(num_patients=600, max_seq_len=64, pretrain_steps=40, finetune_steps=40, batch_size=32,
                        eval_every=20),  # minutes on a laptop CPU: checks the plumbing, not the science
    "full": LadderScale(num_patients=20000, max_seq_len=256, pretrain_steps=5000, finetune_steps=2000,
                        batch_size=64, eval_every=500),  # a pod GPU
}
TASKS = ("binary", "survival")


def ladder_specs(task: str, scale: LadderScale, storage_uri: str, seed: int = 0, device: str = "auto",
                 work_dir: str | None = None, endpoint_url: str | None = None) -> list[JobSpec]:
    """The runs in order: each pretraining run before the fine-tuning runs that start from it."""
    if task not in TASKS:
        raise ValueError(f"the ladder compares models on a binary or survival task, not {task!r}")

    def spec(name: str, model: dict[str, Any], kind: str, steps: int, **extra: Any) -> JobSpec:
        return JobSpec.model_validate({
            "name": name, "seed": seed,
            "data": {"num_patients": scale.num_patients, "max_seq_len": scale.max_seq_len},
            "model": model, "task": {"kind": kind},
            "train": {"max_steps": steps, "batch_size": scale.batch_size, "eval_every": scale.eval_every,
                      "device": device},
            "storage": {"uri": storage_uri, "endpoint_url": endpoint_url}, "runtime": {"work_dir": work_dir}, **extra})

    def run_uri(name: str) -> str:
        return f"{storage_uri.rstrip('/')}/{name}"

    specs = [spec(f"{task}-bag-of-codes", {"kind": "bag_of_codes"}, task, 1)]
    if task == "survival":
        specs.append(spec(f"{task}-cox", {"kind": "cox"}, task, 1))
    specs += [spec("pretrain-med2vec", {"kind": "med2vec"}, "med2vec", scale.pretrain_steps),
              spec(f"{task}-med2vec", {"kind": "med2vec", "init_from": run_uri("pretrain-med2vec")}, task,
                   scale.finetune_steps)]
    for size in ("small", "medium", "large"):
        specs += [spec(f"pretrain-behrt-{size}", {"kind": "behrt", "size": size}, "mlm", scale.pretrain_steps),
                  spec(f"{task}-behrt-{size}", {"kind": "behrt", "size": size,
                                                "init_from": run_uri(f"pretrain-behrt-{size}")},
                       task, scale.finetune_steps)]
    specs.append(spec(f"{task}-behrt-large-lora", {"kind": "behrt", "size": "large",
                                                   "init_from": run_uri("pretrain-behrt-large")},
                      task, scale.finetune_steps, lora={"rank": 8, "alpha": 16}))
    return specs


def run_ladder(specs: list[JobSpec], out: Path, console: Console, endpoint_url: str | None = None,
               run: Callable[[JobSpec, Console], int] = run_job) -> int:
    """Runs each rung (a completed one is skipped by the runner itself), then compares the task's runs.

    Returns 0, or the first non-zero exit code (75 after a preemption: run the ladder again to continue).
    """
    for i, spec in enumerate(specs, 1):
        console.rule(f"ladder {i}/{len(specs)}: {spec.resolved_run_id}")
        code = run(spec, console)
        if code != EXIT_COMPLETED:
            return code
    task = specs[0].task.kind
    finals = [f"{s.storage.uri.rstrip('/')}/{s.resolved_run_id}" for s in specs if s.task.kind == task]
    comparison = compare(finals, out, endpoint_url=endpoint_url)
    console.print(f"[green]ladder report[/]: {out / 'report.md'} ({len(comparison.runs)} runs)")
    return EXIT_COMPLETED
