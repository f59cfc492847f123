"""One job from spec to bundle: data, vocabulary, model, training, held-out evaluation, outputs.

The run works in a local folder (`runtime.work_dir`) and copies what matters to its folder
in storage; storage is the only place a later pod or a user looks. A run that has a committed
checkpoint in storage resumes from it; a stop request (SIGTERM) commits one and exits 75.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ehrseq.data.cohort import SPLITS, load_dataset, patients_by_split
from ehrseq.data.tokenize import encode_patient
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig, BEHRTForMLM, count_parameters
from ehrseq.tasks.mlm import MLMTask
from ehrseq.training.device import resolve_device
from ehrseq.training.progress import ProgressReporter
from ehrseq.training.state import load_snapshot, set_rng_state
from ehrseq.training.trainer import Callback, TrainConfig, Trainer
from runner.bundle import write_bundle
from runner.checkpointing import Checkpointer
from runner.checkpoints import CheckpointStore, checkpoint_dir
from runner.preemption import EXIT_PREEMPTED, StopRequest
from runner.run_folder import RunFolder
from runner.spec import JobSpec, check_supported
from runner.storage import open_storage

EXIT_COMPLETED = 0


class MetricsLog(Callback):
    """Appends records to the local metrics.jsonl and copies it to storage every `sync_every_s`.

    On resume it starts from the checkpoint's copy, so records logged after that checkpoint
    (and lost with the pod) are replaced by the identical ones the resumed run logs again.
    """

    def __init__(self, path: Path, run: RunFolder, initial: bytes = b"", sync_every_s: float = 10.0) -> None:
        self.path = path
        self.run = run
        self.sync_every_s = sync_every_s
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(initial)
        self.records: list[dict[str, Any]] = [json.loads(line) for line in initial.decode().splitlines()]
        self._last_sync = time.monotonic()
        self._file = path.open("a")

    def on_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def snapshot(self) -> bytes:
        self._file.flush()
        return self.path.read_bytes()

    def sync(self) -> None:
        self._file.flush()
        self.run.put_file("metrics.jsonl", self.path)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._file.close()


def run_job(spec: JobSpec, console: Console, fresh: bool = False) -> int:
    """Runs or resumes the job; returns the exit code (0 completed, 75 preempted)."""
    check_supported(spec)
    with StopRequest() as stop:
        return _run(spec, console, fresh, stop)


def _run(spec: JobSpec, console: Console, fresh: bool, stop: StopRequest) -> int:
    run = RunFolder(open_storage(spec.storage.uri), spec.resolved_run_id)
    store = CheckpointStore(run)
    if fresh:
        for key in run.storage.list(run.key("")):
            run.storage.delete(key)
    previous = run.read_status()
    if previous is not None:
        check_compatible(run, spec)
        if previous["state"] == "completed" and previous["durable_step"] >= spec.train.max_steps:
            console.print(f"[green]{run.uri} already completed[/] (step {previous['durable_step']}); "
                          "nothing to do. Use --fresh to start over or raise train.max_steps to continue.")
            return EXIT_COMPLETED
    work = Path(spec.runtime.work_dir or Path(tempfile.gettempdir()) / "ehrseq") / spec.resolved_run_id
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / "plots").mkdir(parents=True, exist_ok=True)

    started = time.time()
    run.put_text("spec.yaml", spec.to_yaml())
    durable = store.manifests()[-1]["step"] if store.manifests() else 0
    run.write_status("running", durable_step=durable, started_at=started)
    try:
        return _train_and_report(spec, run, store, stop, work, console, started)
    except BaseException as e:
        if not isinstance(e, InputError):
            status = run.read_status() or {}
            run.write_status("failed", durable_step=status.get("durable_step", 0), error=f"{type(e).__name__}: {e}")
        raise


def check_compatible(run: RunFolder, spec: JobSpec) -> None:
    """Refuses to resume a run whose model or data would change; a new step budget is fine."""
    try:
        stored = JobSpec.model_validate(yaml.safe_load(run.storage.get_bytes(run.key("spec.yaml"))))
    except FileNotFoundError:
        return
    if stored.fingerprint() == spec.fingerprint():
        return
    old, new = _flatten(stored.model_dump(mode="json")), _flatten(spec.model_dump(mode="json"))
    ignored = ("storage.", "runtime.", "checkpoint.", "run_id", "train.max_steps")
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(ignored)]
    raise InputError(f"{run.uri} exists with a different spec ({'; '.join(diffs)}); resume with the "
                     "original spec, choose a new name, or pass --fresh to overwrite it")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train_and_report(spec: JobSpec, run: RunFolder, store: CheckpointStore, stop: StopRequest, work: Path,
                      console: Console, started: float) -> int:
    device = resolve_device(spec.train.device)
    with console.status("preparing data"):
        dataset = load_dataset(spec.data.source, spec.data.path, spec.data.num_patients, spec.seed,
                               work.parent / "datasets")
        patients = patients_by_split(dataset)
        vocab = Vocabulary.build(patients["train"], min_count=spec.data.min_code_count)
        encoded = {s: [encode_patient(p, vocab, spec.data.max_seq_len) for p in patients[s]] for s in SPLITS}
    if stop():
        return _preempted(run, stop, durable_step=(run.read_status() or {}).get("durable_step", 0), console=console)
    vocab.save(work / "vocab.json")
    run.put_file("vocab.json", work / "vocab.json")

    config = BEHRTConfig.preset(spec.model.size, vocab_size=len(vocab), dropout=spec.model.dropout)
    torch.manual_seed(spec.seed)  # weight initialisation
    model = BEHRTForMLM(config)
    params_total, params_trainable = count_parameters(model)
    t = spec.train
    train_config = TrainConfig(
        max_steps=t.max_steps, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else max(1, t.max_steps // 10),
        grad_clip=t.grad_clip, log_every=t.log_every, eval_every=t.eval_every,
        eval_batch_size=t.eval_batch_size, seed=spec.seed)
    trainer = Trainer(model, MLMTask(vocab, mask_prob=spec.task.mask_prob), encoded["train"], encoded["tuning"],
                      train_config, device, should_stop=stop)

    resumed = store.fetch_latest(work / "resume", warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    initial_metrics = b""
    if resumed is not None:
        manifest, folder = resumed
        snapshot = load_snapshot(folder, device)
        trainer.load_state_dict(snapshot)
        set_rng_state(snapshot["rng"])
        initial_metrics = (folder / "metrics.jsonl").read_bytes()
        console.print(f"[bold]resuming[/] {run.uri} from step {manifest['step']} "
                      f"({run.uri}/{checkpoint_dir(manifest['step'])})")
    metrics = MetricsLog(work / "metrics.jsonl", run, initial_metrics)
    checkpointer = Checkpointer(
        store, work / "checkpoints", spec.checkpoint.interval_seconds, spec.checkpoint.keep_last,
        metadata=lambda: ({"spec_fingerprint": spec.fingerprint(), "versions": _versions()},
                          {"vocab.json": (work / "vocab.json").read_bytes(), "metrics.jsonl": metrics.snapshot()}),
        on_commit=lambda step: run.write_status("running", durable_step=step, started_at=started),
        best_metric="mlm_loss", durable_step=trainer.state.step)
    trainer.callbacks = [metrics, checkpointer]
    console.print(f"[bold]{run.uri}[/]: BEHRT-{spec.model.size} ({params_total:,} parameters) on {device}; "
                  f"{len(vocab):,} tokens; subjects " + " / ".join(f"{s} {len(encoded[s])}" for s in SPLITS))

    with ProgressReporter(t.max_steps, start_step=trainer.state.step, console=console) as progress:
        trainer.callbacks.append(progress)
        finished = trainer.fit()
    if not finished:
        committed = checkpointer.save_now(trainer, deadline=stop.deadline(spec.checkpoint.grace_seconds))
        metrics.close()
        return _preempted(run, stop, checkpointer.durable_step, console, lost=trainer.state.step -
                          checkpointer.durable_step, committed=committed)
    checkpointer.save_now(trainer)  # the final state, so a larger max_steps can continue this run
    metrics.close()

    with console.status("evaluating on held-out patients"):
        held_out = trainer.evaluate(encoded["held_out"])
    if held_out is None:
        return _preempted(run, stop, checkpointer.durable_step, console)
    write_bundle(run, work, spec, model, held_out, metrics.records, {
        "params_total": params_total, "params_trainable": params_trainable, "model_config": vars(config),
        "steps": trainer.state.step, "wall_time_s": time.time() - started, "device": str(device),
        "versions": _versions(), "spec_fingerprint": spec.fingerprint(),
        "data": {"source": spec.data.source,
                 "description": f"{spec.data.source} cohort" + (
                     f" ({spec.data.num_patients} patients, seed {spec.seed})"
                     if spec.data.source == "synthetic" else f" from {spec.data.path}"),
                 "subjects": {s: len(encoded[s]) for s in SPLITS}, "vocab_size": len(vocab)},
    })
    run.write_status("completed", durable_step=checkpointer.durable_step, started_at=started,
                     finished_at=time.time())
    console.print(f"[green]completed[/] {run.uri}: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in held_out.metrics().items()))
    return EXIT_COMPLETED


def _preempted(run: RunFolder, stop: StopRequest, durable_step: int, console: Console, lost: int = 0,
               committed: bool = True) -> int:
    run.write_status("preempted", durable_step=durable_step, reason=stop.name, steps_lost=lost)
    note = "" if committed else " (the final checkpoint missed the grace budget; the previous one stands)"
    console.print(f"[yellow]preempted[/] by {stop.name}: durable step {durable_step}, {lost} steps lost{note}. "
                  f"Run the same command again to resume.")
    return EXIT_PREEMPTED


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version(), "ehrseq": _ehrseq_version()}


def _ehrseq_version() -> str:
    try:
        return importlib.metadata.version("ehrseq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
