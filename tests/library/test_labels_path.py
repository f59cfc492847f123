"""task.labels_path: MEDS label parquet from anywhere (ACES layouts), checked, and each row its own example."""

import os
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrseq.data.labels import label_files
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.errors import DataError

from support.reference_splits import labelled_splits

SPLITS = ("train", "tuning", "held_out")
VISITS = (datetime(2020, 1, 1), datetime(2020, 3, 1), datetime(2020, 6, 1))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Subjects 1-12 (4 per split) and 13 (in no split), each with visits on VISITS (code C<visit>)."""
    dest = tmp_path_factory.mktemp("meds") / "tiny"
    rows = [(s, t, f"C{i}") for s in range(1, 14) for i, t in enumerate(VISITS)]
    data = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "code": [r[2] for r in rows], "numeric_value": pa.array([None] * len(rows), pa.float32())})
    splits = pa.table({"subject_id": pa.array(range(1, 13), pa.int64()),
                       "split": [SPLITS[(s - 1) // 4] for s in range(1, 13)]})
    write_meds_dataset(data, splits, dest, name="tiny")
    return read_meds_dataset(dest)


def labels(rows: list[tuple], **extra) -> pa.Table:
    """Label rows (subject, prediction time, boolean value)."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "prediction_time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "boolean_value": [r[2] for r in rows], **extra})


APRIL = datetime(2020, 4, 1)
ONE_EACH = [(s, APRIL, s % 2 == 0) for s in range(1, 13)]


def test_aces_layouts_resolve_to_their_files(tmp_path):
    (tmp_path / "one.parquet").write_bytes(b"")
    for shard in ("train/0.parquet", "held_out/0.parquet", ".logs/x.parquet"):
        (tmp_path / "sharded" / shard).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sharded" / shard).write_bytes(b"")
    assert label_files(tmp_path / "one.parquet", None) == [tmp_path / "one.parquet"]
    assert label_files(tmp_path, "one") == [tmp_path / "one.parquet"]
    shards = [tmp_path / "sharded" / "held_out" / "0.parquet", tmp_path / "sharded" / "train" / "0.parquet"]
    assert label_files(tmp_path, "sharded") == shards
    assert label_files(tmp_path / "sharded", None) == shards  # the task's own folder; .logs skipped
    with pytest.raises(DataError, match=r"no labels for task.labels 'other'.*tasks there: one, sharded"):
        label_files(tmp_path, "other")


def test_sharded_labels_give_the_same_examples_as_one_file(dataset, tmp_path):
    pq.write_table(labels(ONE_EACH), tmp_path / "task.parquet")
    (tmp_path / "shards" / "task").mkdir(parents=True)
    pq.write_table(labels(ONE_EACH[:6]), tmp_path / "shards" / "task" / "0.parquet")
    pq.write_table(labels(ONE_EACH[6:]), tmp_path / "shards" / "task" / "1.parquet")
    one, report = labelled_splits(dataset, "task", SPLITS, labels_path=tmp_path)
    sharded, _ = labelled_splits(dataset, "task", SPLITS, labels_path=tmp_path / "shards")
    for split in SPLITS:
        assert one[split].subject_ids.tolist() == sharded[split].subject_ids.tolist()
        assert one[split].labels.tolist() == sharded[split].labels.tolist()
    assert one["held_out"].subject_ids.tolist() == [9, 10, 11, 12]
    assert (report.rows, report.examples, report.subjects) == (12, 12, 12)
    assert [len(p.visits) for p in one["train"].patients] == [2, 2, 2, 2]  # Jan and Mar, before April


def test_problem_rows_are_counted_and_dropped_by_rule(dataset, tmp_path):
    rows = [*ONE_EACH,
            (2, APRIL, True),  # an exact duplicate: kept once
            (99, APRIL, True),  # a subject absent from the data
            (13, APRIL, True),  # a subject in no split
            (5, datetime(2020, 1, 1), True),  # at the first event: nothing before it
            (6, datetime(2019, 5, 1), False)]  # before the first event
    pq.write_table(labels(rows), tmp_path / "labels.parquet")
    splits, report = labelled_splits(dataset, None, SPLITS, labels_path=tmp_path / "labels.parquet")
    assert report.to_dict() == {"source": str(tmp_path / "labels.parquet"), "rows": 17, "duplicates": 1,
                                "absent_subjects": 1, "unsplit_subjects": 1, "no_history": 2, "examples": 12,
                                "subjects": 12}
    assert "1 duplicate rows" in report.describe() and "2 at or before the subject's first event" in report.describe()
    assert sum(len(s) for s in splits.values()) == 12


def test_duplicates_that_disagree_are_refused(dataset, tmp_path):
    pq.write_table(labels([*ONE_EACH, (2, APRIL, False)]), tmp_path / "labels.parquet")
    with pytest.raises(DataError, match=r"labels.parquet: subject 2 has several rows at prediction time "
                                        r"2020-04-01.*different boolean_value"):
        labelled_splits(dataset, None, SPLITS, labels_path=tmp_path / "labels.parquet")


def test_several_prediction_times_per_subject_each_cut_at_its_own_time(dataset, tmp_path):
    rows = [*ONE_EACH, (1, datetime(2020, 2, 1), True), (1, datetime(2020, 7, 1), False)]
    pq.write_table(labels(rows), tmp_path / "labels.parquet")
    splits, report = labelled_splits(dataset, None, SPLITS, labels_path=tmp_path / "labels.parquet")
    train = splits["train"]
    ones = [i for i, s in enumerate(train.subject_ids.tolist()) if s == 1]
    assert len(ones) == 3 and (report.examples, report.subjects) == (14, 12)
    by_time = {str(train.prediction_times[i])[:10]: train.patients[i] for i in ones}
    assert {t: [v.codes for v in p.visits] for t, p in by_time.items()} == {
        "2020-02-01": [("C0",)], "2020-04-01": [("C0",), ("C1",)], "2020-07-01": [("C0",), ("C1",), ("C2",)]}
    assert {t: bool(train.labels[i]) for t, i in zip(by_time, ones, strict=True)} == {
        "2020-02-01": True, "2020-04-01": False, "2020-07-01": False}


def test_survival_takes_one_prediction_time_per_subject(dataset, tmp_path):
    rows = [*ONE_EACH, (1, datetime(2020, 7, 1), False)]
    pq.write_table(labels(rows, float_value=[30.0] * len(rows)), tmp_path / "labels.parquet")
    with pytest.raises(DataError, match="1 subjects have several prediction times; a survival task takes one"):
        labelled_splits(dataset, None, SPLITS, "survival", tmp_path / "labels.parquet")


def test_a_missing_label_column_names_the_file_and_column(dataset, tmp_path):
    table = labels(ONE_EACH).drop_columns(["boolean_value"])
    pq.write_table(table, tmp_path / "labels.parquet")
    with pytest.raises(DataError, match=r"labels.parquet: column 'boolean_value' is missing \(a binary task"):
        labelled_splits(dataset, None, SPLITS, labels_path=tmp_path / "labels.parquet")
    pq.write_table(labels(ONE_EACH), tmp_path / "labels.parquet")
    with pytest.raises(DataError, match=r"labels.parquet: column 'float_value' is missing \(a survival task"):
        labelled_splits(dataset, None, SPLITS, "survival", tmp_path / "labels.parquet")


def test_a_folder_or_fifo_named_like_a_label_file_is_named_in_one_error(dataset, tmp_path):
    """Issue 28 item 10: not read as a dataset of its own, nor a read that blocks forever."""
    pq.write_table(labels(ONE_EACH), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").mkdir()
    with pytest.raises(DataError, match=r"b.parquet: a folder where a parquet file was expected"):
        labelled_splits(dataset, None, SPLITS, labels_path=tmp_path)
    (tmp_path / "b.parquet").rmdir()
    os.mkfifo(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: not a regular file"):
        labelled_splits(dataset, None, SPLITS, labels_path=tmp_path)
