"""A run's length at every label budget: the floor in steps, evaluations and patience per (stretched) epoch,
warm-up scaled to the length, patience that cannot stop a run before the floor, and the underfit flag."""

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from ehrseq.training.length import Length, run_length
from ehrseq.training.trainer import TrainConfig, Trainer, TrainState
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec, SpecError, validate_job

RECIPE = {"epochs": 3, "min_steps": 300, "evals_per_epoch": 4, "patience_epochs": 1}  # jobs/behrt_binary.yaml's


def test_a_large_training_split_is_not_touched_by_the_floor():
    # 12,000 examples, batch 32: 375 steps an epoch, 1,125 for 3 epochs, as without a floor
    assert run_length(12000, 32, 20000, **RECIPE) == Length(steps=1125, eval_every=94, patience=4, min_steps=300,
                                                            warmup_steps=112)
    assert run_length(12000, 32, 20000, **{**RECIPE, "min_steps": 0}).steps == 1125


def test_small_k_is_stretched_to_the_floor_with_its_evaluations_patience_and_warmup():
    # k=128: 4 steps an epoch, 12 for 3 epochs; the floor makes it 300, each epoch 100 steps
    assert run_length(128, 32, 20000, **RECIPE) == Length(steps=300, eval_every=25, patience=4, min_steps=300,
                                                          warmup_steps=30)
    # fewer examples than a batch: one step a pass, still 300 steps
    assert run_length(20, 32, 20000, **RECIPE).steps == 300
    # max_steps stays an upper bound; the cadence is the stretched epoch's
    assert run_length(128, 32, 200, **RECIPE) == Length(steps=200, eval_every=25, patience=4, min_steps=300,
                                                        warmup_steps=20)
    # more epochs than the floor needs: the epochs decide (60 x 4 steps)
    assert run_length(128, 32, 20000, **{**RECIPE, "epochs": 60}).steps == 240 + 60


def test_without_epochs_the_run_is_max_steps_with_no_floor():
    length = run_length(128, 32, 500, min_steps=300, eval_every=50, patience=3)
    assert length == Length(steps=500, eval_every=50, patience=3, min_steps=0, warmup_steps=50)
    assert run_length(128, 32, 500, eval_every=0, patience_epochs=2).patience is None  # one evaluation: no patience
    assert run_length(128, 32, 500, eval_every=8, patience_epochs=2, warmup_steps=7) == Length(
        steps=500, eval_every=8, patience=1, min_steps=0, warmup_steps=7)  # 2 passes = 8 steps = 1 evaluation


def track(values: list[float], min_steps: int, patience: int = 2, every: int = 10) -> TrainState:
    """The trainer's bookkeeping over tuning evaluations at steps every, 2 x every, ... (AUROC: higher is better),
    stopping where the trainer would."""
    trainer = SimpleNamespace(config=TrainConfig(max_steps=1000, higher_is_better=True, patience=patience,
                                                 min_steps=min_steps), state=TrainState())
    for i, value in enumerate(values, 1):
        trainer.state.step = i * every
        Trainer._track_best(trainer, value)
        if trainer.state.stopped_early:
            break
    return trainer.state


def test_patience_cannot_stop_a_run_before_the_floor():
    falling = [0.60, 0.55, 0.54, 0.53, 0.52, 0.51]  # best at step 10
    assert track(falling, min_steps=0).step == 30  # patience 2 runs out at the third evaluation
    stopped = track(falling, min_steps=45)
    assert (stopped.step, stopped.best_step, stopped.stopped_early) == (50, 10, True)


def test_underfit_is_the_best_evaluation_being_the_last():
    assert track([0.5, 0.6, 0.7], min_steps=0).underfit
    assert not track([0.5, 0.7, 0.6], min_steps=0).underfit
    assert not TrainState().underfit  # no evaluation yet
    assert not track([float("nan")], min_steps=0).underfit  # nothing measured


def test_patience_is_set_in_evaluations_or_in_epochs_not_both():
    raw = {"name": "x", "task": {"kind": "binary"}, "train": {"epochs": 3, "patience": 4, "patience_epochs": 1}}
    with pytest.raises(SpecError, match="train.patience_epochs: .*train.patience is 4 .* set one of the two"):
        validate_job(raw, "spec")
    assert JobSpec.model_validate({"name": "x"}).train.min_steps == 300


def test_a_run_whose_best_evaluation_is_its_last_says_it_underfit(tmp_path):
    spec = JobSpec.model_validate({
        "name": "u", "data": {"num_patients": 200, "max_seq_len": 32}, "task": {"kind": "binary"},
        "train": {"batch_size": 16, "device": "cpu", "max_steps": 2, "eval_every": 0},  # one evaluation: the last
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})
    assert run_job(spec, Console(quiet=True)) == 0
    summary = json.loads((tmp_path / "runs/u/summary.json").read_text())
    assert summary["underfit"] is True and summary["best_step"] == summary["steps"] == 2
    markdown = (tmp_path / "runs/u/SUMMARY.md").read_text()
    assert "| Underfit | the best tuning auroc was the last one (step 2)" in markdown
