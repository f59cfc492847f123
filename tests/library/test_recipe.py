"""The fine-tuning recipe: label budgets, epochs, best-checkpoint scoring, early stopping with exact resume."""

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from ehrseq.data.budget import budget_rows
from ehrseq.errors import InputError
from ehrseq.tasks.supervised import SupervisedTask
from ehrseq.training.state import load_model_weights, load_trainable_state_dict
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.job.prepare import make_trainer, prepare_data
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec


def make_spec(tmp_path: Path, name: str = "r", **train) -> JobSpec:
    return JobSpec.model_validate({
        "name": name, "data": {"num_patients": 300, "max_seq_len": 32}, "task": {"kind": "binary"},
        "model": {"positions": "learned"},  # the trajectories below (a peak at step 10) were found with it
        "train": {"max_steps": 40, "batch_size": 16, "eval_every": 5, "device": "cpu", "log_every": 5, **train},
        "checkpoint": {"interval_seconds": 1000, "keep_last": 1},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def test_budget_rows_are_seeded_stratified_and_keep_a_rare_class():
    classes = np.array([True] * 10 + [False] * 90)
    rows = budget_rows(classes, 20, seed=7)
    assert len(rows) == len(set(rows.tolist())) == 20 and classes[rows].sum() == 2  # the 10% share of 20
    assert np.array_equal(rows, budget_rows(classes, 20, seed=7))
    assert not np.array_equal(rows, budget_rows(classes, 20, seed=8))
    assert classes[budget_rows(np.array([True] + [False] * 99), 2, seed=0)].sum() == 1  # both classes at k=2


def test_label_budget_cuts_training_and_tuning_to_k_patients_per_replicate(tmp_path, cache):
    """The k-shot protocol: k training and k tuning patients (each seeded per replicate, stratified), held-out
    whole, the vocabulary from the whole training split; the labels each split used are counted."""
    full = prepare_data(make_spec(tmp_path), cache)
    k = 20
    budget = {r: prepare_data(make_spec(tmp_path, label_budget=k, replicate=r), cache) for r in (0, 0, 1)}
    for split in ("train", "tuning"):
        ids = {r: budget[r].labelled[split].subject_ids for r in (0, 1)}
        assert len(ids[0]) == len(budget[0].encoded[split]) == k < len(full.labelled[split])
        assert set(ids[0]) <= set(full.labelled[split].subject_ids) and set(ids[0]) != set(ids[1])
        share = full.labelled[split].labels.mean()
        assert abs(budget[0].labelled[split].labels.sum() - k * share) <= 1  # stratified by label
        assert budget[0].labels_used()[split] == {"examples": k, "patients": k}
    assert set(budget[0].labelled["tuning"].subject_ids) != set(budget[0].labelled["train"].subject_ids)
    assert np.array_equal(budget[0].labelled["train"].subject_ids, prepare_data(
        make_spec(tmp_path, label_budget=k), cache).labelled["train"].subject_ids)  # seeded
    assert budget[0].encoded["train"].subject_ids.tolist() == budget[0].labelled["train"].example_ids.tolist()
    assert np.array_equal(budget[1].labelled["held_out"].subject_ids, full.labelled["held_out"].subject_ids)
    assert budget[1].vocab.itos == full.vocab.itos  # the vocabulary uses no labels: the whole training split
    counts = make_spec(tmp_path, label_budget=k)
    counts.model.kind = "gbm"  # the count baselines' columns come from the whole training split too
    assert len(prepare_data(counts, cache).train_histories) == len(full.labelled["train"])
    n = len(full.labelled["train"])
    with pytest.raises(InputError, match=rf"train.label_budget: {n + 1} labelled patients .* only {n}"):
        prepare_data(make_spec(tmp_path, label_budget=n + 1), cache)
    big = prepare_data(make_spec(tmp_path, label_budget=len(full.labelled["tuning"]) + 5), cache)
    assert np.array_equal(big.labelled["tuning"].subject_ids, full.labelled["tuning"].subject_ids)  # kept whole


def test_a_budget_counts_patients_and_keeps_all_their_prediction_times():
    """Several label rows per patient stay together: k patients, every row of each, stratified by patient."""
    subjects = np.repeat(np.arange(50), 3)  # 50 patients x 3 prediction times
    labels = np.zeros(150, bool)
    labels[np.arange(0, 30)] = True  # patients 0-9 positive at every time
    rows = budget_rows(labels, 10, seed=3, groups=subjects)
    assert len(np.unique(subjects[rows])) == 10 and len(rows) == 30
    assert all((subjects[rows] == s).sum() == 3 for s in np.unique(subjects[rows]))
    assert len(np.unique(subjects[rows][labels[rows]])) == 2  # the 20% positive share of 10 patients


def test_epochs_set_the_steps_warmup_and_evaluation_cadence(tmp_path, cache):
    spec = make_spec(tmp_path, epochs=2.5, evals_per_epoch=3, max_steps=1000, min_steps=0)
    data = prepare_data(spec, cache)
    n = len(data.encoded["train"])
    config = make_trainer(spec, data, torch.device("cpu")).config
    assert config.max_steps == math.ceil(2.5 * n / 16) and config.warmup_steps == config.max_steps // 10
    assert config.eval_every == round(n / 16 / 3) and (config.monitor, config.higher_is_better) == ("auroc", True)
    capped = make_spec(tmp_path, epochs=2.5, max_steps=7)
    assert make_trainer(capped, data, torch.device("cpu")).config.max_steps == 7  # max_steps is an upper bound
    # the default floor: 2.5 epochs of these few examples are under 300 steps, so each epoch stretches to 120
    floored = make_trainer(make_spec(tmp_path, epochs=2.5, evals_per_epoch=3, max_steps=1000, patience_epochs=1),
                           data, torch.device("cpu")).config
    assert math.ceil(2.5 * n / 16) < 300 == floored.max_steps == floored.min_steps
    assert (floored.eval_every, floored.patience, floored.warmup_steps) == (40, 3, 30)


def held_out_predictions(tmp_path: Path, name: str) -> np.ndarray:
    return pq.read_table(tmp_path / "runs" / name / "predictions/held_out.parquet")[
        "predicted_boolean_probability"].to_numpy()


def score_with_checkpoint(tmp_path: Path, spec: JobSpec, step: int, cache: Path) -> np.ndarray:
    """Held-out probabilities from a stored checkpoint's weights, scored outside the runner."""
    data = prepare_data(spec, cache)
    trainer = make_trainer(spec, data, torch.device("cpu"))
    folder = tmp_path / "runs" / spec.name / f"checkpoints/step-{step:09d}"
    load_trainable_state_dict(trainer.model, load_model_weights(folder, torch.device("cpu")))
    return trainer.evaluate(data.encoded["held_out"]).probabilities


def records(tmp_path: Path, name: str) -> list[dict]:
    volatile = {"time", "tokens_per_s", "seconds_per_step"}
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_held_out_is_scored_with_the_best_weights_and_early_stopping_resumes_exactly(tmp_path, cache, monkeypatch):
    # a high learning rate on 200 patients: tuning AUROC peaks at step 10, then falls; patience 2 stops at 20
    spec = make_spec(tmp_path, lr=3e-3, patience=2)
    assert run_job(spec, Console(quiet=True)) == 0
    summary = json.loads((tmp_path / "runs/r/summary.json").read_text())
    tuning = {r["step"]: r["auroc"] for r in records(tmp_path, "r") if r["split"] == "tuning"}
    assert list(tuning) == [5, 10, 15, 20] and max(tuning, key=tuning.get) == 10 > tuning[20]
    assert (summary["best_step"], summary["best_metric"], summary["best_tuning_value"]) == (10, "auroc", tuning[10])
    assert summary["stopped_early"] and summary["steps"] == summary["durable_step"] == 20
    assert summary["underfit"] is False and "Underfit" not in (tmp_path / "runs/r/SUMMARY.md").read_text()
    status = json.loads((tmp_path / "runs/r/status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == 20 and status["stopped_early"]
    assert "step 10's weights, the best tuning auroc" in (tmp_path / "runs/r/SUMMARY.md").read_text()
    # pruning (keep_last 1) kept the best checkpoint; held-out was scored with its weights, not the final ones
    scored = held_out_predictions(tmp_path, "r")
    assert np.array_equal(scored, score_with_checkpoint(tmp_path, spec, 10, cache))
    assert not np.allclose(scored, score_with_checkpoint(tmp_path, spec, 20, cache))
    mtime = (tmp_path / "runs/r/summary.json").stat().st_mtime_ns
    assert run_job(spec, Console(quiet=True)) == 0  # stopped early counts as completed: nothing to redo
    assert (tmp_path / "runs/r/summary.json").stat().st_mtime_ns == mtime

    # preempted after the best evaluation (step 10), before the stop: the resumed run ends the same way
    resumed = make_spec(tmp_path, "k", lr=3e-3, patience=2)
    original, calls = SupervisedTask.training_loss, {"n": 0}

    def training_loss(self, *args):
        calls["n"] += 1
        if calls["n"] == 14:
            os.kill(os.getpid(), signal.SIGTERM)  # honoured after step 14
        return original(self, *args)

    with monkeypatch.context() as mp:
        mp.setattr(SupervisedTask, "training_loss", training_loss)
        assert run_job(resumed, Console(quiet=True)) == EXIT_PREEMPTED
    assert json.loads((tmp_path / "runs/k/status.json").read_text())["durable_step"] == 14
    assert run_job(resumed, Console(quiet=True)) == 0
    assert records(tmp_path, "k") == records(tmp_path, "r")
    assert np.array_equal(held_out_predictions(tmp_path, "k"), scored)
    again = json.loads((tmp_path / "runs/k/summary.json").read_text())
    assert again["metrics"] == summary["metrics"] and again["best_step"] == 10 and again["steps"] == 20
