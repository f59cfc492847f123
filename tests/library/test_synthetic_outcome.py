"""The synthetic cohort's known answer: labels consistent with the data, order matters, oracle ceiling."""

from datetime import timedelta

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.labels import list_tasks, read_labels, read_oracle
from ehrseq.data.synthetic import (
    BINARY_TASK,
    HORIZON_DAYS,
    OUTCOME_CODE,
    PRESETS,
    PROGRESSION_A,
    PROGRESSION_B,
    SURVIVAL_TASK,
    assign_splits,
    generate_synthetic,
)
from ehrseq.errors import DataError

from support.reference_histories import patients_from_meds
from support.reference_splits import load_dataset


@pytest.fixture(scope="module")
def cohort():
    return generate_synthetic(6000, seed=11)


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def _c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's: among pairs where the earlier time is an event, how often the higher risk is earlier."""
    earlier = (time[:, None] < time[None, :]) & event[:, None]
    concordant = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return float((concordant * earlier).sum() / earlier.sum())


def test_deterministic(cohort):
    again = generate_synthetic(6000, seed=11)
    assert again.data.equals(cohort.data)
    assert all(again.labels[t].equals(cohort.labels[t]) and again.oracle[t].equals(cohort.oracle[t])
               for t in (BINARY_TASK, SURVIVAL_TASK))
    assert not generate_synthetic(6000, seed=12).labels[SURVIVAL_TASK].equals(cohort.labels[SURVIVAL_TASK])


def test_labels_agree_with_the_data(cohort):
    for task in (BINARY_TASK, SURVIVAL_TASK):
        meds.LabelSchema.validate(cohort.labels[task])
        assert cohort.oracle[task].select(["subject_id", "prediction_time"]).equals(
            cohort.labels[task].select(["subject_id", "prediction_time"]))
    survival = {r["subject_id"]: r for r in cohort.labels[SURVIVAL_TASK].to_pylist()}
    assert len(survival) == 6000
    binary = {r["subject_id"]: r["boolean_value"] for r in cohort.labels[BINARY_TASK].to_pylist()}
    assert 0.6 < len(binary) / 6000 < 0.95 and 0.08 < np.mean(list(binary.values())) < 0.35

    data = cohort.data
    outcomes = data.filter(pc.equal(data.column("code"), OUTCOME_CODE))
    outcome_time = dict(zip(outcomes.column("subject_id").to_pylist(), outcomes.column("time").to_pylist(),
                            strict=True))  # at most one outcome per subject
    last_time = {r["subject_id"]: r["time_max"] for r in
                 data.group_by("subject_id").aggregate([("time", "max")]).to_pylist()}
    for sid, label in survival.items():
        t0, days = label["prediction_time"], label["float_value"]
        if label["boolean_value"]:  # the event is in the data, `days` after the prediction time
            assert abs((outcome_time[sid] - t0) / timedelta(days=1) - days) < 1e-3 * max(days, 1)
            assert days >= 1
        else:  # censored: no outcome, and no record after the censoring time
            assert sid not in outcome_time and last_time[sid] <= t0 + timedelta(days=float(days) + 1e-3)
        if sid in binary:
            assert binary[sid] == (label["boolean_value"] and days <= HORIZON_DAYS)
        else:  # left out of the binary task only when censored before the horizon without an event
            assert not label["boolean_value"] and days < HORIZON_DAYS


def _order(visits, t0) -> str:
    """'AB' / 'BA' when both progression codes precede t0 within the order window, else 'other'."""
    before = [v.codes for v in visits if v.time < t0]
    a = [i for i, codes in enumerate(before) if PROGRESSION_A in codes]
    b = [i for i, codes in enumerate(before) if PROGRESSION_B in codes]
    if len(a) == 1 and len(b) == 1 and abs(a[0] - b[0]) <= PRESETS["default"].order_window:
        return "AB" if a[0] < b[0] else "BA"
    return "other"


def test_order_matters_in_the_data(cohort):
    prediction = dict(zip(cohort.labels[BINARY_TASK].column("subject_id").to_pylist(),
                          cohort.labels[BINARY_TASK].column("prediction_time").to_pylist(), strict=True))
    positive = dict(zip(cohort.labels[BINARY_TASK].column("subject_id").to_pylist(),
                        cohort.labels[BINARY_TASK].column("boolean_value").to_pylist(), strict=True))
    groups: dict[str, list[bool]] = {"AB": [], "BA": [], "other": []}
    for p in patients_from_meds(cohort.data):
        if p.subject_id in prediction:
            groups[_order(p.visits, prediction[p.subject_id])].append(positive[p.subject_id])
    rate = {k: np.mean(v) for k, v in groups.items()}
    assert len(groups["AB"]) > 100 and len(groups["BA"]) > 100  # the same codes, in both orders
    assert rate["AB"] > 1.8 * rate["BA"] and rate["AB"] > 1.8 * rate["other"]
    assert rate["BA"] < 1.5 * rate["other"]  # B then A adds nothing


def test_oracle_ceiling_on_held_out(cohort):
    binary, oracle = cohort.labels[BINARY_TASK], cohort.oracle[BINARY_TASK]
    splits = assign_splits(cohort.labels[SURVIVAL_TASK].column("subject_id").to_numpy(), seed=0)
    held_out = set(splits.filter(pc.equal(splits.column("split"), meds.held_out_split)).column("subject_id")
                   .to_pylist())
    rows = np.array([s in held_out for s in binary.column("subject_id").to_pylist()])
    y = binary.column("boolean_value").to_numpy(zero_copy_only=False)[rows]
    assert 0.72 < _auroc(y, oracle.column("true_risk").to_numpy()[rows]) < 0.92
    assert 0.5 - 0.05 < _auroc(y, np.random.default_rng(0).random(rows.sum())) < 0.5 + 0.05  # sanity: chance

    survival, risk = cohort.labels[SURVIVAL_TASK], cohort.oracle[SURVIVAL_TASK].column("true_risk").to_numpy()
    rows = np.array([s in held_out for s in survival.column("subject_id").to_pylist()])
    c = _c_index(survival.column("float_value").to_numpy()[rows],
                 survival.column("boolean_value").to_numpy(zero_copy_only=False)[rows], risk[rows])
    assert 0.68 < c < 0.9


def test_age_raises_risk(cohort):
    data = cohort.data
    births = data.filter(pc.equal(data.column("code"), meds.birth_code))
    birth = dict(zip(births.column("subject_id").to_pylist(), births.column("time").to_pylist(), strict=True))
    oracle = cohort.oracle[SURVIVAL_TASK].to_pylist()
    age = np.array([(r["prediction_time"] - birth[r["subject_id"]]).days / 365.25 for r in oracle])
    risk = np.array([r["true_risk"] for r in oracle])
    assert np.corrcoef(age, np.log(risk))[0, 1] > 0.6


def test_dataset_carries_labels_and_oracle(tmp_path):
    dest = synthetic_dataset(300, seed=4, cache_dir=tmp_path)
    assert list_tasks(dest) == sorted([BINARY_TASK, SURVIVAL_TASK])
    labels = read_labels(dest, BINARY_TASK)
    oracle = read_oracle(dest, BINARY_TASK)
    assert labels.column("subject_id").equals(oracle.column("subject_id")) and labels.num_rows > 150
    assert read_oracle(dest, "nope") is None
    with pytest.raises(DataError, match=r"no labels for task 'nope'.*outcome_survival"):
        read_labels(dest, "nope")
    path = dest / "labels" / f"{BINARY_TASK}.parquet"
    pq.write_table(labels.drop_columns(["prediction_time"]), path)
    with pytest.raises(DataError, match=r"outcome_within_365d\.parquet.*prediction_time"):
        read_labels(dest, BINARY_TASK)
    assert synthetic_dataset(300, seed=4, cache_dir=tmp_path) == dest  # cached: not regenerated
    assert load_dataset("synthetic", None, 300, 4, tmp_path).path == dest  # where a job finds the labels
    assert pq.read_table(path).num_columns == 2
    assert pa.types.is_timestamp(read_labels(dest, SURVIVAL_TASK).schema.field("prediction_time").type)
