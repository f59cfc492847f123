"""No leakage: what happens at or after the prediction time never changes a model's inputs."""

from datetime import datetime

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ehrseq.data.synthetic import BINARY_TASK, generate_synthetic

from support.reference_histories import (
    build_vocabulary,
    cut_patient,
    encode_patient,
    events_before,
    join_in_row_order,
    patients_from_meds,
)


def _inputs(data: pa.Table, labels: pa.Table) -> list[tuple]:
    """The whole input pipeline: cut, visits, vocabulary, tokens."""
    patients = patients_from_meds(events_before(data, labels))
    vocab = build_vocabulary(patients)
    encoded = [encode_patient(p, vocab, max_len=64) for p in patients]
    return [(e.subject_id, e.codes, e.ages, e.segments, e.positions) for e in encoded]


def _tamper_after(data: pa.Table, labels: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Change codes and values at or after each prediction time, drop some of those rows, and add two: one
    exactly at the prediction time (23:59:59 on the last visit's day) and one 15 minutes later."""
    cut = labels.select(["subject_id", "prediction_time"]).rename_columns(["subject_id", "t0"])
    joined = join_in_row_order(data, cut)  # the random drops below fall on the same rows every run
    after = pc.fill_null(pc.greater_equal(joined.column("time"), joined.column("t0")), False)
    before = joined.filter(pc.invert(after)).drop_columns(["t0"])
    later = joined.filter(after)
    later = later.filter(pa.array(rng.random(later.num_rows) < 0.7)).drop_columns(["t0"])
    later = later.set_column(2, "code", pa.array([f"LEAK//{i % 7}" for i in range(later.num_rows)]))
    later = later.set_column(3, "numeric_value", pa.array(rng.normal(size=later.num_rows), pa.float32()))
    t0 = labels.column("prediction_time").cast(pa.int64()).to_numpy()
    extra = pa.table({
        "subject_id": pa.concat_arrays([labels.column("subject_id").combine_chunks()] * 2),
        "time": pa.array(np.r_[t0, t0 + 3_600_000_000 // 4], pa.timestamp("us")),  # at t0, then 15 min later
        "code": pa.array(["LEAK//at"] * len(t0) + ["LEAK//soon"] * len(t0)),
    })
    return meds.DataSchema.align(pa.concat_tables([before, later, meds.DataSchema.align(extra)],
                                                  promote_options="default"))


@pytest.fixture(scope="module")
def cohort():
    c = generate_synthetic(400, seed=2)
    return c.data, c.labels[BINARY_TASK]


def test_changing_events_after_prediction_time_leaves_inputs_unchanged(cohort):
    data, labels = cohort
    tampered = _tamper_after(data, labels, np.random.default_rng(0))
    assert not tampered.equals(data)
    assert _inputs(tampered, labels) == _inputs(data, labels)
    # ... whereas without the cut the same change does reach the inputs (so this test can fail)
    vocab = build_vocabulary(patients_from_meds(data))
    uncut = [[encode_patient(p, vocab, 64).codes for p in patients_from_meds(d)] for d in (data, tampered)]
    assert uncut[0] != uncut[1]


def test_cut_patient_drops_visits_reaching_the_prediction_time(cohort):
    data, labels = cohort
    tampered = _tamper_after(data, labels, np.random.default_rng(1))
    t0 = dict(zip(labels.column("subject_id").to_pylist(), labels.column("prediction_time").to_pylist(),
                  strict=True))
    cut = [cut_patient(p, t0[p.subject_id]) for p in patients_from_meds(tampered) if p.subject_id in t0]
    exact = patients_from_meds(events_before(data, labels))
    # The row added at t0 falls on the last visit's day, so that visit spans t0: it is dropped whole.
    assert [p.visits for p in cut] == [p.visits[:-1] for p in exact]
    assert all(not any(c.startswith("LEAK//") for v in p.visits for c in v.codes) for p in cut)


def test_exact_cut_within_a_day():
    rows = [(1, None, "SEX//F"), (1, datetime(1990, 1, 1), meds.birth_code), (1, datetime(2020, 5, 1, 9), "A"),
            (1, datetime(2020, 5, 1, 12), "B"), (1, datetime(2020, 5, 1, 15), "C"), (2, datetime(2020, 1, 1), "D")]
    subject, time, code = (list(column) for column in zip(*rows, strict=True))
    data = meds.DataSchema.align(pa.table({"subject_id": subject, "time": time, "code": code}))
    labels = pa.table({"subject_id": [1], "prediction_time": pa.array([datetime(2020, 5, 1, 12)],
                                                                      pa.timestamp("us"))})
    cut = events_before(data, labels)
    assert cut.column("code").to_pylist() == ["SEX//F", meds.birth_code, "A"]  # strictly before 12:00
    (patient,) = patients_from_meds(data.filter(pc.equal(data.column("subject_id"), 1)))
    assert patient.visits[0].end == datetime(2020, 5, 1, 15)
    assert cut_patient(patient, datetime(2020, 5, 1, 15)).visits == ()  # the 15:00 event is not before
    assert cut_patient(patient, datetime(2020, 5, 1, 15, 0, 1)).visits == patient.visits
    with pytest.raises(ValueError, match="one prediction time per subject"):
        events_before(data, pa.concat_tables([labels, labels]))
