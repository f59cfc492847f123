"""Experiment tracking (runner/job/tracking.py): TensorBoard and a real MLflow server across preemptions."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from rich.console import Console

from ehrseq.errors import InputError
from ehrseq.tasks.mlm import MLMTask
from ehrseq_runner.commands.ladder import run_ladder
from ehrseq_runner.job.run import run_job
from ehrseq_runner.job.tracking import EVENTS_NAME, check_installed
from ehrseq_runner.spec.job_spec import SpecError, load_spec
from ehrseq_runner.spec.ladder_spec import load_ladder

from support.helpers import SMALL_SPEC

TINY = ["data.num_patients=400", "data.max_seq_len=48", "train.max_steps=60", "train.log_every=1",
        "train.eval_every=20", "checkpoint.interval_seconds=0.000001", "tracking.tensorboard=true"]


def spec_for(tmp_path, work, *extra):
    return load_spec(SMALL_SPEC, [*TINY, "name=r", f"storage.uri=file://{tmp_path}/runs",
                                  f"runtime.work_dir={tmp_path}/{work}", *extra])


def run(spec, console=None):
    return run_job(spec, console or Console(stderr=True, quiet=True))


def sigterm_at_call(monkeypatch, n):
    """SIGTERM to this process during the n-th training step of the next run (honoured after that step)."""
    original, calls = MLMTask.training_loss, {"n": 0}

    def training_loss(self, *args):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    monkeypatch.setattr(MLMTask, "training_loss", training_loss)


def metrics_records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "runs/r/metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# -- the spec --------------------------------------------------------------------------------------

def test_tracking_is_off_by_default_and_outside_the_fingerprint(tmp_path):
    plain = spec_for(tmp_path, "w", "tracking.tensorboard=false")
    assert plain.tracking.tensorboard is False and plain.tracking.mlflow is None
    tracked = spec_for(tmp_path, "w", "tracking.mlflow.tracking_uri=http://127.0.0.1:1")
    assert tracked.tracking.mlflow.experiment == "ehrseq"
    assert tracked.fingerprint() == plain.fingerprint()  # tracking never changes what trains


@pytest.mark.parametrize("override,message", [
    ("tracking.mlflow.uri=http://x", "tracking.mlflow.uri: unknown field"),
    ("tracking.wandb=true", "tracking.wandb: unknown field"),
    ("tracking.mlflow.tracking_uri=http://me:secret@host:5000", "tracking.mlflow.tracking_uri: the URL holds "
                                                                 "credentials"),
])
def test_bad_tracking_fields_name_the_field(tmp_path, override, message):
    with pytest.raises(SpecError, match=message) as e:
        spec_for(tmp_path, "w", override)
    assert "secret" not in str(e.value)


def test_mlflow_uri_from_the_environment_or_a_clear_error(tmp_path, monkeypatch):
    spec = spec_for(tmp_path, "w", "tracking.mlflow.experiment=x")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="tracking.mlflow.tracking_uri: not set and MLFLOW_TRACKING_URI is empty"):
        check_installed(spec.tracking)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    check_installed(spec.tracking)


@pytest.mark.parametrize("module,field,extra", [("mlflow.tracking", "tracking.mlflow", "mlflow"),
                                                ("torch.utils.tensorboard", "tracking.tensorboard", "tensorboard")])
def test_a_missing_tracker_package_names_the_extra_to_install(tmp_path, monkeypatch, module, field, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError, as without the package
    spec = spec_for(tmp_path, "w", "tracking.mlflow.tracking_uri=http://127.0.0.1:1")
    with pytest.raises(InputError, match=rf"{field}: needs the {extra} package; install it with "
                                         rf"pip install 'ehrseq\[{extra}\]'"):
        run(spec)
    assert not (tmp_path / "runs").exists()  # refused before anything is stored


# -- TensorBoard without a server, MLflow down -----------------------------------------------------

def test_unreachable_mlflow_warns_and_the_run_completes_with_tensorboard_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = spec_for(tmp_path, "w", f"tracking.mlflow.tracking_uri=http://127.0.0.1:{port}", "train.max_steps=20")
    assert run(spec, Console(stderr=True, width=200)) == 0
    assert "MLflow unreachable" in capsys.readouterr().err
    scalars = tensorboard_scalars(tmp_path / "runs/r/tensorboard")
    train = [r for r in metrics_records(tmp_path) if r["split"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train] == list(range(1, 21))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [s for s, _ in scalars["held_out/mlm_loss"]] == [20]
    assert {"train/lr", "train/tokens_per_s", "tuning/mlm_loss", "held_out/mlm_loss_ci_low"} <= set(scalars)


# -- a real MLflow server: SIGTERM, a lost final checkpoint, resumes in fresh work dirs ----------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite backend on a free port; artifacts served by it."""
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination",
         str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300  # the first start migrates the database
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn process it starts
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log.close()


@pytest.mark.slow
def test_preempted_and_resumed_twice_is_one_mlflow_run_with_every_step_once(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    tracked = [f"tracking.mlflow.tracking_uri={mlflow_server}", "tracking.mlflow.experiment=preempted"]
    status = lambda: json.loads((tmp_path / "runs/r/status.json").read_text())  # noqa: E731

    sigterm_at_call(monkeypatch, 25)  # the final checkpoint is committed at step 25
    assert run(spec_for(tmp_path, "pod1", *tracked)) == 75
    (first,) = client.search_runs([client.get_experiment_by_name("preempted").experiment_id])
    assert first.info.status == "KILLED" and status()["durable_step"] == 25

    # a fresh pod; no timed checkpoint this time (only the new best at the step-40 evaluation, committed in
    # the background) and the final one misses its grace time: steps after the durable one, up to 45, were
    # logged to MLflow and are replayed identically by the next resume
    sigterm_at_call(monkeypatch, 20)  # step 45
    assert run(spec_for(tmp_path, "pod2", *tracked, "checkpoint.interval_seconds=3600",
                        "checkpoint.grace_seconds=0.000001")) == 75
    logged = [m.step for m in client.get_metric_history(first.info.run_id, "train/loss")]
    assert status()["durable_step"] in (25, 40) and max(logged) == 45, "the replay case: steps logged past it"
    assert client.get_run(first.info.run_id).info.status == "KILLED"

    monkeypatch.undo()
    assert run(spec_for(tmp_path, "pod3", *tracked)) == 0

    (final,) = client.search_runs([client.get_experiment_by_name("preempted").experiment_id])
    assert final.info.run_id == first.info.run_id and final.info.status == "FINISHED"
    records = metrics_records(tmp_path)
    for split, name in (("train", "loss"), ("tuning", "mlm_loss")):
        history = client.get_metric_history(final.info.run_id, f"{split}/{name}")
        expected = [r for r in records if r["split"] == split]
        assert [m.step for m in history] == [r["step"] for r in expected]  # each step once, in order
        assert [m.value for m in history] == [r[name] for r in expected]  # the replayed values were identical
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 61))

    summary = json.loads((tmp_path / "runs/r/summary.json").read_text())
    metrics = final.data.metrics
    assert metrics["held_out/mlm_loss"] == summary["metrics"]["mlm_loss"]
    assert [metrics["held_out/mlm_loss_ci_low"], metrics["held_out/mlm_loss_ci_high"]] == \
        summary["metrics_ci"]["mlm_loss"]
    assert final.data.params["train.max_steps"] == "60" and final.data.params["model.size"] == "small"
    tags = final.data.tags
    assert tags["ehrseq.run_id"] == "r" and tags["ehrseq.device"] == "cpu"
    assert tags["ehrseq.spec_fingerprint"] == summary["spec_fingerprint"]
    assert tags["ehrseq.data_fingerprint"] == summary["data_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id)}
    assert {"SUMMARY.md", "summary.json", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(final.info.run_id, "plots")} == \
        {f"plots/{p.name}" for p in (tmp_path / "runs/r/plots").iterdir()}

    # TensorBoard: the stored event file holds the same curves, each step once
    # (file:// storage keeps a hidden lock file beside an object replaced in place; listings never show it)
    assert [p.name for p in (tmp_path / "runs/r/tensorboard").iterdir() if not p.name.startswith(".")] == [EVENTS_NAME]
    scalars = tensorboard_scalars(tmp_path / "runs/r/tensorboard")
    train = [r for r in records if r["split"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 61))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [s for s, _ in scalars["tuning/mlm_loss"]] == [20, 40, 60]


LADDER = """\
name: lad
cohorts: [{name: order, data: {num_patients: 300, max_seq_len: 32, synthetic: {preset: order}}}]
task: {kind: binary}
resamples: 100
replicates: 1
rungs: [{name: bag, model: {kind: bag_of_codes}}, {name: bag-no-age, model: {kind: bag_of_codes, age_feature: false}}]
storage: {uri: "file://STORAGE"}
runtime: {work_dir: WORK}
tracking: {mlflow: {tracking_uri: URI, experiment: ladder}}
"""


@pytest.mark.slow
def test_a_ladder_is_one_parent_mlflow_run_with_its_report_and_its_runs_nested(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    path = tmp_path / "ladder.yaml"
    path.write_text(LADDER.replace("STORAGE", str(tmp_path / "runs")).replace("WORK", str(tmp_path / "work"))
                    .replace("URI", mlflow_server))
    ladder, runs = load_ladder(path)
    assert run_ladder(ladder, runs, tmp_path / "report", Console(quiet=True)) == 0

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ladder").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`ehrseq.ladder` = 'lad'")
    assert parent.info.status == "FINISHED"
    assert {"report.md", "ladder.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["lad-order-bag-kall-r0", "lad-order-bag-no-age-kall-r0"]
    for child in children:
        summary = json.loads((tmp_path / "runs" / child.info.run_name / "summary.json").read_text())
        assert child.info.status == "FINISHED"
        assert child.data.metrics["held_out/auroc"] == summary["metrics"]["auroc"]
        assert child.data.metrics["held_out/auroc_ci_low"] == summary["metrics_ci"]["auroc"][0]
