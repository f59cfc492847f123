"""Preemption and resume: SIGTERM at chosen points, exact continuation, commit protocol."""

import json
import os
import signal

import pytest
import torch
from rich.console import Console

from ehrseq.errors import InputError
from ehrseq.tasks.mlm import MLMTask
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec

from support.helpers import SMALL_SPEC

# 320 training patients, batch 32: 10 batches per epoch. Evaluation every 20 steps.
TINY = ["data.num_patients=400", "data.max_seq_len=48", "train.max_steps=30", "train.log_every=1",
        "train.eval_every=20", "train.batch_size=32", "checkpoint.interval_seconds=1000"]


def spec_for(tmp_path, name, *extra):
    return load_spec(SMALL_SPEC, [*TINY, f"name={name}", f"storage.uri=file://{tmp_path}/runs",
                                  f"runtime.work_dir={tmp_path}/work", *extra])


def run(spec):
    return run_job(spec, Console(stderr=True, quiet=True))


def records(tmp_path, name):
    lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    volatile = {"time", "tokens_per_s", "seconds_per_step"}
    return [{k: v for k, v in json.loads(line).items() if k not in volatile} for line in lines]


def sigterm_at_training_step(monkeypatch, step):
    original, calls = MLMTask.training_loss, {"n": 0}

    def training_loss(self, *args):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; honoured at the next safe point
        return original(self, *args)

    monkeypatch.setattr(MLMTask, "training_loss", training_loss)


def sigterm_during_evaluation(monkeypatch, nth):
    original, calls = MLMTask.evaluate, {"n": 0}

    def evaluate(self, model, batches, device, seed, should_stop):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batches, device, seed, should_stop)

    monkeypatch.setattr(MLMTask, "evaluate", evaluate)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    assert run(spec_for(tmp, "r")) == 0
    return records(tmp, "r")


@pytest.mark.parametrize("case,interrupt,expected_durable", [
    ("mid-epoch", lambda mp: sigterm_at_training_step(mp, 15), 15),
    ("epoch boundary", lambda mp: sigterm_at_training_step(mp, 10), 10),
    ("during evaluation", lambda mp: sigterm_during_evaluation(mp, 1), 20),
])
def test_sigterm_then_resume_repeats_the_uninterrupted_losses_bit_for_bit(
        case, interrupt, expected_durable, straight, tmp_path, monkeypatch):
    spec = spec_for(tmp_path, "r")
    with monkeypatch.context() as mp:
        interrupt(mp)
        assert run(spec) == EXIT_PREEMPTED
    status = json.loads((tmp_path / "runs/r/status.json").read_text())
    assert status["state"] == "preempted" and status["durable_step"] == expected_durable
    assert status["reason"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    assert run(spec) == 0
    assert records(tmp_path, "r") == straight  # every loss and tuning metric, exactly
    assert json.loads((tmp_path / "runs/r/status.json").read_text())["state"] == "completed"


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path, monkeypatch, capsys):
    spec = spec_for(tmp_path, "r", "checkpoint.interval_seconds=0.000001")  # a checkpoint every step
    with monkeypatch.context() as mp:
        sigterm_at_training_step(mp, 12)
        assert run(spec) == EXIT_PREEMPTED
    ckpts = sorted((tmp_path / "runs/r/checkpoints").iterdir())
    assert [p.name for p in ckpts][-1] == "step-000000012" and len(ckpts) >= 2
    # at most one upload is in flight, so the checkpoint before 12 is whichever committed last (11, 10, ...)
    previous = int(ckpts[-2].name.removeprefix("step-"))
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")  # bit rot in the newest
    (tmp_path / "runs/r/checkpoints/step-000000099").mkdir()  # an upload killed before its manifest
    (tmp_path / "runs/r/checkpoints/step-000000099/model.safetensors").write_bytes(b"partial")

    console = Console(stderr=True, record=True, width=400)
    assert run_job(spec, console) == 0
    out = console.export_text()
    assert "step 12 is unusable" in out and "resuming" in out and f"from step {previous} " in out
    assert records(tmp_path, "r") == straight


def test_changed_model_is_refused_but_more_steps_continue(tmp_path):
    assert run(spec_for(tmp_path, "r")) == 0
    with pytest.raises(InputError, match=r"model.size: 'small' -> 'medium'"):
        run(spec_for(tmp_path, "r", "model.size=medium"))
    assert run(spec_for(tmp_path, "r", "train.max_steps=40")) == 0  # extends the completed run
    steps = [r["step"] for r in records(tmp_path, "r") if r["split"] == "train"]
    assert steps == list(range(1, 41))
    assert json.loads((tmp_path / "runs/r/status.json").read_text())["durable_step"] == 40


def test_fresh_starts_over(tmp_path):
    spec = spec_for(tmp_path, "r")
    assert run(spec) == 0
    (tmp_path / "runs/r/stale.txt").write_text("x")
    assert run_job(spec, Console(quiet=True), fresh=True) == 0
    assert not (tmp_path / "runs/r/stale.txt").exists()
    assert len([r for r in records(tmp_path, "r") if r["split"] == "train"]) == 30


def test_trainer_state_round_trips_without_pickle(tmp_path):
    """Everything in a checkpoint loads with weights_only=True (no arbitrary unpickling)."""
    spec = spec_for(tmp_path, "r", "checkpoint.interval_seconds=0.000001", "train.max_steps=3")
    assert run(spec) == 0
    newest = sorted((tmp_path / "runs/r/checkpoints").iterdir())[-1]
    for name in ("optimizer.pt", "rng.pt"):
        torch.load(newest / name, weights_only=True)
    manifest = json.loads((newest / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "rng.pt", "trainer.json",
                                      "vocab.json", "metrics.jsonl"}
