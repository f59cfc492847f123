"""One job from spec to bundle: data, vocabulary, model, training, held-out evaluation, outputs.

The run works in a local folder (`runtime.work_dir`) and sends what matters to its folder in
storage, the only place a later pod or a user looks. A run with a committed checkpoint in
storage resumes from it; a stop request (SIGTERM) commits one and exits 75. This module orchestrates: the
inputs every rank reads are job/inputs.py's, the facts a bundle reports the library's (ehrseq.reports.facts,
ehrseq.evaluation.controls).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from safetensors.torch import save_file

from ehrseq.data.prepared import PreparedData
from ehrseq.data.supervised import LabelledSplit
from ehrseq.data.synthetic import code_clusters
from ehrseq.data.token_arrays import TokenArrays
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError, no_space
from ehrseq.evaluation.controls import oracle_facts, order_probe_facts
from ehrseq.evaluation.family_probe import cooccurrence_vectors, probe_vocabulary
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions
from ehrseq.models import count_parameters
from ehrseq.models.baselines import fit_baseline
from ehrseq.reports.embeddings import EmbeddingReport, write_code_embeddings
from ehrseq.reports.facts import data_facts, label_facts
from ehrseq.reports.provenance import compute_facts, git_commit, hardware_facts, versions
from ehrseq.reports.summary import coverage_warning
from ehrseq.training import distributed
from ehrseq.training.device import resolve_device
from ehrseq.training.progress import ProgressReporter
from ehrseq.training.state import load_model_weights, load_trainable_state_dict, trainable_state_dict
from ehrseq.training.threads import configure_threads
from ehrseq.training.trainer import Trainer
from ehrseq_runner.checkpoints.checkpointing import Checkpointer
from ehrseq_runner.checkpoints.local_tier import LocalTier
from ehrseq_runner.checkpoints.store import RUN_CHECKPOINT_FILES, CheckpointStore, checkpoint_dir
from ehrseq_runner.job.bundle import ADAPTER, write_bundle
from ehrseq_runner.job.distributed import run_worker
from ehrseq_runner.job.inputs import read_inputs
from ehrseq_runner.job.metrics_log import MetricsLog
from ehrseq_runner.job.preemption import EXIT_PREEMPTED, Stopped, StopRequest
from ehrseq_runner.job.prepare import make_trainer, training_seed
from ehrseq_runner.job.pretrained import Pretrained
from ehrseq_runner.job.resume import restore, resume_snapshot
from ehrseq_runner.job.tracking import Tracker, check_installed
from ehrseq_runner.spec import safe_yaml
from ehrseq_runner.spec.job_spec import (
    BASELINES,
    SUPERVISED,
    JobSpec,
    check_supported,
    flatten,
    validate_job,
)
from ehrseq_runner.storage.fenced import FencedRunFolder
from ehrseq_runner.storage.lease import Lease
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.sync import Syncer
from ehrseq_runner.storage.token_caches import StoredTokenCaches
from ehrseq_runner.storage.uri import open_storage, redact_credentials

EXIT_COMPLETED = 0
FAILED_STATUS_BUDGET_S = 10.0
COMPLETED_STATUS_BUDGET_S = 60.0  # a finished run's last status upload (a loaded machine or store is slow)
T = TypeVar("T")


def run_job(spec: JobSpec, console: Console, fresh: bool = False, stop: StopRequest | None = None) -> int:
    """Runs or resumes the job; returns the exit code (0 completed, 75 preempted). `stop`: a caller's stop
    request (a ladder's, across its runs); by default the job installs its own SIGTERM/SIGINT handlers."""
    check_supported(spec)
    check_installed(spec.tracking)  # a tracker asked for but not installed: exit 2 before any work
    device = resolve_device(spec.train.device)  # a GPU torch cannot use: exit 2 before storage is touched
    configure_threads()
    storage = open_storage(spec.storage.uri, spec.storage.endpoint_url)
    storage.check()  # unreachable storage or a missing bucket: exit 2 before any work
    run = RunFolder(storage, spec.resolved_run_id)
    distributed.init_from_env(device)  # under torchrun: join the other processes
    # rank 0 is the run's one writer: another live writer makes it exit 2 before anything is touched (--fresh too)
    lease = Lease(run, renew_seconds=spec.checkpoint.lease_renew_seconds,
                  warn=lambda message: warn(console, message)) if distributed.rank() == 0 else None
    if lease is not None:
        lease.acquire()
        run = FencedRunFolder(run, lease)  # from here every write first proves the lease is still ours
    previous, job = None, None
    try:
        if fresh and lease is not None:
            for key in storage.list(run.key("")):
                if key != lease.key:
                    run.delete(key)
            if spec.checkpoint.local_dir:
                shutil.rmtree(Path(spec.checkpoint.local_dir) / run.run_id, ignore_errors=True)
        distributed.barrier()
        previous = run.read_status()
        if previous is not None:
            check_compatible(run, spec)
            if previous["state"] == "completed" and _trained_out(previous, spec):
                console.print(f"[green]{escape(run.uri)} already completed[/] (step {previous['durable_step']}); "
                              "nothing to do. Use --fresh to start over or raise train.max_steps to continue.")
                return EXIT_COMPLETED
        with contextlib.nullcontext(stop) if stop is not None else StopRequest() as stop:
            if lease is None:
                return run_worker(spec, run, stop, console)
            job = Job(spec, run, stop, console, lease, previous)
            return job.run()
    finally:
        if lease is not None:  # released: the next writer (a relaunched pod) starts at once; a new run refused
            # before it set any status (bad data) deletes it, so the refusal leaves nothing in storage
            stored = previous is not None or (job is not None and bool(job.syncer.status))
            lease.release(forget=not stored)


def _trained_out(status: dict[str, Any], spec: JobSpec) -> bool:
    """A completed run with nothing left to train: a baseline (no steps), stopped early by patience, or at
    its step budget (max_steps, or fewer set by train.epochs). Raising max_steps continues a run that hit it."""
    if spec.model.kind in BASELINES or status.get("stopped_early"):
        return True
    return status["durable_step"] >= min(spec.train.max_steps, status.get("epoch_steps") or spec.train.max_steps)


def check_compatible(run: RunFolder, spec: JobSpec) -> None:
    """Refuses to resume a run whose model or data would change; a new step budget is fine."""
    where = f"{run.uri}/spec.yaml"
    try:
        stored = validate_job(safe_yaml.load(run.storage.get_bytes(run.key("spec.yaml")), where), where, check=False)
    except FileNotFoundError:
        return
    except InputError as e:
        raise InputError(f"{e} (the stored spec is damaged: restore it, or pass --fresh to start the run over)") \
            from None
    if stored.fingerprint() == spec.fingerprint():
        return
    old, new = flatten(stored.model_dump(mode="json")), flatten(spec.model_dump(mode="json"))
    ignored = ("storage.", "runtime.", "checkpoint.", "tracking.", "run_id", "train.max_steps", "train.compile")
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(ignored)]
    raise InputError(f"{run.uri} exists with a different spec ({'; '.join(diffs)}); resume with the "
                     "original spec, choose a new name, or pass --fresh to overwrite it")


def warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(redact_credentials(message))}", highlight=False)  # stored keys


class Job:
    def __init__(self, spec: JobSpec, run: RunFolder, stop: StopRequest, console: Console, lease: Lease,
                 previous: dict[str, Any] | None) -> None:
        """`previous`: the run's status.json as read before this job (None for a new run)."""
        self.spec, self.run_folder, self.stop, self.console, self.lease = spec, run, stop, console, lease
        self.previous = previous
        self.store = CheckpointStore(run, lease, RUN_CHECKPOINT_FILES)
        local_dir = spec.checkpoint.local_dir
        self.local = LocalTier(Path(local_dir), spec.resolved_run_id, lease, RUN_CHECKPOINT_FILES) \
            if local_dir else None
        self.work = Path(spec.runtime.work_dir or Path(tempfile.gettempdir()) / "ehrseq") / spec.resolved_run_id
        self.started = time.time()
        self.syncer = Syncer(run, warn=self.warn)
        self.tracker = Tracker(spec, run.uri, self.work, self.syncer, self.warn)

    def warn(self, message: str) -> None:
        warn(self.console, message)

    def run(self) -> int:
        shutil.rmtree(self.work / "checkpoints", ignore_errors=True)
        (self.work / "plots").mkdir(parents=True, exist_ok=True)
        previous = self.previous
        try:
            pretrained, data = self._read_inputs()  # bad data or base weights: exit 2 with nothing stored
            self.run_folder.put_text("spec.yaml", self.spec.to_yaml())
            # the durable step as this run's writer last recorded it, until the resume has verified checkpoints:
            # a manifest alone is not trusted (one copied to any step names it)
            self.syncer.set_status("running", durable_step=previous["durable_step"] if previous else 0,
                                   started_at=self.started)
            try:
                return self._train_and_report(pretrained, data)
            except Stopped:  # between a baseline's fit and the bundle's last upload: nothing half-committed
                return self._preempted(lost=0)
        except BaseException as e:
            error = no_space(e, self.work) or e  # a full disk anywhere: one line naming it, exit 2
            self.tracker.end("FAILED")
            if self.syncer.status and isinstance(error, InputError) and previous is not None:
                self.syncer.restore_status(previous)  # refused on input: the stored run stays as it was
            elif self.syncer.status:  # (an empty status: refused before anything was stored)
                self.syncer.set_status("failed", error=f"{type(error).__name__}: {error}")
            if error is e:
                raise
            raise error from None
        finally:  # a stop request's grace budget bounds this too: its SIGKILL does not wait for storage
            self.syncer.close(deadline=self.stop.deadline(self.spec.checkpoint.grace_seconds) if self.stop()
                              else time.monotonic() + FAILED_STATUS_BUDGET_S)

    def _read_inputs(self) -> tuple[Pretrained | None, PreparedData]:
        """The base weights and the data, as every rank reads them; the token cache is kept in storage too."""
        with self.console.status("preparing data"):
            return read_inputs(self.spec, self.work.parent / "datasets", StoredTokenCaches(self.run_folder.storage),
                               self.warn)

    def _train_and_report(self, pretrained: Pretrained | None, data: PreparedData) -> int:
        spec, console = self.spec, self.console
        device = resolve_device(spec.train.device)
        if distributed.any_rank(self.stop()):
            return self._preempted(lost=0)
        self._announce_data(data)
        if spec.model.kind in BASELINES:
            return self._fit_baseline(data)
        trainer = make_trainer(spec, data, device, should_stop=self.stop, pretrained=pretrained)
        base = {"init_from": pretrained.provenance()} if pretrained else {}
        metrics = MetricsLog(self.work / "metrics.jsonl", self.syncer, self._resume(trainer, device, base))
        for line in self.tracker.start(metrics.records, str(device)):
            console.print(escape(line), highlight=False)
        checkpointer = self._checkpointer(trainer, metrics, base)
        console.print(f"[bold]{escape(self.run_folder.uri)}[/]: {spec.model.kind}-{spec.model.size} {spec.task.kind} "
                      f"({count_parameters(trainer.model)[0]:,} parameters) "
                      f"on {device}; {len(data.vocab):,} tokens; examples (patients) "
                      + " / ".join(f"{s} {len(data.encoded[s])} ({n})" for s, n in data.patients().items()))

        with ProgressReporter(trainer.config.max_steps, start_step=trainer.state.step, console=console) as progress:
            trainer.callbacks = [metrics, checkpointer, progress, self.tracker]
            finished = trainer.fit()
        if not finished:
            return self._stopped_in_training(trainer, checkpointer, metrics)
        checkpointer.save_now(trainer)  # the final state, so a larger max_steps can continue this run
        checkpointer.raise_if_failed()
        distributed.barrier()
        metrics.close()
        self.lease.check()  # taken over meanwhile: this writer leaves no bundle and no 'completed'
        selection = self._select_best(trainer, device) if spec.task.kind in SUPERVISED else {}

        with console.status("evaluating on held-out patients"):
            held_out = trainer.evaluate(data.encoded["held_out"])
        if held_out is None:
            return self._preempted(lost=0, durable_step=checkpointer.durable_step)
        self.stop.check()
        self._write_trained_bundle(trainer, data, held_out, metrics.records, {
            "durable_step": checkpointer.durable_step, **selection, **base}, str(device))
        return self._completed(held_out, checkpointer.durable_step, stopped_early=trainer.state.stopped_early,
                               epoch_steps=trainer.config.max_steps if spec.train.epochs else None)

    def _announce_data(self, data: PreparedData) -> None:
        """Logs what happened to the labels, the token cache and the window; stores the vocabulary."""
        if data.label_report:
            self.console.print(escape(data.label_report.describe()), highlight=False)
        if data.token_cache:
            self.console.print(data.describe_token_cache(), highlight=False)
        if warning := coverage_warning(data.coverage):
            self.warn(warning)
        data.vocab.save(self.work / "vocab.json")
        self.run_folder.put_file("vocab.json", self.work / "vocab.json")

    def _checkpointer(self, trainer: Trainer, metrics: MetricsLog, base: dict[str, Any]) -> Checkpointer:
        """Timed checkpoints to the local tier (if any), then storage, each with the vocabulary and metrics."""
        spec, work = self.spec, self.work
        return Checkpointer(
            self.store, self.local.folder if self.local else work / "checkpoints", spec.checkpoint.interval_seconds,
            spec.checkpoint.keep_last, first_tier=self.local.commit if self.local else None,
            fallback_dir=work / "checkpoints",
            metadata=lambda: ({"spec_fingerprint": spec.fingerprint(), "versions": versions(), **base,
                               **self.tracker.checkpoint_fields()},
                              {"vocab.json": (work / "vocab.json").read_bytes(), "metrics.jsonl": metrics.snapshot()}),
            on_commit=lambda step: self.syncer.set_status(durable_step=step), warn=self.warn,
            best_metric=trainer.config.monitor, durable_step=trainer.state.step)

    def _stopped_in_training(self, trainer: Trainer, checkpointer: Checkpointer, metrics: MetricsLog) -> int:
        """A stop request mid-training: the final checkpoint within the grace budget, then exit 75."""
        committed = checkpointer.save_now(trainer, deadline=self.stop.deadline(self.spec.checkpoint.grace_seconds))
        distributed.barrier()  # the other processes exit once the checkpoint is committed
        metrics.close()
        if self.lease.lost:
            raise self.lease.lost
        if not committed and self.local and self.local.has(trainer.state.step):
            self.warn(f"step {trainer.state.step} is committed on the local tier ({self.local.folder}); a run "
                      "with this checkpoint.local_dir resumes from it")
        return self._preempted(lost=trainer.state.step - checkpointer.durable_step, committed=committed,
                               durable_step=checkpointer.durable_step)

    def _write_trained_bundle(self, trainer: Trainer, data: PreparedData, held_out: Any,
                              records: list[dict[str, Any]], facts: dict[str, Any], device: str) -> None:
        """A trained model's bundle: weights (a LoRA run: adapters and head), held-out figures and the facts."""
        spec, work, model, vocab = self.spec, self.work, trainer.model, data.vocab
        params_total, params_trainable = count_parameters(model)
        embeddings = self._code_embeddings(model, vocab) if spec.model.kind == "med2vec" else None
        facts = {**facts, **self._weights_facts(records)}
        if spec.lora:  # the bundle keeps the adapter and head only; `ehrseq export --merge` folds in the base
            facts["lora"] = spec.lora.model_dump()
            save_file({k: v.cpu().contiguous() for k, v in trainable_state_dict(model).items()}, work / ADAPTER)
            self.run_folder.put_file(ADAPTER, work / ADAPTER)
        write_bundle(self.run_folder, work, spec, None if spec.lora else model, held_out, records, {
            "params_total": params_total, "params_trainable": params_trainable, "model_config": vars(model.config),
            "steps": trainer.state.step, **facts, "underfit": trainer.state.underfit,
            **self._common_facts(data, held_out, device),
            **self._order_probe(data, lambda s: _scores(trainer.evaluate(
                TokenArrays.encode(s.histories, s.example_ids, vocab, spec.data.max_seq_len), lambda: False))),
            **({"code_neighbours": embeddings.neighbours} if embeddings else {}),
            **self._family_probe(model, data),
        }, warn=self.warn, extra_files=embeddings.files if embeddings else (),
            summary_md_extra=embeddings.markdown(vocab.counts) if embeddings else "", stop=self.stop.check)

    def _select_best(self, trainer: Trainer, device: torch.device) -> dict[str, Any]:
        """Loads the weights of the best tuning evaluation (its checkpoint, which pruning keeps) for scoring
        held-out and for the bundle; the final state stays the latest checkpoint, to continue from."""
        st = trainer.state
        if st.best_step is not None and st.best_step != st.step:
            manifest = next((m for m in self.store.manifests() if m["step"] == st.best_step), None)
            if manifest is None:
                raise RuntimeError(f"the best tuning evaluation's checkpoint (step {st.best_step}) is missing")
            folder = self.store.fetch(manifest, self.work / "best")
            load_trainable_state_dict(trainer.model, load_model_weights(folder, device))
        return {"best_metric": trainer.config.monitor, "best_step": st.best_step,
                "best_tuning_value": st.best_value, "stopped_early": st.stopped_early}

    def _fit_baseline(self, data: PreparedData) -> int:
        """bag_of_codes / cox / gbm: fitted in one go (no steps, no checkpoints), reported like BEHRT."""
        spec, split = self.spec, data.labelled["held_out"]
        self.tracker.start([], "cpu")
        with self.console.status(f"fitting {spec.model.kind} on {len(data.labelled['train'])} subjects"):
            baseline = self._until_stopped(lambda: fit_baseline(
                spec.model.kind, spec.task.kind, data.labelled["train"], data.labelled["tuning"],
                spec.task.horizon_days, spec.data.min_code_count, age=spec.model.age_feature,
                seed=training_seed(spec), code_histories=data.train_histories))
            scores = baseline.score(split)
        self.stop.check()
        if spec.task.kind == "binary":
            held_out = BinaryPredictions(split.subject_ids, split.prediction_times, split.labels, scores)
        else:
            held_out = SurvivalPredictions(split.subject_ids, split.prediction_times, split.times, split.labels,
                                           scores, spec.task.horizon_days)
        num_params = baseline.num_params
        write_bundle(self.run_folder, self.work, spec, None, held_out, [], {
            "params_total": num_params, "params_trainable": num_params, "steps": 0, "durable_step": 0,
            "baseline": {"features": baseline.features.describe(), "num_features": baseline.features.width,
                         **baseline.chosen},
            **self._common_facts(data, held_out, "cpu"), **self._order_probe(data, baseline.score),
        }, warn=self.warn, stop=self.stop.check)
        return self._completed(held_out, 0)

    def _until_stopped(self, fn: Callable[[], T]) -> T:
        """`fn` (a count baseline's fit, which has no safe points) on a worker thread while this one watches for a
        stop request: Stopped within a poll of the signal, the fit abandoned (the process exits 75 without it)."""
        outcome: list[tuple[bool, Any]] = []

        def work() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as e:  # re-raised on this thread
                outcome.append((False, e))

        worker = threading.Thread(target=work, name="baseline-fit", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            self.stop.check()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _order_probe(self, data: PreparedData, score: Callable[[LabelledSplit], np.ndarray]) -> dict[str, Any]:
        """Synthetic binary/survival runs: the A-first vs B-first probe on held-out patients, its true answer
        from the generator's order effect. `score` gives probabilities (binary; probed as log-odds) or risks."""
        if (self.spec.data.source != "synthetic" or self.spec.task.kind not in ("binary", "survival")
                or self.spec.data.synthetic.preset == "icu"):  # (no A and B there)
            return {}
        return order_probe_facts(data.labelled["held_out"], score, self.spec.task.kind,
                                 self.spec.data.synthetic.params())

    def _common_facts(self, data: PreparedData, held_out: Any, device: str) -> dict[str, Any]:
        """What every bundle says besides the model: compute, environment, spec and data, labels, oracles."""
        spec, world = self.spec, distributed.world_size()
        description = f"{spec.data.source} cohort" + (
            f" ({spec.data.num_patients} patients, seed {spec.seed}, preset {spec.data.synthetic.preset})"
            if spec.data.source == "synthetic" else f" from {spec.data.path}")
        # the oracles: none for labels from labels_path (the user's own) nor for next_visit (no true risk)
        oracles = not spec.task.labels_path and spec.task.kind in ("binary", "survival")
        return {**compute_facts(time.time() - self.started, device, spec.runtime.price_per_hour, world),
                "hardware": hardware_facts(device, world), "versions": versions(), "git_commit": git_commit(),
                "spec_fingerprint": spec.fingerprint(),
                **data_facts(data, spec.data.source, description, spec.data.visit_rule().describe(),
                             held_out.subject_ids),
                **label_facts(data, spec.task.labels_path or spec.task.label_task),
                **(oracle_facts(data.folder, spec.task.label_task, held_out) if oracles else {})}

    def _completed(self, held_out: Any, durable_step: int, **fields: Any) -> int:
        self.syncer.set_status("completed", durable_step=durable_step, finished_at=time.time(), **fields)
        # LeaseLost (exit 2) before saying completed; no stop request presses here, so a slow store gets longer
        if not self.syncer.flush(time.monotonic() + COMPLETED_STATUS_BUDGET_S):
            self.warn(f"status.json could not be stored as completed within {COMPLETED_STATUS_BUDGET_S:g} s (the "
                      "bundle is stored); run the same command again to record it")
        self.tracker.finish(self.work / "summary.json")
        self.console.print(f"[green]completed[/] {escape(self.run_folder.uri)}: "
                           + ", ".join(f"{k} {v:.4f}" for k, v in held_out.metrics().items()))
        return EXIT_COMPLETED

    def _code_embeddings(self, model: torch.nn.Module, vocab: Vocabulary) -> EmbeddingReport:
        """Med2Vec's code vectors with their index, nearest neighbours and a 2-D map; on the synthetic cohort the
        map colours its planted comorbidity clusters, the structure the vectors should recover."""
        synthetic = self.spec.data.source == "synthetic"
        groups = {code: f"cluster {k}" for code, k in code_clusters().items()} if synthetic else None
        return write_code_embeddings(model.med2vec.code_vectors(), vocab, self.work,
                                     f"{self.spec.resolved_run_id}: Med2Vec code vectors (PCA)", groups,
                                     "planted comorbidity cluster" if synthetic else "coding system")

    def _family_probe(self, model: torch.nn.Module, data: PreparedData) -> dict[str, Any]:
        """Pretraining (MLM, Med2Vec) on a synthetic cohort with a planted family: did it learn the family, and
        do the training patients' co-occurrence counts reveal it (the yardstick)?"""
        spec, vocab, train = self.spec, data.vocab, data.encoded["train"]
        if spec.task.kind not in ("mlm", "med2vec") or spec.data.source != "synthetic" \
                or not spec.data.synthetic.params().family_share:
            return {}
        vectors = model.med2vec.code_vectors() if spec.model.kind == "med2vec" else model.behrt.embeddings.code.weight
        probe = probe_vocabulary(vectors.detach().float().cpu().numpy(), vocab)  # (V, C)
        if probe is None:  # fewer than two family codes in the vocabulary
            return {}
        counted = probe_vocabulary(cooccurrence_vectors(train.codes, train.offsets, len(vocab)), vocab)  # (V, V)
        return {"family_probe": probe.to_dict(), "family_probe_cooccurrence": counted.to_dict()}

    def _weights_facts(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Checkpoint size and time per step: what a LoRA run saves against full fine-tuning."""
        newest = self.store.manifests()[-1:]
        step_times = sorted(r["seconds_per_step"] for r in records if "seconds_per_step" in r)
        return {"checkpoint_bytes": sum(f["size"] for f in newest[0]["files"].values()) if newest else None,
                "seconds_per_step": step_times[len(step_times) // 2] if step_times else None}

    def _resume(self, trainer: Trainer, device: torch.device, base: dict[str, Any]) -> bytes:
        """Loads the newest verified checkpoint from storage, if any; returns its metrics.jsonl.

        A fine-tuning checkpoint holds only what trained (a LoRA run: adapters and head); the base it
        was trained on must be the same weights, byte for byte, or the resumed model would be a different one.
        """
        tiers = [self.local.store, self.store] if self.local else [self.store]
        resumed = resume_snapshot(tiers, self.work / "resume", device, warn=self.warn)  # the other ranks' too
        newest = self.store.manifests()[-1:]  # every newer one was tried and found unusable, however high its step
        self.syncer.set_status(durable_step=newest[0]["step"] if newest else 0)
        if resumed is None:
            return b""
        manifest, folder, snapshot = resumed
        self.tracker.resume_from(snapshot["trainer"])
        stored_base = snapshot["trainer"].get("init_from")
        if stored_base != base.get("init_from"):
            raise InputError(f"{self.run_folder.uri} was trained on base {stored_base} but model.init_from now "
                             f"gives {base.get('init_from')}; resume with the original base or pass --fresh")
        restore(trainer, snapshot)
        self.console.print("[bold]resuming[/] " + escape(f"{self.run_folder.uri} from step {manifest['step']} "
                                                         f"({self.run_folder.uri}/{checkpoint_dir(manifest['step'])})"))
        return (folder / "metrics.jsonl").read_bytes()

    def _preempted(self, lost: int, committed: bool = True, durable_step: int | None = None) -> int:
        fields = {} if durable_step is None else {"durable_step": durable_step}
        self.tracker.end("KILLED")  # TensorBoard's file goes with the syncer's last upload
        self.syncer.set_status("preempted", reason=self.stop.name, steps_lost=lost, **fields)
        synced = self.syncer.close(deadline=self.stop.deadline(self.spec.checkpoint.grace_seconds))
        durable = self.syncer.status["durable_step"]
        note = "" if committed else " (the final checkpoint missed the grace budget; the previous one stands)"
        note += "" if synced else " (status.json could not be updated in time)"
        self.console.print(f"[yellow]preempted[/] by {self.stop.name}: durable step {durable}, {lost} steps lost"
                           f"{note}. Run the same command again to resume.")
        return EXIT_PREEMPTED


def _scores(predictions: BinaryPredictions | SurvivalPredictions) -> np.ndarray:
    """Probabilities (binary) or risks (survival), as a baseline's `score` gives them."""
    return predictions.probabilities if isinstance(predictions, BinaryPredictions) else predictions.risks
