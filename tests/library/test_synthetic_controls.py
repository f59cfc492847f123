"""The synthetic controls, by construction: `order` and `transition` (order drives the outcome), `presence` and
`transition_presence` (order adds nothing); `transition`'s order is invisible to every per-code aggregate."""

import hashlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.labels import read_oracle
from ehrseq.data.synthetic import (
    BINARY_TASK,
    FAMILY,
    PRESETS,
    PROGRESSION_A,
    PROGRESSION_B,
    SURVIVAL_TASK,
    generate_synthetic,
)
from ehrseq.evaluation.binary import auroc
from ehrseq.evaluation.order_probe import NONE, transition
from ehrseq.models.count_features import FULL_STRENGTH, CountFeatures
from ehrseq.reports.provenance import data_fingerprint, dataset_identity
from ehrseq_runner.spec.job_spec import SpecError, load_spec

from support.reference_histories import history_arrays, visit_codes
from support.reference_splits import labelled_splits, load_dataset

POSITIVE = ("order", "transition")


@pytest.fixture(scope="module", params=["order", "presence", "transition", "transition_presence"])
def control(request):
    return request.param, generate_synthetic(50_000, seed=3, params=PRESETS[request.param])


def _order_gain(cohort, blind: str = "true_risk_order_blind") -> float:
    """Oracle AUROC minus an order-blind oracle's AUROC on the binary task."""
    labels, oracle = cohort.labels[BINARY_TASK], cohort.oracle[BINARY_TASK]
    y = labels.column("boolean_value").to_numpy(zero_copy_only=False)
    return auroc(y, oracle.column("true_risk").to_numpy()) - auroc(y, oracle.column(blind).to_numpy())


def _share_with(cohort, code: str) -> float:
    data = cohort.data
    with_code = pc.unique(data.filter(pc.equal(data.column("code"), code)).column("subject_id"))
    return len(with_code) / cohort.labels[SURVIVAL_TASK].num_rows


def test_order_gain_is_known(control):
    name, cohort = control
    gain = _order_gain(cohort)
    if name in POSITIVE:  # and over the best order-blind model (the risk averaged over the order term)
        assert gain >= 0.04 and _order_gain(cohort, "true_risk_order_marginal") >= 0.05
    else:  # no order term at all: the three oracles are the same numbers
        oracle = cohort.oracle[SURVIVAL_TASK]
        assert gain == 0.0 and oracle.column("true_risk").equals(oracle.column("true_risk_order_blind"))
        assert oracle.column("true_risk").equals(oracle.column("true_risk_order_marginal"))


def test_order_touches_at_least_a_tenth_of_patients(control):
    name, cohort = control
    oracle = cohort.oracle[SURVIVAL_TASK]  # every patient; the two risks differ exactly where A then B counts
    a_then_b = np.mean(oracle.column("true_risk").to_numpy() != oracle.column("true_risk_order_blind").to_numpy())
    assert a_then_b >= 0.10 if name in POSITIVE else a_then_b == 0.0


def test_controls_share_codes_and_prevalence(control):
    _, cohort = control
    order, presence = PRESETS["order"], PRESETS["presence"]
    assert (order.prevalence_a, order.prevalence_b) == (presence.prevalence_a, presence.prevalence_b)
    for code, planned in ((PROGRESSION_A, order.prevalence_a), (PROGRESSION_B, order.prevalence_b)):
        assert abs(_share_with(cohort, code) - planned) < 0.01


def test_transition_is_invisible_to_per_code_aggregates_and_found_by_the_pair(tmp_path):
    """On `transition`, A and B have the same count, first and last occurrence in every history (A -> B or B -> A
    alike); windowed counts and recency differ by the pair's 1-3 days at most; the pair read off the visits
    tells the planted direction for every patient whose risk carries the order term."""
    dataset = load_dataset("synthetic", None, 3_000, 4, tmp_path, PRESETS["transition"])
    split = labelled_splits(dataset, SURVIVAL_TASK, ("train",), "survival")[0]["train"]
    histories = history_arrays(split.patients)
    features = CountFeatures.fit(histories, FULL_STRENGTH)
    X, names = features.matrix(histories, split.prediction_times), features.names()
    a, b = ({k: X[:, names.index(f"{k}:{code}")] for k in FULL_STRENGTH} for code in (PROGRESSION_A, PROGRESSION_B))
    both = ~np.isnan(a["days_since_first"]) & ~np.isnan(b["days_since_first"])
    for kind in ("count", "days_since_first", "days_since_last"):
        np.testing.assert_array_equal(a[kind][both], b[kind][both], err_msg=kind)
    for kind in ("count_30d", "count_365d"):
        assert np.mean(a[kind][both] != b[kind][both]) < 0.01, kind
    np.testing.assert_allclose(a["recency"][both], b["recency"][both], rtol=0.02)
    oracle = read_oracle(dataset.path, SURVIVAL_TASK).to_pylist()
    ordered = {r["subject_id"]: r["true_risk"] != r["true_risk_order_blind"] for r in oracle}
    found = 0
    for row, (patient, pair) in enumerate(zip(split.patients, transition(histories), strict=True)):
        pair = None if pair[0] == NONE else pair
        found += pair is not None
        first = set(visit_codes(histories, row)[pair[0]]) & {PROGRESSION_A, PROGRESSION_B} if pair is not None \
            else set()
        assert (first == {PROGRESSION_A}) == ordered[patient.subject_id]
    assert found > 0.4 * len(split)


def test_default_preset_output_is_unchanged():
    """Pinned digest of the original generator's output (data and labels), so cached datasets keep their meaning."""
    cohort, h = generate_synthetic(200, seed=5), hashlib.sha256()
    for table in (cohort.data, *cohort.labels.values()):
        for column in table.columns:
            h.update(str(column.to_pylist()).encode())
    assert h.hexdigest()[:16] == "74fc43a7f7f68064"


def test_default_preset_keeps_its_weak_order_signal():
    cohort = generate_synthetic(20_000, seed=3)  # the original cohort: order is a small part of the risk
    assert 0.0 < _order_gain(cohort) < 0.03


def test_params_name_the_dataset_and_change_its_fingerprint(tmp_path):
    folders = {name: synthetic_dataset(40, 1, tmp_path, params) for name, params in
               [("default", PRESETS["default"]), ("order", PRESETS["order"]),
                ("order+", replace(PRESETS["order"], order_effect=2.5))]}
    assert folders["default"].name.startswith("synthetic-v3-default-")
    assert folders["order+"].name.startswith("synthetic-v3-custom-")
    assert len(set(folders.values())) == 3
    assert synthetic_dataset(40, 1, tmp_path, replace(PRESETS["order"])) == folders["order"]  # cached by value

    datasets = {"order": load_dataset("synthetic", None, 40, 1, tmp_path, PRESETS["order"]),
                "order+": load_dataset("synthetic", None, 40, 1, tmp_path, replace(PRESETS["order"], order_effect=2.5))}
    fingerprints = {name: data_fingerprint(dataset_identity(d), d.splits, list(d.splits))
                    for name, d in datasets.items()}
    assert datasets["order"].splits == datasets["order+"].splits  # same subjects and splits ...
    assert fingerprints["order"] != fingerprints["order+"]  # ... but other data


@pytest.mark.parametrize("override, message", [
    ("data.synthetic.preset=strong",
     r"data\.synthetic\.preset: Input should be 'default', 'order', 'presence', 'transition', 'transition_presence', "
     r"'family', 'family_presence' or 'icu'"),
    ("data.synthetic.order_effect=9", r"data\.synthetic\.order_effect: .*less than or equal to 4"),
    ("data.synthetic.prevalence_a=1.5", r"data\.synthetic\.prevalence_a: .*less than or equal to 1"),
    ("data.synthetic.order_window=0", r"data\.synthetic\.order_window: .*greater than or equal to 1"),
    ("data.synthetic.effect=1", r"data\.synthetic\.effect: unknown field"),
])
def test_spec_rejects_bad_generator_settings(tmp_path, override, message):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ndata: {synthetic: {preset: order}}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(path, [override])


def test_spec_resolves_preset_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ndata: {synthetic: {preset: presence, age_effect: 0.3}}\n")
    assert load_spec(path).data.synthetic.params() == replace(PRESETS["presence"], age_effect=0.3)
    assert load_spec(path, ["data.synthetic.preset=default", "data.synthetic.age_effect=null"]) \
        .data.synthetic.params() == PRESETS["default"]
    with pytest.raises(SpecError, match=r"data\.synthetic: sets the synthetic generator, but data\.source is 'meds'"):
        load_spec(path, ["data.source=meds", f"data.path={tmp_path}"])


def test_the_pretraining_control_has_a_rare_family_and_an_unlabelled_pool():
    """`family`: 2-4 of 40 family codes per family patient, each code in a few percent of patients, only those
    carrying the effect; 20% of the patients labelled, every patient in the data and a split; its twin plants the
    same family, with the effect on A and B instead."""
    family, twin = (generate_synthetic(5_000, seed=2, params=PRESETS[name]) for name in ("family", "family_presence"))
    data = family.data
    rows = data.filter(pc.is_in(data.column("code"), value_set=pa.array(list(FAMILY))))
    assert rows.equals(twin.data.filter(pc.is_in(twin.data.column("code"), value_set=pa.array(list(FAMILY)))))
    per_patient = rows.group_by("subject_id").aggregate([("code", "count_distinct")]).column(1).to_numpy()
    assert per_patient.min() >= 2 and per_patient.max() <= 4 and 0.25 < len(per_patient) / 5_000 < 0.35
    per_code = rows.group_by("code").aggregate([("subject_id", "count_distinct")]).column(1).to_numpy()
    assert len(per_code) == len(FAMILY) and per_code.max() / 5_000 < 0.04
    survival = family.labels[SURVIVAL_TASK]
    assert 0.17 < survival.num_rows / 5_000 < 0.23
    assert len(pc.unique(data.column("subject_id"))) == 5_000  # the pool is in the data
    risk = family.oracle[SURVIVAL_TASK].column("true_risk").to_numpy()
    has = np.isin(survival.column("subject_id").to_numpy(), rows.column("subject_id").to_numpy())
    assert risk[has].mean() > 2 * risk[~has].mean()  # the family carries the outcome


def test_a_pooled_dataset_splits_every_patient(tmp_path):
    from ehrseq.data.meds_io import read_meds_dataset

    dataset = read_meds_dataset(synthetic_dataset(300, 1, tmp_path, PRESETS["family"]))
    assert len(dataset.splits) == 300 and set(dataset.splits.values()) == {"train", "tuning", "held_out"}
