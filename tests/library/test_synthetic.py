"""Synthetic cohort generator, splits, and MEDS dataset write/read."""

import json
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.synthetic import assign_splits, generate_cohort
from ehrseq.errors import DataError, InputError


@pytest.fixture(scope="module")
def cohort() -> pa.Table:
    return generate_cohort(300, seed=7)


def test_deterministic_and_seed_sensitive(cohort):
    assert generate_cohort(300, seed=7).equals(cohort)
    assert not generate_cohort(300, seed=8).equals(cohort)


def test_meds_schema_valid(cohort):
    meds.DataSchema.validate(cohort)
    assert cohort.schema.field("time").type == pa.timestamp("us")
    assert cohort.schema.field("numeric_value").type == pa.float32()


def test_one_birth_and_one_static_sex_per_subject(cohort):
    subjects = pc.unique(cohort.column("subject_id"))
    assert len(subjects) == 300
    births = cohort.filter(pc.equal(cohort.column("code"), meds.birth_code))
    assert sorted(births.column("subject_id").to_pylist()) == sorted(subjects.to_pylist())
    assert births.column("time").null_count == 0
    static = cohort.filter(pc.is_null(cohort.column("time")))
    assert sorted(static.column("subject_id").to_pylist()) == sorted(subjects.to_pylist())
    assert set(static.column("code").to_pylist()) <= {"SEX//F", "SEX//M"}


def test_sorted_by_subject_then_time_nulls_first(cohort):
    subject = cohort.column("subject_id").to_numpy()
    time = pc.fill_null(cohort.column("time").cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    assert np.all(np.diff(subject) >= 0)
    same_subject = subject[1:] == subject[:-1]
    assert np.all((time[1:] >= time[:-1])[same_subject])


def test_realistic_shape(cohort):
    events = cohort.filter(pc.is_valid(cohort.column("time")))
    events = events.filter(pc.not_equal(events.column("code"), meds.birth_code))
    per_visit = events.group_by(["subject_id", "time"]).aggregate([("code", "count")])
    assert (
        1
        <= pc.min(per_visit.column("code_count")).as_py()
        <= pc.max(per_visit.column("code_count")).as_py()
        <= 8
    )
    visits = per_visit.group_by("subject_id").aggregate([("time", "count")]).column("time_count")
    assert pc.min(visits).as_py() >= 2 and pc.max(visits).as_py() <= 40
    codes = events.column("code").to_pylist()
    assert {c.split("//")[0] for c in codes} >= {"ICD10", "RXNORM", "LOINC"}
    labs = events.filter(pc.starts_with(events.column("code"), "LOINC//"))
    assert labs.column("numeric_value").null_count == 0
    assert events.column("numeric_value").null_count == events.num_rows - labs.num_rows


def test_splits_disjoint_cover_and_roughly_fractions():
    ids = list(range(100, 1100))
    splits = assign_splits(ids, seed=3)
    meds.SubjectSplitSchema.validate(splits)
    assert sorted(splits.column("subject_id").to_pylist()) == ids  # each subject exactly once
    names = splits.column("split").to_pylist()
    counts = {name: names.count(name) for name in set(names)}
    assert counts == {meds.train_split: 800, meds.tuning_split: 100, meds.held_out_split: 100}
    assert splits.equals(assign_splits(ids, seed=3))
    assert not splits.equals(assign_splits(ids, seed=4))


@pytest.mark.parametrize("n", [3, 4, 7, 11])
def test_splits_non_empty_for_small_cohorts(n):
    assert set(assign_splits(list(range(n)), seed=0).column("split").to_pylist()) == {
        meds.train_split,
        meds.tuning_split,
        meds.held_out_split,
    }


def test_write_read_round_trip(cohort, tmp_path: Path):
    splits = assign_splits(pc.unique(cohort.column("subject_id")).to_pylist(), seed=0)
    dest = tmp_path / "ds"
    write_meds_dataset(cohort, splits, dest, name="synthetic", shard_size=100)
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["0.parquet", "1.parquet", "2.parquet"]
    shard_subjects = [
        set(pq.read_table(p).column("subject_id").to_pylist()) for p in (dest / "data").iterdir()
    ]
    assert sum(len(s) for s in shard_subjects) == 300  # no subject split across shards
    meta = json.loads((dest / meds.dataset_metadata_filepath).read_text())
    assert meta["dataset_name"] == "synthetic" and meta["etl_name"] == "ehrseq"
    codes = pq.read_table(dest / meds.code_metadata_filepath)
    assert sorted(codes.column("code").to_pylist()) == sorted(pc.unique(cohort.column("code")).to_pylist())

    ds = read_meds_dataset(dest)
    assert ds.data.equals(cohort)
    assert ds.splits == dict(
        zip(splits.column("subject_id").to_pylist(), splits.column("split").to_pylist(), strict=True)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp folders left behind

    write_meds_dataset(cohort.slice(0, 10), splits, dest, name="again")  # replaces the old dataset
    assert read_meds_dataset(dest).data.num_rows == 10


def test_missing_code_column_names_file_and_column(cohort, tmp_path: Path):
    dest = tmp_path / "ds"
    write_meds_dataset(cohort, assign_splits([1, 2, 3], seed=0), dest, name="x")
    shard = dest / "data" / "0.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["code"]), shard)
    with pytest.raises(DataError, match=r"0\.parquet.*code") as err:
        read_meds_dataset(dest)
    assert isinstance(err.value, InputError)


def test_wrong_type_and_missing_files_raise_data_error(cohort, tmp_path: Path):
    dest = tmp_path / "ds"
    write_meds_dataset(cohort, assign_splits([1, 2, 3], seed=0), dest, name="x")
    shard = dest / "data" / "0.parquet"
    table = pq.read_table(shard)
    bad = table.set_column(
        0, "subject_id", pa.array([f"s{s}" for s in table.column("subject_id").to_pylist()])
    )
    pq.write_table(bad, shard)
    with pytest.raises(DataError, match=r"0\.parquet.*subject_id"):
        read_meds_dataset(dest)
    with pytest.raises(DataError, match="data"):
        read_meds_dataset(tmp_path / "nope")
    pq.write_table(table, shard)
    (dest / meds.subject_splits_filepath).unlink()
    with pytest.raises(DataError, match="subject_splits.parquet"):
        read_meds_dataset(dest)
