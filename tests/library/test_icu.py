"""The ICU-like preset (ehrseq.data.synthetic_icu), and issue 29's done-when on it: what the window keeps with day
visits and 128 tokens vs admission visits, value-less labs dropped and 1,024 tokens; every model reads the same
visits; subjects and examples counted apart."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from ehrseq.data import token_cache as tc
from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.meds_io import read_meds_dataset
from ehrseq.data.supervised import read_task_labels, task_label_files
from ehrseq.data.synthetic import PRESETS, generate_synthetic
from ehrseq.data.synthetic_icu import READMISSION_TASK
from ehrseq.data.visits import VisitRule
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec, SpecError, load_spec
from ehrseq_runner.spec.ladder_spec import load_ladder

from support.helpers import REPO, SMALL_SPEC
from support.reference_batches import rows
from support.reference_splits import encode_examples, labelled_splits

ICU = PRESETS["icu"]
WIDE = {"visit": "admission", "codes": {"exclude": ["LAB//*//UNK"]}, "max_seq_len": 1024}  # the done-when settings


def codes_of(table: pa.Table) -> np.ndarray:
    return np.array(table.column("code").to_pylist())


def test_hospital_timelines_as_mimic_iv_meds_lays_them_out():
    cohort = generate_synthetic(120, 4, ICU)
    assert cohort.data.equals(generate_synthetic(120, 4, ICU).data)  # deterministic
    data, code = cohort.data, codes_of(cohort.data)
    lab = np.char.startswith(code, "LAB//")
    no_value = pc.is_null(data.column("numeric_value")).to_numpy(zero_copy_only=False)
    assert lab.mean() > 0.75 and (no_value[lab] == np.char.endswith(code[lab], "//UNK")).all()
    time = data.column("time").cast(pa.int64()).to_numpy(zero_copy_only=False)
    subject = data.column("subject_id").to_numpy()
    admit, discharge = (np.char.startswith(code, f"HOSPITAL_{kind}//") for kind in ("ADMISSION", "DISCHARGE"))
    assert admit.sum() == discharge.sum() > 120
    stay_ends = set(zip(subject[discharge], time[discharge], strict=True))
    diagnosis = np.char.startswith(code, "DIAGNOSIS//ICD//10//")
    assert set(zip(subject[diagnosis], time[diagnosis], strict=True)) <= stay_ends  # stamped at discharge
    for prefix in ("MEDICATION//", "ICU_ADMISSION//", "ED_REGISTRATION", "PROCEDURE//ICD//10//", "MEDS_DEATH"):
        assert np.char.startswith(code, prefix).any(), prefix
    labels = cohort.labels[READMISSION_TASK]
    rows = list(zip(labels.column("subject_id").to_pylist(),
                    labels.column("prediction_time").cast(pa.int64()).to_pylist(), strict=True))
    assert set(rows) <= stay_ends and 0.1 < pc.mean(labels.column("boolean_value").cast(pa.int8())).as_py() < 0.4
    day = 86_400 * 1_000_000
    for (s, t), positive in zip(rows, labels.column("boolean_value").to_pylist(), strict=True):
        after = (subject == s) & (time > t) & (time <= t + 30 * day)
        assert positive == bool((after & (admit | (code == "MEDS_DEATH"))).any())


def icu_spec(tmp_path, model="behrt", num_patients=160, **data):
    return JobSpec.model_validate({
        "name": f"icu-{model}", "seed": 1,
        "data": {"num_patients": num_patients, "synthetic": {"preset": "icu"}, **data},
        "model": {"kind": model}, "task": {"kind": "binary", "labels": READMISSION_TASK},
        "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "device": "cpu", "min_steps": 0},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})


def test_admission_visits_and_1024_tokens_keep_most_days_where_day_visits_and_128_do_not(tmp_path):
    narrow = prepare_data(icu_spec(tmp_path, max_seq_len=128), tmp_path / "cache")
    wide = prepare_data(icu_spec(tmp_path, **WIDE), tmp_path / "cache")
    for split in ("train", "held_out"):
        assert narrow.coverage[split]["days"]["median"] < 0.3
        assert wide.coverage[split]["days"]["median"] >= 0.8 and wide.coverage[split]["events"]["median"] >= 0.8
    assert narrow.token_cache["key"] != wide.token_cache["key"]
    assert not any(c.endswith("//UNK") for c in wide.vocab.itos) and wide.codes["events_dropped"] > 0
    patients, examples = wide.patients(), {s: len(wide.encoded[s]) for s in wide.encoded}
    assert all(examples[s] > patients[s] > 0 for s in patients)  # several discharges per patient


@pytest.mark.parametrize("rule", ["admission", "hours:8"])
def test_every_model_reads_the_same_visits(tmp_path, rule):
    """The token cache's examples (BEHRT, Med2Vec) equal the patient objects (count baselines) encoded alike."""
    visits = VisitRule.parse(rule)
    dataset = synthetic_dataset(60, 2, tmp_path / "d", ICU)
    meds_dataset = read_meds_dataset(dataset)
    objects, _ = labelled_splits(meds_dataset, READMISSION_TASK, ("train", "tuning", "held_out"), visits=visits)
    table, report = read_task_labels(dataset, READMISSION_TASK)
    task = tc.LabelledTask("binary", table, report, task_label_files(dataset, READMISSION_TASK, None))
    tc.build_token_cache(dataset, tmp_path / "cache", 300, 1, task=task, visits=visits)
    vocab, arrays = tc.load_token_cache(tmp_path / "cache")
    for split, want in objects.items():
        encoded = encode_examples(want, vocab, 300)
        assert rows(arrays[split]) == encoded
    stays = sum(len(p.visits) for p in objects["train"].patients)
    days = sum(len(p.visits) for p in labelled_splits(meds_dataset, READMISSION_TASK, ("train",))[0]["train"].patients)
    assert (stays < days) if rule == "admission" else (stays > days)


def test_a_run_records_the_visits_the_coverage_and_subjects_apart_from_examples(tmp_path):
    assert run_job(icu_spec(tmp_path, "behrt", 80, **WIDE), Console(quiet=True)) == 0
    summary = json.loads((tmp_path / "runs" / "icu-behrt" / "summary.json").read_text())
    data = summary["data"]
    assert data["visit"].startswith("admission (stays from HOSPITAL_ADMISSION to HOSPITAL_DISCHARGE")
    assert data["coverage"]["held_out"]["days"]["median"] >= 0.8
    assert data["examples"]["held_out"] == data["coverage"]["held_out"]["patients"] > data["subjects"]["held_out"]
    text = (tmp_path / "runs" / "icu-behrt" / "SUMMARY.md").read_text()
    assert "| Visits (data.visit) | admission" in text and "Coverage" in text and "Warning" not in text


def test_the_icu_preset_takes_its_own_task_and_no_overrides():
    with pytest.raises(SpecError, match=f"the icu preset's task is binary, task.labels: {READMISSION_TASK}"):
        load_spec(SMALL_SPEC, ["data.synthetic.preset=icu", "task.kind=binary"])
    with pytest.raises(SpecError, match="the icu preset takes no overrides"):
        load_spec(SMALL_SPEC, ["data.synthetic.preset=icu", "data.synthetic.order_effect=1.0"])
    assert load_spec(SMALL_SPEC, ["data.synthetic.preset=icu"]).data.synthetic.params() == ICU  # mlm: no labels


@pytest.mark.slow
def test_the_aces_task_of_the_walkthrough_agrees_with_the_presets_labels(tmp_path):
    """examples/aces/readmission_30d.yaml on the icu release: the preset's own label rows, the same answers (ACES
    adds, as negatives, the discharges whose record ends within 30 days, which the preset leaves out)."""
    pytest.importorskip("aces")
    dataset = synthetic_dataset(150, 3, tmp_path / "d", ICU)
    done = subprocess.run([sys.executable, "-c", "from aces.run import cli; cli()", "data.standard=meds",
                           "data=sharded", f"data.root={dataset / 'data'}", "data.shard=0",
                           f"cohort_dir={tmp_path / 'labels'}",
                           f"config_path={REPO / 'examples' / 'aces' / 'readmission_30d.yaml'}",
                           "cohort_name=readmission_30d"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    def rows(table: pa.Table) -> dict:
        return dict(zip(zip(table.column("subject_id").to_pylist(), table.column("prediction_time").to_pylist(),
                            strict=True), table.column("boolean_value").to_pylist(), strict=True))

    aces = rows(pq.read_table(tmp_path / "labels" / "readmission_30d" / "0.parquet"))
    ours = rows(pq.read_table(dataset / "labels" / f"{READMISSION_TASK}.parquet"))
    assert set(ours) <= set(aces) and all(aces[k] == v for k, v in ours.items())
    assert not any(aces[k] for k in set(aces) - set(ours))


def test_the_walkthrough_ladder_compares_two_windows_on_one_release():
    study, runs = load_ladder(REPO / "examples" / "readmission_ladder.yaml", [])
    windows = {(r.spec.data.visit, r.spec.data.max_seq_len, tuple(r.spec.data.codes.exclude)) for r in runs}
    assert windows == {("day", 128, ()), ("admission", 1024, ("LAB//*//UNK",))}
    assert {r.spec.task.labels for r in runs} == {"readmission_30d"} and len(runs) == 36
