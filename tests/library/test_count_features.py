"""Count features of the baselines, by hand: counts, recency weights, days since last, static codes, age."""

import math
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

from ehrseq.models.baselines import fit_baseline
from ehrseq.models.count_features import CountFeatures
from ehrseq_runner.spec.job_spec import SpecError, load_spec

from support.helpers import REPO
from support.reference_histories import Patient, Visit, history_arrays
from support.reference_splits import labelled_splits, load_dataset

ALL = ("count", "recency", "days_since_last")
PATIENTS = [
    Patient(1, datetime(1960, 1, 1), (Visit(datetime(2019, 1, 1), ("a", "b")), Visit(datetime(2019, 12, 2), ("a",))),
            static=("SEX//F",)),
    Patient(2, None, (Visit(datetime(2019, 6, 1), ("b", "c")),), static=("SEX//M", "X//rare")),
    Patient(3, datetime(2000, 1, 1), (Visit(datetime(2019, 6, 1), ("a",)),), static=("SEX//F",)),
]
TIMES = np.array(["2020-01-01", "2020-01-01", "2019-06-02"], dtype="datetime64[us]")


def test_each_feature_kind_by_hand():
    features = CountFeatures.fit(history_arrays(PATIENTS), ALL, min_count=1)
    assert features.codes == {"a": 0, "b": 1, "c": 2}  # by patients holding them, ties by code
    assert features.static == {"SEX//F": 0, "SEX//M": 1, "X//rare": 2}
    X = features.matrix(history_arrays(PATIENTS), TIMES)
    assert X.shape == (3, features.width) == (3, 3 * 3 + 3 + 1) and X.dtype == np.float32
    count, recency, days, static, age = X[:, 0:3], X[:, 3:6], X[:, 6:9], X[:, 9:12], X[:, 12]
    np.testing.assert_array_equal(count, [[2, 1, 0], [0, 1, 1], [1, 0, 0]])
    w = lambda d: math.exp(-d / 365)  # noqa: E731
    np.testing.assert_allclose(recency, [[w(365) + w(30), w(365), 0], [0, w(214), w(214)], [w(1), 0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(days, [[30, 365, np.nan], [np.nan, 214, 214], [1, np.nan, np.nan]])
    np.testing.assert_array_equal(static, [[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(age, [21915 / 3652.5, 0.0, 7092 / 3652.5], rtol=1e-6)  # unknown birth: 0
    assert features.names()[:2] == ["count:a", "count:b"] and features.names()[-1] == "age_decades"


def test_static_codes_need_min_count_and_unseen_ones_are_ignored():
    features = CountFeatures.fit(history_arrays(PATIENTS), ("recency",), min_count=2)
    assert features.static == {"SEX//F": 0} and features.codes == {"a": 0, "b": 1}
    other = [Patient(9, None, (Visit(datetime(2019, 1, 1), ("zz",)),), static=("SEX//F", "never"))]
    np.testing.assert_array_equal(features.matrix(history_arrays(other), TIMES[:1]), [[0, 0, 1, 0]])


def test_age_feature_off_drops_the_age_column_and_says_so():
    with_age, without = (CountFeatures.fit(history_arrays(PATIENTS), ("recency",), age=age) for age in (True, False))
    X, Y = with_age.matrix(history_arrays(PATIENTS), TIMES), without.matrix(history_arrays(PATIENTS), TIMES)
    np.testing.assert_array_equal(X[:, :-1], Y)
    assert without.width == with_age.width - 1 and "age_decades" not in without.names()
    assert with_age.describe() == [
        "recency-weighted counts of 3 codes (each visit weighs exp(-days before / 365))",
        "3 static codes, one 0/1 column each (SEX//F, SEX//M, X//rare)", "age at the prediction time in decades"]
    assert without.describe() == with_age.describe()[:-1]


def test_age_feature_is_refused_for_models_that_read_age_from_tokens():
    spec = REPO / "jobs" / "bag_of_codes_binary.yaml"
    assert not load_spec(spec, ["model.age_feature=false"]).model.age_feature
    assert load_spec(spec, ["model.kind=gbm"]).model.kind == "gbm"
    with pytest.raises(SpecError, match="model.age_feature: false drops the age column"):
        load_spec(spec, ["model.age_feature=false", "model.kind=behrt"])
    with pytest.raises(SpecError, match="gbm cannot predict a next visit"):
        load_spec(spec, ["model.kind=gbm", "task.kind=next_visit", "task.labels=null"])


def test_gbm_is_deterministic_and_its_binary_score_is_a_probability(tmp_path):
    dataset = load_dataset("synthetic", None, 400, 3, tmp_path)
    splits, _ = labelled_splits(dataset, "outcome_within_365d", ("train", "tuning", "held_out"))
    splits = {name: replace(split, histories=history_arrays(split.patients)) for name, split in splits.items()}
    fits = [fit_baseline("gbm", "binary", splits["train"], splits["tuning"], 365.0, min_code_count=5)
            for _ in range(2)]
    first, second = (fit.score(splits["held_out"]) for fit in fits)
    np.testing.assert_array_equal(first, second)
    assert ((first > 0) & (first < 1)).all() and fits[0].chosen["rounds"] >= 1
    assert fits[0].num_params == sum(2 * t["num_leaves"] - 1 for t in fits[0].model.dump_model(
        num_iteration=fits[0].model.best_iteration)["tree_info"])


def _by_hand(patient: Patient, time: np.datetime64, code: str) -> dict[str, float]:
    """Every full-strength aggregate of one code, from a plain loop over the patient's visits."""
    days = [(time - np.datetime64(v.time, "us")) / np.timedelta64(1, "D") for v in patient.visits if code in v.codes]
    return {"count": len(days), "recency": sum(math.exp(-d / 365) for d in days),
            "days_since_last": min(days, default=np.nan), "days_since_first": max(days, default=np.nan),
            "count_30d": sum(d < 30 for d in days), "count_365d": sum(d < 365 for d in days)}


def test_full_strength_features_recompute_from_a_plain_loop(tmp_path):
    """gbm's features (counts, recency, first and last occurrence, 30/365-day windows) on a synthetic cohort
    equal a per-patient loop: each column means what its name says."""
    from ehrseq.models.baselines import FEATURE_KINDS
    from ehrseq.models.count_features import FULL_STRENGTH

    assert FEATURE_KINDS["gbm"] == FULL_STRENGTH
    assert {"days_since_first", "count_30d", "count_365d", "days_since_last", "count"} <= set(FULL_STRENGTH)
    dataset = load_dataset("synthetic", None, 120, 5, tmp_path)
    split = labelled_splits(dataset, "outcome_within_365d", ("train",))[0]["train"]
    histories = history_arrays(split.patients)
    features = CountFeatures.fit(histories, FULL_STRENGTH)
    X = features.matrix(histories, split.prediction_times)
    names = features.names()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(split), 15, replace=False):
        for code in rng.choice(list(features.codes), 12, replace=False):
            want = _by_hand(split.patients[i], split.prediction_times[i], code)
            got = {kind: X[i, names.index(f"{kind}:{code}")] for kind in FULL_STRENGTH}
            np.testing.assert_allclose([got[k] for k in FULL_STRENGTH], [want[k] for k in FULL_STRENGTH],
                                       rtol=1e-5, atol=1e-4, err_msg=f"patient row {i}, code {code}")
    assert np.isnan(X[:, names.index(f"days_since_first:{next(iter(features.codes))}")]).sum() < len(split)


def test_the_token_cache_gives_the_per_patient_features(tmp_path):
    """gbm's features from the token cache's whole-history arrays (codes as vocabulary ids, histories cut in the
    stream) equal those from the per-patient objects (codes as strings, the MEDS table cut whole): the same
    columns and the same matrix, split by split."""
    from ehrseq.data.meds_io import read_meds_dataset
    from ehrseq.data.prepared import DataSettings, prepare
    from ehrseq.data.stream import SPLITS
    from ehrseq.models.count_features import FULL_STRENGTH

    data = prepare(DataSettings(num_patients=300, seed=5, task="binary", labels="outcome_within_365d",
                                min_code_count=3, max_seq_len=16), tmp_path)
    objects, _ = labelled_splits(read_meds_dataset(data.folder), "outcome_within_365d", SPLITS)
    cache = CountFeatures.fit(data.train_histories, FULL_STRENGTH, min_count=3)
    assert cache == CountFeatures.fit(history_arrays(objects["train"].patients), FULL_STRENGTH, min_count=3)
    for split in SPLITS:
        got, want = data.labelled[split], objects[split]
        assert np.array_equal(got.example_ids, want.example_ids)
        np.testing.assert_array_equal(cache.matrix(got.histories, got.prediction_times),
                                      cache.matrix(history_arrays(want.patients), want.prediction_times))
