"""Pretraining never sees a labelled patient's future (events at or after its prediction time, the outcome least
of all), and a fine-tune refuses a base that did, or that was pretrained on other data, unless told."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.synthetic import OUTCOME_CODE, SURVIVAL_TASK
from ehrseq.errors import InputError
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec

from support.reference_histories import events_before

SPLITS = ("train", "tuning", "held_out")


def make_spec(tmp_path, name, dataset, task, model="behrt", init_from=None, **extra_task):
    return JobSpec.model_validate({
        "name": name, "data": {"source": "meds", "path": str(dataset), "max_seq_len": 32},
        "model": {"kind": model, "init_from": init_from}, "task": {"kind": task, **extra_task},
        "train": {"max_steps": 3, "batch_size": 16, "eval_every": 3, "device": "cpu", "log_every": 3},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(300, 0, tmp_path_factory.mktemp("meds"))


def test_mlm_tokens_equal_those_of_the_data_cut_by_hand_and_never_hold_the_outcome(tmp_path, dataset):
    """The default cut's tokens, vocabulary included, equal an MLM on the dataset cut independently (cutoff.
    events_before at each subject's prediction time, written as a dataset with no labels); the outcome code,
    recorded only after prediction times, is in neither. Reading whole timelines (all) brings it back."""
    cut = prepare_data(make_spec(tmp_path, "cut", dataset, "mlm"), tmp_path / "cache")
    whole = prepare_data(make_spec(tmp_path, "all", dataset, "mlm", pretrain_data="all"), tmp_path / "cache")
    source = read_meds_dataset(dataset)
    times = pq.read_table(dataset / "labels" / f"{SURVIVAL_TASK}.parquet")  # one row per subject, all subjects
    splits = pa.table({"subject_id": list(source.splits), "split": list(source.splits.values())})
    write_meds_dataset(events_before(source.data, times), splits, tmp_path / "by_hand", "by_hand")
    by_hand = prepare_data(make_spec(tmp_path, "hand", tmp_path / "by_hand", "mlm"), tmp_path / "cache")
    assert cut.vocab == by_hand.vocab and OUTCOME_CODE not in cut.vocab.stoi
    for s in SPLITS:
        for field in ("codes", "ages", "segments", "positions", "offsets", "subject_ids"):
            assert np.array_equal(getattr(cut.encoded[s], field), getattr(by_hand.encoded[s], field)), (s, field)
    outcome = whole.vocab.stoi[OUTCOME_CODE]
    assert (np.asarray(whole.encoded["train"].codes) == outcome).any()  # a test that can fail
    assert cut.identity == whole.identity and cut.pretrain_cut.identity(dataset)["mode"] == "cut"


def test_pool_pretrains_on_unlabelled_patients_only(tmp_path, dataset):
    labels = pq.read_table(dataset / "labels" / f"{SURVIVAL_TASK}.parquet")
    labelled = labels.slice(0, 150)
    pq.write_table(labelled, tmp_path / "half.parquet")
    no_labels = tmp_path / "nolabels"  # the same data without the dataset's own labels
    source = read_meds_dataset(dataset)
    splits = pa.table({"subject_id": list(source.splits), "split": list(source.splits.values())})
    write_meds_dataset(source.data, splits, no_labels, "nolabels")
    data = prepare_data(make_spec(tmp_path, "pool", no_labels, "mlm", pretrain_data="pool",
                                  labels_path=str(tmp_path / "half.parquet")), tmp_path / "cache")
    seen = np.concatenate([np.asarray(data.encoded[s].subject_ids) for s in SPLITS])
    assert not set(seen.tolist()) & set(labelled.column("subject_id").to_pylist())
    assert len(seen) == 300 - 150


@pytest.mark.slow
def test_a_fine_tune_refuses_a_base_that_read_the_future_or_other_data(tmp_path, dataset):
    def run(spec):
        return run_job(spec, Console(quiet=True))

    assert run(make_spec(tmp_path, "whole", dataset, "mlm", pretrain_data="all")) == 0
    assert run(make_spec(tmp_path, "cut", dataset, "mlm")) == 0
    base = f"file://{tmp_path}/runs"
    with pytest.raises(InputError, match=r"pretrained on whole timelines \(task.pretrain_data: all\)"):
        run(make_spec(tmp_path, "tuned-whole", dataset, "binary", init_from=f"{base}/whole"))
    assert not (tmp_path / "runs" / "tuned-whole" / "spec.yaml").exists()  # refused before anything was stored
    assert run(make_spec(tmp_path, "tuned-cut", dataset, "binary", init_from=f"{base}/cut")) == 0
    summary = json.loads((tmp_path / "runs" / "tuned-cut" / "summary.json").read_text())
    assert summary["init_from"]["checked"] and summary["init_from"]["pretraining_data"]["mode"] == "cut"

    # labels the pretraining never cut at: their patients' futures may have been read
    labels = pq.read_table(dataset / "labels" / "outcome_within_365d.parquet")
    later = labels.set_column(1, "prediction_time", pc.add(labels.column("prediction_time"),
                                                            pa.scalar(400 * 86_400_000_000, pa.duration("us"))))
    pq.write_table(later, tmp_path / "later.parquet")
    with pytest.raises(InputError, match="pretrained cut at other labels than this task's"):
        run(make_spec(tmp_path, "tuned-later", dataset, "binary", init_from=f"{base}/cut",
                      labels_path=str(tmp_path / "later.parquet")))
    # other data: a cohort of another seed written at another path
    other = synthetic_dataset(300, 1, tmp_path / "other")
    with pytest.raises(InputError, match="pretrained on other data or splits"):
        run(make_spec(tmp_path, "tuned-other", other, "binary", init_from=f"{base}/cut"))
    said = make_spec(tmp_path, "tuned-said", other, "binary", init_from=f"{base}/cut")
    said.model.init_from_data = "other"  # pretrained elsewhere on purpose: allowed, and recorded
    assert run(said) == 0
    assert not json.loads((tmp_path / "runs" / "tuned-said" / "summary.json").read_text())["init_from"]["checked"]
