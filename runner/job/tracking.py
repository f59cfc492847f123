"""Live views of a run that survive preemption: TensorBoard event files in the run folder, one MLflow run.

Both are fed by the trainer's records (the same ones metrics.jsonl holds) through one Callback, so
ehrseq's training code knows nothing of either. A resumed run must look like one uninterrupted run:

- TensorBoard: the event file is rebuilt at every start from the checkpoint's metrics.jsonl (the records
  up to the resume point), then appended to, and stored under one fixed name in `tensorboard/`, so the
  copy in storage is replaced as a whole and never holds a step twice or out of order.
- MLflow: the run id is saved in every checkpoint (trainer.json `mlflow_run_id`), so a resume on a fresh
  pod reopens the same run. Each batch of metrics carries a tag with the last step sent per split; on
  reopening, records up to that step (logged before the preemption, replayed identically now) are not sent
  again, and records the server missed (it was down) are sent from the checkpoint's copy.
  A preempted run is marked KILLED, a resumed one RUNNING again, a completed one FINISHED.

MLflow calls run on a background thread with short HTTP retries: a slow or unreachable server gives a
warning and queued records, never a stalled or failed training run.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrseq.errors import InputError
from ehrseq.reports.provenance import git_commit
from ehrseq.training.trainer import Callback
from ehrseq_runner.spec.job_spec import JobSpec, MlflowSpec, TrackingSpec, flatten
from ehrseq_runner.storage.sync import Syncer

TENSORBOARD_DIR = "tensorboard"
EVENTS_NAME = "events.out.tfevents.ehrseq"  # one fixed name: each upload replaces the stored file
RUN_ID_FIELD = "mlflow_run_id"  # in trainer.json of every checkpoint
LOGGED_STEP_TAG = "ehrseq.logged_step."  # + split: the last step of that split sent to MLflow
SYNC_EVERY_S = 10.0
SEND_EVERY_S = 2.0
RECORDS_PER_BATCH = 50  # MLflow accepts at most 1,000 metrics and 100 params per log_batch
PARAMS_PER_BATCH = 100
PREEMPTED_BUDGET_S = 1.0  # of the SIGTERM grace time, after the checkpoint: the rest goes to status.json
FINISH_BUDGET_S = 60.0
NOT_METRICS = ("step", "split", "time")


def check_installed(tracking: TrackingSpec) -> None:
    """Before any work: an enabled tracker whose package is missing is an input error naming the extra."""
    for enabled, module, extra in ((tracking.tensorboard, "torch.utils.tensorboard", "tensorboard"),
                                   (tracking.mlflow is not None, "mlflow.tracking", "mlflow")):
        if not enabled:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            field = "tracking.tensorboard" if extra == "tensorboard" else "tracking.mlflow"
            raise InputError(f"{field}: needs the {extra} package; install it with "
                             f"pip install 'ehrseq[{extra}]'") from None
    if tracking.mlflow is not None:
        mlflow_uri(tracking.mlflow)


def mlflow_uri(settings: MlflowSpec) -> str:
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError("tracking.mlflow.tracking_uri: not set and MLFLOW_TRACKING_URI is empty; give the "
                         "server's URL, e.g. --set tracking.mlflow.tracking_uri=http://127.0.0.1:5000")
    return uri


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """A training/evaluation record's numbers under `split/name` (train/loss, tuning/auroc, ...)."""
    return {f"{record['split']}/{k}": float(v) for k, v in record.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def held_out_record(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json's held-out metrics and their 95% interval bounds (`auroc_ci_low`, ...) as a record."""
    record = {"step": summary.get("steps") or 0, "split": "held_out", "time": time.time(),
              **{k: float(v) for k, v in summary["metrics"].items() if v is not None}}
    for name, (low, high) in summary.get("metrics_ci", {}).items():
        record.update({f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
    return record


def log_ladder(settings: MlflowSpec, name: str, run_uris: list[str], report: Path,
               warn: Callable[[str], None]) -> str | None:
    """A ladder's report folder as one parent MLflow run (reused when the ladder is re-run), its runs (found by
    their `ehrseq.run_uri` tag) nested under it; returns the parent's id, None if MLflow failed (a warning)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_uri(settings))
        experiment = client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment)
        found = client.search_runs([experiment_id], f"tags.`ehrseq.ladder` = '{name}'", max_results=1)
        parent = found[0].info.run_id if found else client.create_run(
            experiment_id, run_name=f"ladder {name}", tags={"ehrseq.ladder": name}).info.run_id
        for uri in (u for u in run_uris if "'" not in u):  # a quote would end the filter's string
            for child in client.search_runs([experiment_id], f"tags.`ehrseq.run_uri` = '{uri}'"):
                client.set_tag(child.info.run_id, "mlflow.parentRunId", parent)
        client.log_artifacts(parent, str(report))
        client.set_terminated(parent, "FINISHED")
        return parent
    except Exception as e:  # the report on disk stands; MLflow is the extra view
        warn(f"MLflow: the ladder report was not logged ({type(e).__name__}: {str(e)[:300]})")
        return None


class TensorBoardLog:
    """One event file, rebuilt from the records so far at each start, copied to storage every few seconds."""

    def __init__(self, folder: Path, syncer: Syncer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(folder, ignore_errors=True)  # a previous pod's file on a kept work dir: rebuilt below
        self.folder, self.syncer = folder, syncer
        self.writer = SummaryWriter(str(folder))
        self._last_sync = time.monotonic()

    def write(self, step: int, values: dict[str, float], walltime: float) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step, walltime=walltime)

    def sync(self) -> None:
        self.writer.flush()
        path = next(self.folder.glob("events.out.tfevents.*"))
        self.syncer.put_bytes(f"{TENSORBOARD_DIR}/{EVENTS_NAME}", path.read_bytes())
        self._last_sync = time.monotonic()

    def sync_if_due(self) -> None:
        if time.monotonic() - self._last_sync >= SYNC_EVERY_S:
            self.sync()

    def close(self) -> None:
        self.sync()
        self.writer.close()


class MlflowLog:
    """One MLflow run, reopened across resumes; metrics sent in batches from a background thread."""

    def __init__(self, uri: str, experiment: str, warn: Callable[[str], None]) -> None:
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(name, value)  # mlflow's defaults retry for minutes; the user's settings win
        from mlflow.tracking import MlflowClient

        self.client, self.uri, self.experiment, self.warn = MlflowClient(uri), uri, experiment, warn
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # split -> last step sent (or queued)
        self._records: list[dict[str, Any]] = []
        self._actions: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing_at: float | None = None  # time.monotonic deadline once closing
        self._thread: threading.Thread | None = None

    def open(self, reopen: str | None, name: str, params: dict[str, str], tags: dict[str, str]) -> bool:
        """Reopens run `reopen` (True) or creates one; starts the sender."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        if reopen:
            try:
                run = self.client.get_run(reopen)
                self.logged = {k[len(LOGGED_STEP_TAG):]: int(v) for k, v in run.data.tags.items()
                               if k.startswith(LOGGED_STEP_TAG)}
                self.client.update_run(reopen, status="RUNNING")
                self.run_id = reopen
            except MlflowException as e:
                self.warn(f"MLflow run {reopen} from the checkpoint cannot be reopened ({e}); starting a new one")
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])
        self._thread = threading.Thread(target=self._loop, name="mlflow", daemon=True)
        self._thread.start()
        return reopen == self.run_id

    def log(self, record: dict[str, Any]) -> None:
        """Queues a record unless a record of its split at that step or later was already sent."""
        with self._lock:
            if record["step"] <= self.logged.get(record["split"], -1):
                return
            self.logged[record["split"]] = record["step"]
            self._records.append(record)
        self._wake.set()

    def then(self, action: Callable[[], None]) -> None:
        """Runs `action` on the sender after the records queued so far (retried with them while failing)."""
        with self._lock:
            self._actions.append(action)
        self._wake.set()

    def close(self, budget_s: float) -> bool:
        """Sends what is queued within `budget_s`; False if something could not be sent."""
        self._closing_at = time.monotonic() + budget_s
        self._wake.set()
        if self._thread is not None:
            self._thread.join(budget_s)
        return self._idle()

    def _loop(self) -> None:
        failing = False
        while True:
            self._wake.wait(SEND_EVERY_S)
            self._wake.clear()
            try:
                self._send()
                if failing:
                    self.warn("MLflow is reachable again; the queued metrics were sent")
                failing = False
            except Exception as e:  # any client or server error: tracking never stops training
                if not failing:
                    self.warn(f"MLflow: {type(e).__name__}: {str(e)[:300]}; training continues, metrics are "
                              "kept and sent when the server answers")
                failing = True
            if self._closing_at is not None and (self._idle() or time.monotonic() >= self._closing_at):
                return

    def _idle(self) -> bool:
        with self._lock:
            return not (self._records or self._actions)

    def _send(self) -> None:
        from mlflow.entities import Metric, RunTag

        while True:
            with self._lock:
                batch = self._records[:RECORDS_PER_BATCH]
            if not batch:
                break
            metrics = [Metric(k, v, int(r["time"] * 1000), r["step"]) for r in batch
                       for k, v in metric_values(r).items()]
            marks = {}
            for r in batch:
                marks[r["split"]] = r["step"]
            self.client.log_batch(self.run_id, metrics=metrics,
                                  tags=[RunTag(LOGGED_STEP_TAG + s, str(step)) for s, step in marks.items()])
            with self._lock:
                del self._records[:len(batch)]
        while self._actions:
            self._actions[0]()
            with self._lock:
                self._actions.pop(0)


class Tracker(Callback):
    """TensorBoard and/or MLflow for one job, as the spec's `tracking` section asks; inert when both are off."""

    def __init__(self, spec: JobSpec, run_uri: str, work: Path, syncer: Syncer,
                 warn: Callable[[str], None]) -> None:
        self.spec, self.run_uri, self.work, self.syncer, self.warn = spec, run_uri, work, syncer, warn
        self.tensorboard: TensorBoardLog | None = None
        self.mlflow: MlflowLog | None = None
        self._reopen: str | None = None
        self._ended = False

    def resume_from(self, trainer_json: dict[str, Any]) -> None:
        """The resumed checkpoint's trainer.json: the MLflow run to continue."""
        self._reopen = trainer_json.get(RUN_ID_FIELD)

    def checkpoint_fields(self) -> dict[str, Any]:
        """What every checkpoint's trainer.json keeps for the next pod."""
        return {RUN_ID_FIELD: self.mlflow.run_id} if self.mlflow and self.mlflow.run_id else {}

    def start(self, records: list[dict[str, Any]], device: str) -> list[str]:
        """Opens the trackers with the records so far (a resume's, from its checkpoint); returns lines to print."""
        tracking, lines = self.spec.tracking, []
        if tracking.tensorboard:
            self.tensorboard = TensorBoardLog(self.work / TENSORBOARD_DIR, self.syncer)
            lines.append(f"TensorBoard: {self.run_uri}/{TENSORBOARD_DIR}/ (pull the run, then tensorboard "
                         "--logdir DEST/tensorboard)")
        if tracking.mlflow is not None:
            mlflow = MlflowLog(mlflow_uri(tracking.mlflow), tracking.mlflow.experiment, self.warn)
            try:
                reopened = mlflow.open(self._reopen, self.spec.resolved_run_id, self._params(), self._tags(device))
                self.mlflow = mlflow
                lines.append(f"MLflow: run {mlflow.run_id} in experiment {tracking.mlflow.experiment!r}"
                             + (" (reopened)" if reopened else ""))
            except Exception as e:  # a tracker that cannot start must not stop the run
                self.warn(f"MLflow unreachable ({type(e).__name__}: {str(e)[:300]}); this run is not tracked "
                          "in MLflow")
        for record in records:
            self.on_record(record)
        if self.tensorboard:
            self.tensorboard.sync()
        return lines

    def on_record(self, record: dict[str, Any]) -> None:
        if self.tensorboard:
            self.tensorboard.write(record["step"], metric_values(record), record["time"])
            self.tensorboard.sync_if_due()
        if self.mlflow:
            self.mlflow.log(record)

    def finish(self, summary_path: Path) -> None:
        """A completed run: held-out metrics with their intervals, the bundle's plots and summaries, FINISHED."""
        if self._ended:
            return
        self._ended = True
        summary = json.loads(summary_path.read_text())
        self.on_record(held_out_record(summary))
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow:
            run_id, client, work = self.mlflow.run_id, self.mlflow.client, summary_path.parent
            if summary.get("data_fingerprint"):
                self.mlflow.then(lambda: client.set_tag(run_id, "ehrseq.data_fingerprint",
                                                        summary["data_fingerprint"]))
            for name in [*summary.get("plots", []), "SUMMARY.md", "summary.json"]:
                folder = str(Path(name).parent) if "/" in name else None
                self.mlflow.then(lambda name=name, folder=folder: client.log_artifact(run_id, str(work / name), folder))
            self.mlflow.then(lambda: client.set_terminated(run_id, "FINISHED"))
            if not self.mlflow.close(FINISH_BUDGET_S):
                self.warn(f"MLflow: the final metrics or artifacts of run {run_id} could not be sent in "
                          f"{FINISH_BUDGET_S:.0f} s; the bundle in storage has them")

    def end(self, state: str, budget_s: float = PREEMPTED_BUDGET_S) -> None:
        """A stopped run: TensorBoard's file to storage with the rest, the MLflow run marked `state`
        (KILLED when preempted, FAILED) within `budget_s`, else left RUNNING until the resume reopens it."""
        if self._ended:
            return
        self._ended = True
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow:
            run_id, client = self.mlflow.run_id, self.mlflow.client
            self.mlflow.then(lambda: client.set_terminated(run_id, state))
            self.mlflow.close(budget_s)

    def _params(self) -> dict[str, str]:
        """The resolved spec, flattened (`train.lr`, ...); MLflow params are strings."""
        return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                for k, v in flatten(self.spec.model_dump(mode="json")).items()}

    def _tags(self, device: str) -> dict[str, str]:
        tags = {"ehrseq.run_id": self.spec.resolved_run_id, "ehrseq.run_uri": self.run_uri,
                "ehrseq.spec_fingerprint": self.spec.fingerprint(), "ehrseq.device": device,
                "ehrseq.model": f"{self.spec.model.kind}-{self.spec.model.size}", "ehrseq.task": self.spec.task.kind,
                "mlflow.source.git.commit": git_commit()}
        return {k: v for k, v in tags.items() if v}
