"""Supervised runs end to end, in-process on a tiny cohort: summary, CIs, oracle and the predictions file agree."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig
from ehrseq.models.prediction import BEHRTForPrediction, cox_partial_nll
from ehrseq_runner.job.pretrained import fetch_pretrained, load_encoder
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec

from support.helpers import assert_meds_dev_matches, assert_summary_matches_predictions

MEDS_COLUMNS = ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                "predicted_boolean_probability"]


def make_spec(tmp_path, name, model, task, init_from=None):
    raw = {"name": name, "data": {"num_patients": 300, "max_seq_len": 32},
           "model": {"kind": model, "init_from": init_from}, "task": {"kind": task},
           "train": {"max_steps": 6, "batch_size": 16, "eval_every": 3, "device": "cpu", "log_every": 3},
           "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}}
    return JobSpec.model_validate(raw)


def run(spec):
    assert run_job(spec, Console(quiet=True)) == 0
    return json.loads((spec_dir(spec) / "summary.json").read_text())


def spec_dir(spec):
    return Path(spec.storage.uri.removeprefix("file://")) / spec.resolved_run_id


@pytest.mark.parametrize("model,task", [("bag_of_codes", "binary"), ("bag_of_codes", "survival"),
                                        ("cox", "survival"), ("gbm", "binary"), ("gbm", "survival"),
                                        ("behrt", "binary"), ("behrt", "survival")])
def test_supervised_run_summary_equals_what_the_predictions_give(tmp_path, model, task):
    spec = make_spec(tmp_path, f"{model}-{task}", model, task)
    summary = run(spec)
    folder = spec_dir(spec)
    assert json.loads((folder / "status.json").read_text())["state"] == "completed"
    expected = {"auroc", "auprc", "brier", "prevalence"} if task == "binary" else {"c_index", "auroc_365d"}
    assert set(summary["metrics"]) == expected
    table = pq.read_table(folder / "predictions" / "held_out.parquet")
    assert table.column_names[:5] == MEDS_COLUMNS
    if task == "survival":
        assert {"time", "event", "predicted_risk"} <= set(table.column_names)
    assert_summary_matches_predictions(table, summary, spec.seed)
    assert_meds_dev_matches(folder, summary)
    headline = "auroc" if task == "binary" else "c_index"
    assert set(summary["oracle"]) == expected and 0.5 < summary["oracle"][headline] <= 1.0
    assert "oracle" in (folder / "SUMMARY.md").read_text()
    assert (folder / "model.safetensors").is_file() == (model == "behrt")
    if task == "binary":
        assert sum(summary["calibration"]["count"]) == table.num_rows
    if model != "behrt":  # the count baselines say what they use; a completed baseline is not refitted
        assert summary["baseline"]["features"][-2:] == [
            "2 static codes, one 0/1 column each (SEX//F, SEX//M)", "age at the prediction time in decades"]
        assert "age at the prediction time in decades" in (folder / "SUMMARY.md").read_text()
        mtime = (folder / "summary.json").stat().st_mtime_ns
        assert run_job(spec, Console(quiet=True)) == 0 and (folder / "summary.json").stat().st_mtime_ns == mtime


def test_fine_tuning_starts_from_a_pretrained_run(tmp_path):
    pretrain = make_spec(tmp_path, "pre", "behrt", "mlm")
    run(pretrain)
    source = f"file://{tmp_path}/runs/pre"
    pretrained = fetch_pretrained(source)
    weights = (spec_dir(pretrain) / "model.safetensors").read_bytes()
    assert pretrained.sha256 == hashlib.sha256(weights).hexdigest()

    model = BEHRTForPrediction(BEHRTConfig.small(vocab_size=len(pretrained.vocab)))
    load_encoder(model.behrt, pretrained)
    for k, v in model.behrt.state_dict().items():
        assert torch.equal(v, pretrained.encoder[k]), k
    with pytest.raises(InputError, match="does not fit"):
        load_encoder(BEHRTForPrediction(BEHRTConfig.small(vocab_size=7)).behrt, pretrained)

    summary = run(make_spec(tmp_path, "tuned", "behrt", "binary", init_from=source))
    assert (summary["init_from"]["uri"], summary["init_from"]["sha256"]) == (source, pretrained.sha256)
    assert Vocabulary.load(tmp_path / "runs" / "tuned" / "vocab.json").to_json() == pretrained.vocab.to_json()
    with pytest.raises(InputError, match="no finished model"):
        fetch_pretrained(f"file://{tmp_path}/runs/nope")


def test_cox_partial_likelihood_matches_a_hand_computation():
    risk = torch.tensor([0.5, -0.2, 1.0])
    times = torch.tensor([1.0, 2.0, 3.0])
    events = torch.tensor([True, False, True])
    # event at t=1: risk set all three; event at t=3: only itself (log-lik 0)
    expected = -((0.5 - np.log(np.exp(0.5) + np.exp(-0.2) + np.exp(1.0))) + 0.0) / 2
    assert cox_partial_nll(risk, times, events).item() == pytest.approx(expected, rel=1e-6)
    assert cox_partial_nll(risk, times, torch.zeros(3, dtype=torch.bool)).item() == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("model,task,metric", [("bag_of_codes", "binary", "auroc"), ("cox", "survival", "c_index")])
def test_baselines_learn_but_stay_below_the_oracle(tmp_path, model, task, metric):
    spec = make_spec(tmp_path, f"{model}-{task}", model, task).model_copy(update={"data": JobSpec.model_fields[
        "data"].default.model_copy(update={"num_patients": 3000})})
    summary = run(spec)
    low, _ = summary["metrics_ci"][metric]
    assert summary["metrics"][metric] > 0.62  # the planted risk factors are learnable
    assert low <= summary["oracle"][metric]  # no model credibly above the true risk


@pytest.mark.parametrize("model", ["behrt", "med2vec"])
def test_several_examples_per_subject_keep_their_own_labels(tmp_path, model):
    """ACES emits several prediction times per subject: each is its own example, trained and scored with its own
    label and time (not the subject's last row's), and the held-out predictions list each one."""
    from ehrseq.data.cohort import synthetic_dataset

    ds = synthetic_dataset(300, 0, tmp_path / "meds")
    first = pq.read_table(ds / "labels" / "outcome_within_365d.parquet")
    later = first.set_column(1, "prediction_time", pa.compute.add(first.column("prediction_time"),
                                                                   pa.scalar(86_400_000_000, pa.duration("us"))))
    later = later.set_column(2, "boolean_value", pa.compute.invert(first.column("boolean_value")))
    pq.write_table(pa.concat_tables([first, later]), tmp_path / "two_each.parquet")
    spec = make_spec(tmp_path, f"{model}-two-each", model, "binary")
    spec.data.source, spec.data.path = "meds", str(ds)
    spec.task.labels_path = str(tmp_path / "two_each.parquet")
    run(spec)
    table = pq.read_table(spec_dir(spec) / "predictions" / "held_out.parquet")
    want = {(s, t): y for s, t, y in zip(*(pa.concat_tables([first, later]).column(c).to_pylist() for c in
                                           ("subject_id", "prediction_time", "boolean_value")), strict=True)}
    got = list(zip(*(table.column(c).to_pylist() for c in ("subject_id", "prediction_time", "boolean_value")),
                   strict=True))
    assert len(got) == 2 * len({s for s, _, _ in got})  # both examples of every held-out subject ...
    assert len({(s, t) for s, t, _ in got}) == len(got)  # ... each at its own time
    assert all(want[(s, t)] == y for s, t, y in got)  # with its own label
