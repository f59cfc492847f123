"""One job from spec to bundle: data, vocabulary, model, training, held-out evaluation, outputs.

The run works in a local folder (`runtime.work_dir`) and copies what matters to its folder
in storage; storage is the only place a later pod or a user looks.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save_model

from ehrseq.data.cohort import SPLITS, load_dataset, patients_by_split
from ehrseq.data.tokenize import encode_patient
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.evaluation.bootstrap import bootstrap_ci
from ehrseq.models import BEHRTConfig, BEHRTForMLM, count_parameters
from ehrseq.reports.plots import plot_loss, plot_lr_throughput
from ehrseq.reports.summary import render_summary_md
from ehrseq.tasks.mlm import MLMTask
from ehrseq.training.device import resolve_device
from ehrseq.training.progress import ProgressReporter
from ehrseq.training.trainer import Callback, TrainConfig, Trainer
from runner.run_folder import RunFolder
from runner.spec import JobSpec, check_supported
from runner.storage import open_storage

EXIT_COMPLETED = 0


class MetricsLog(Callback):
    """Appends records to the local metrics.jsonl and copies it to storage every `sync_every_s`."""

    def __init__(self, path: Path, run: RunFolder, sync_every_s: float = 10.0) -> None:
        self.path = path
        self.run = run
        self.sync_every_s = sync_every_s
        self.records: list[dict[str, Any]] = []
        self._last_sync = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")

    def on_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        self._file.flush()
        self.run.put_file("metrics.jsonl", self.path)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._file.close()


def run_job(spec: JobSpec, console: Console) -> int:
    check_supported(spec)
    run = RunFolder(open_storage(spec.storage.uri), spec.resolved_run_id)
    previous = run.read_status()
    if previous and previous["state"] == "completed":
        console.print(f"[green]{run.uri} already completed[/] (step {previous['durable_step']}); nothing to do.")
        return EXIT_COMPLETED
    work = Path(spec.runtime.work_dir or Path(tempfile.gettempdir()) / "ehrseq") / spec.resolved_run_id
    (work / "plots").mkdir(parents=True, exist_ok=True)
    (work / "metrics.jsonl").unlink(missing_ok=True)  # a fresh start (resume arrives with checkpoints)

    started = time.time()
    run.put_text("spec.yaml", spec.to_yaml())
    run.write_status("running", durable_step=0, started_at=started)
    try:
        return _train_and_report(spec, run, work, console, started)
    except BaseException as e:
        if not isinstance(e, InputError):
            run.write_status("failed", durable_step=0, error=f"{type(e).__name__}: {e}")
        raise


def _train_and_report(spec: JobSpec, run: RunFolder, work: Path, console: Console, started: float) -> int:
    device = resolve_device(spec.train.device)
    with console.status("preparing data"):
        dataset = load_dataset(spec.data.source, spec.data.path, spec.data.num_patients, spec.seed,
                               work.parent / "datasets")
        patients = patients_by_split(dataset)
        vocab = Vocabulary.build(patients["train"], min_count=spec.data.min_code_count)
        encoded = {s: [encode_patient(p, vocab, spec.data.max_seq_len) for p in patients[s]] for s in SPLITS}
    vocab.save(work / "vocab.json")
    run.put_file("vocab.json", work / "vocab.json")

    config = BEHRTConfig.preset(spec.model.size, vocab_size=len(vocab), dropout=spec.model.dropout)
    torch.manual_seed(spec.seed)  # weight initialisation
    model = BEHRTForMLM(config)
    params_total, params_trainable = count_parameters(model)
    console.print(f"[bold]{run.uri}[/]: BEHRT-{spec.model.size} ({params_total:,} parameters) on {device}; "
                  f"{len(vocab):,} tokens; subjects " + " / ".join(f"{s} {len(encoded[s])}" for s in SPLITS))

    t = spec.train
    train_config = TrainConfig(
        max_steps=t.max_steps, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else max(1, t.max_steps // 10),
        grad_clip=t.grad_clip, log_every=t.log_every, eval_every=t.eval_every,
        eval_batch_size=t.eval_batch_size, seed=spec.seed)
    metrics = MetricsLog(work / "metrics.jsonl", run)
    task = MLMTask(vocab, mask_prob=spec.task.mask_prob)
    with ProgressReporter(t.max_steps, console=console) as progress:
        trainer = Trainer(model, task, encoded["train"], encoded["tuning"], train_config, device,
                          callbacks=[metrics, progress])
        trainer.fit()
    metrics.close()

    with console.status("evaluating on held-out patients"):
        held_out = trainer.evaluate(encoded["held_out"])
        headline = held_out.metrics()
        ci = bootstrap_ci(held_out.metrics, len(held_out.subject_ids), seed=spec.seed)

    save_model(model, str(work / "model.safetensors"))
    title = f"{spec.resolved_run_id}: BEHRT-{spec.model.size}, {spec.task.kind}"
    plots = [plot_loss(metrics.records, work / "plots" / "loss.png", title),
             plot_lr_throughput(metrics.records, work / "plots" / "lr_throughput.png", title)]
    plot_names = [p.relative_to(work).as_posix() for p in plots]
    summary = {
        "run_id": spec.resolved_run_id, "model": f"behrt-{spec.model.size}", "task": spec.task.kind,
        "metrics": headline, "metrics_ci": ci,
        "params_total": params_total, "params_trainable": params_trainable,
        "model_config": vars(config), "steps": trainer.state.step,
        "wall_time_s": time.time() - started, "device": str(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "spec_fingerprint": spec.fingerprint(),
        "data": {"source": spec.data.source,
                 "description": f"{spec.data.source} cohort" + (
                     f" ({spec.data.num_patients} patients, seed {spec.seed})"
                     if spec.data.source == "synthetic" else f" from {spec.data.path}"),
                 "subjects": {s: len(encoded[s]) for s in SPLITS}, "vocab_size": len(vocab)},
        "plots": plot_names,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    (work / "SUMMARY.md").write_text(render_summary_md(summary, plot_names))
    for name in ["model.safetensors", "summary.json", "SUMMARY.md", *plot_names]:
        run.put_file(name, work / name)
    run.write_status("completed", durable_step=trainer.state.step, started_at=started,
                     finished_at=time.time())
    console.print(f"[green]completed[/] {run.uri}: " + ", ".join(f"{k} {v:.4f}" for k, v in headline.items()))
    return EXIT_COMPLETED
