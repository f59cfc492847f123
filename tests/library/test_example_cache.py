"""The token cache of a supervised task's examples equals the object path (tests/support/reference_splits.py:
labelled_splits -> encode_examples) exactly: the same examples in the same order, tokens, labels, vocabulary and
label report."""

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data import token_cache as tc
from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.supervised import read_task_labels, task_label_files
from ehrseq.data.synthetic import PRESETS
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError

from support.reference_batches import rows
from support.reference_histories import assert_equal_histories, build_vocabulary
from support.reference_splits import encode_examples, labelled_splits

SPLITS = ("train", "tuning", "held_out")
DAY_US = 86_400_000_000


def task(ds: Path, kind: str, labels_path: Path | None = None) -> tc.LabelledTask:
    name = None if labels_path else ("outcome_within_365d" if kind == "binary" else "outcome_survival")
    labels, report = read_task_labels(ds, name, kind, labels_path)
    return tc.LabelledTask(kind, labels, report, task_label_files(ds, name, labels_path))


def assert_same(ds: Path, out: Path, kind: str, max_len: int, min_count: int, labels_path: Path | None = None,
                vocab: Vocabulary | None = None) -> dict:
    manifest = tc.build_token_cache(ds, out, max_len, min_count, vocab, task=task(ds, kind, labels_path))
    name = None if labels_path else ("outcome_within_365d" if kind == "binary" else "outcome_survival")
    want, want_report = labelled_splits(read_meds_dataset(ds), name, SPLITS, kind, labels_path)
    want_vocab = vocab or Vocabulary({c: n for c, n in build_vocabulary(want["train"].patients).counts.items()
                                      if n >= min_count})
    got_vocab, arrays = tc.load_token_cache(out)
    got, got_report = tc.load_examples(out, arrays, tc.load_histories(out, got_vocab))
    assert got_vocab == want_vocab and got_vocab.itos == want_vocab.itos
    assert got_report == want_report
    for split in SPLITS:
        w, g = want[split], got[split]
        for field in ("example_ids", "subject_ids", "prediction_times", "labels"):
            assert np.array_equal(getattr(g, field), getattr(w, field)), (split, field)
        assert np.array_equal(g.times, w.times, equal_nan=True)
        encoded = encode_examples(w, want_vocab, max_len)
        assert rows(arrays[split]) == encoded, split
        assert_equal_histories(g.histories, w.patients, want_vocab)
    return manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synthetic_dataset(400, 5, tmp_path_factory.mktemp("meds"), PRESETS["order"])


@pytest.mark.parametrize(("kind", "max_len", "min_count"), [("binary", 64, 1), ("survival", 512, 3),
                                                           ("binary", 8, 1)])
def test_the_dataset_labels_give_the_object_paths_examples(cohort, tmp_path, kind, max_len, min_count):
    manifest = assert_same(cohort, tmp_path / "cache", kind, max_len, min_count)
    assert manifest["examples"]["kind"] == kind


def test_several_times_per_subject_dropped_rows_and_many_shards(cohort, tmp_path):
    """ACES-like labels (two times per subject, one on the day of an event), rows of absent and unsplit subjects
    and rows before any history, over 20 shards: the same examples and report as the object path."""
    data = pa.concat_tables([pq.read_table(f) for f in sorted((cohort / "data").glob("*.parquet"))])
    splits = pq.read_table(cohort / "metadata" / "subject_splits.parquet")
    unsplit = splits.column("subject_id")[0].as_py()
    many = tmp_path / "many"
    write_meds_dataset(data, splits.filter(pc.not_equal(splits.column("subject_id"), unsplit)), many, "many",
                       shard_size=20)
    first = pq.read_table(cohort / "labels" / "outcome_within_365d.parquet")
    event = data.filter(pc.is_valid(data.column("time"))).slice(500, 1)  # an event's exact time: cut before it
    rows = [first,
            first.set_column(1, "prediction_time", pc.subtract(first.column("prediction_time"),
                                                               pa.scalar(30 * DAY_US, pa.duration("us")))),
            pa.table({"subject_id": pa.array([event["subject_id"][0].as_py(), 10**9, unsplit], pa.int64()),
                      "prediction_time": pa.array([event["time"][0].as_py()] * 2
                                                  + [datetime(2030, 1, 1)], pa.timestamp("us")),
                      "boolean_value": [True, False, True]}),
            pa.table({"subject_id": first.column("subject_id").slice(0, 5),  # before anything: no history
                      "prediction_time": pa.array([datetime(1900, 1, 1)] * 5, pa.timestamp("us")),
                      "boolean_value": [False] * 5})]
    pq.write_table(pa.concat_tables([r.select(["subject_id", "prediction_time", "boolean_value"]).cast(
        pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                   ("boolean_value", pa.bool_())])) for r in rows]), tmp_path / "labels.parquet")
    manifest = assert_same(many, tmp_path / "cache", "binary", 48, 2, labels_path=tmp_path / "labels.parquet")
    report = manifest["examples"]["report"]
    assert report["absent_subjects"] == 1 and report["unsplit_subjects"] >= 1 and report["no_history"] >= 4


def test_a_given_vocabulary_and_the_key(cohort, tmp_path):
    vocab = Vocabulary({"ICD10//E11.0": 3, "SEX//F": 2, "nowhere": 1})
    assert_same(cohort, tmp_path / "given", "binary", 64, 1, vocab=vocab)
    binary, survival = task(cohort, "binary"), task(cohort, "survival")
    keys = {tc.cache_key(cohort, 64, 1), tc.cache_key(cohort, 64, 1, task=binary),
            tc.cache_key(cohort, 64, 1, task=survival), tc.cache_key(cohort, 64, 1, vocab, task=binary)}
    assert len(keys) == 4
    folder, how = tc.token_cache(cohort, tmp_path / "caches", 64, 1, task=binary)
    assert folder.name.startswith("examples-") and how == "built"
    assert tc.token_cache(cohort, tmp_path / "caches", 64, 1, task=binary) == (folder, "reused")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*tc.cache_files(folder.name), "manifest.json"])


def test_a_split_without_examples_is_refused_as_the_object_path_refuses_it(cohort, tmp_path):
    labels = pq.read_table(cohort / "labels" / "outcome_within_365d.parquet")
    splits = pq.read_table(cohort / "metadata" / "subject_splits.parquet")
    train = splits.filter(pc.equal(splits.column("split"), "train")).column("subject_id")
    pq.write_table(labels.filter(pc.is_in(labels.column("subject_id"), train)), tmp_path / "train_only.parquet")
    with pytest.raises(InputError) as want:
        labelled_splits(read_meds_dataset(cohort), None, SPLITS, "binary", tmp_path / "train_only.parquet")
    with pytest.raises(InputError) as got:
        tc.build_token_cache(cohort, tmp_path / "cache", 64, 1,
                             task=task(cohort, "binary", tmp_path / "train_only.parquet"))
    assert str(got.value) == str(want.value) and "'tuning' split has no labelled subjects" in str(got.value)
    assert not list(tmp_path.glob("*cache*"))
