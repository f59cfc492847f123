"""data.codes: the same events for every model, in the token cache's key, what was dropped reported."""

import json

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from ehrseq.data.codes import CodeFilter
from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.token_cache import cache_key
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec, SpecError, load_spec

from support.helpers import REPO
from support.reference_histories import codes_kept


def test_prefixes_globs_include_then_exclude_and_birth_always_kept():
    names = ["ICD10//I21.9", "ICD10//N18.3", "LOINC//4548-4", "RXNORM//310000", "MEDS_BIRTH", "SEX//F"]
    assert CodeFilter(exclude=("LOINC//",)).allows(names).tolist() == [True, True, False, True, True, True]
    assert CodeFilter(include=("ICD10//", "SEX//*")).allows(names).tolist() == [True, True, False, False, True, True]
    assert CodeFilter(include=("ICD10//",), exclude=("ICD10//I2?.*",)).allows(names).tolist() == [
        False, True, False, False, True, False]
    assert not CodeFilter() and CodeFilter(exclude=("X",))
    table = pa.table({"subject_id": [1, 1, 2], "time": [None, 5, 6], "code": ["SEX//F", "LOINC//1", "ICD10//A"]})
    assert codes_kept(table, CodeFilter(exclude=("LOINC//",))).column("code").to_pylist() == ["SEX//F", "ICD10//A"]


def spec(tmp_path, model, **data):
    return JobSpec.model_validate({
        "name": model, "data": {"num_patients": 300, "max_seq_len": 32, **data}, "model": {"kind": model},
        "task": {"kind": "binary"}, "train": {"max_steps": 2, "batch_size": 16, "device": "cpu", "min_steps": 0},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})


def test_every_model_reads_the_same_codes_and_the_cache_key_changes(tmp_path):
    cache = tmp_path / "cache"
    drop = {"codes": {"exclude": ["LOINC//", "CPT//"]}}
    behrt = prepare_data(spec(tmp_path, "behrt", **drop), cache)
    gbm = prepare_data(spec(tmp_path, "gbm", **drop), cache)
    whole = prepare_data(spec(tmp_path, "behrt"), cache)
    assert not any(c.startswith(("LOINC//", "CPT//")) for c in behrt.vocab.itos)
    assert any(c.startswith("LOINC//") for c in whole.vocab.itos)
    seen = {gbm.train_histories.names[c] for c in gbm.train_histories.event_codes}
    assert seen and not any(c.startswith(("LOINC//", "CPT//")) for c in seen)
    assert behrt.codes["events_dropped"] == gbm.codes["events_dropped"] > 0  # one count, either path
    assert behrt.identity == whole.identity  # the dataset is the same; what reaches the models is not
    dataset = synthetic_dataset(300, 0, cache)
    keys = {cache_key(dataset, 32, 5), cache_key(dataset, 32, 5, codes=CodeFilter(exclude=("LOINC//",))),
            cache_key(dataset, 32, 5, codes=CodeFilter(include=("LOINC//",)))}
    assert len(keys) == 3


@pytest.mark.slow
def test_the_summary_reports_the_patterns_and_the_events_dropped(tmp_path):
    assert run_job(spec(tmp_path, "behrt", codes={"include": ["ICD10//", "RXNORM//", "SEX//"]}),
                   Console(quiet=True)) == 0
    summary = json.loads((tmp_path / "runs" / "behrt" / "summary.json").read_text())
    codes = summary["data"]["codes"]
    assert codes["include"] == ["ICD10//", "RXNORM//", "SEX//"] and 0 < codes["events_dropped"] < codes["events"]
    assert "include ICD10//, RXNORM//, SEX//; exclude none:" in (tmp_path / "runs" / "behrt" / "SUMMARY.md").read_text()


def test_bad_patterns_are_one_clear_error(tmp_path):
    with pytest.raises(SpecError, match=r"data\.codes\.exclude\.0"):
        load_spec(REPO / "jobs" / "behrt_binary.yaml", ["data.codes.exclude=['']"])
    assert np.array_equal(load_spec(REPO / "jobs" / "behrt_binary.yaml").data.codes.exclude, [])
