"""The streaming token cache equals the object path (tests/support/reference_histories.py: patients_from_meds ->
build_vocabulary -> encode_patient) exactly, detects damage, and never leaves a partial cache behind."""

import errno
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrseq.data import token_cache as tc
from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.synthetic import PRESETS
from ehrseq.data.token_arrays import DTYPES
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import DataError, InputError

from support.reference_batches import row
from support.reference_histories import assert_equal_histories, build_vocabulary, encode_patient
from support.reference_splits import patients_by_split


def old_path(ds: Path, max_len: int, min_count: int, vocab: Vocabulary | None = None):
    patients = patients_by_split(read_meds_dataset(ds))
    vocab = vocab or build_vocabulary(patients["train"], min_count)
    return vocab, {s: [encode_patient(p, vocab, max_len) for p in ps] for s, ps in patients.items()}, patients


def assert_same(ds: Path, out: Path, max_len: int, min_count: int, vocab: Vocabulary | None = None) -> dict:
    manifest = tc.build_token_cache(ds, out, max_len, min_count, vocab)
    want_vocab, want, patients = old_path(ds, max_len, min_count, vocab)
    got_vocab, got = tc.load_token_cache(out)
    histories = tc.load_histories(out, got_vocab)
    assert got_vocab == want_vocab and got_vocab.itos == want_vocab.itos
    for split, encoded in want.items():
        assert len(got[split]) == len(encoded), split
        assert got[split].offsets[0] == 0 and got[split].offsets[-1] == len(got[split].codes)
        for i, e in enumerate(encoded):
            assert row(got[split], i) == e, (split, i, e.subject_id)
        assert_equal_histories(histories[split], patients[split], got_vocab)
    return manifest


@pytest.fixture(scope="module")
def order_cohort(tmp_path_factory) -> Path:
    return synthetic_dataset(240, 3, tmp_path_factory.mktemp("meds"), PRESETS["order"])


@pytest.mark.parametrize(("max_len", "min_count"), [(512, 1), (40, 5), (8, 1)])
def test_synthetic_cohorts_equal_the_object_path(order_cohort, tmp_path, max_len, min_count):
    assert_same(order_cohort, tmp_path / "cache", max_len, min_count)


def test_default_preset_and_a_given_vocabulary(tmp_path):
    ds = synthetic_dataset(150, 1, tmp_path / "meds")
    assert_same(ds, tmp_path / "cache", 64, 1)
    vocab = Vocabulary({"ICD10//E11.0": 3, "SEX//F": 2, "nowhere": 1})  # as from a pretrained run
    manifest = assert_same(ds, tmp_path / "given", 64, 1, vocab)
    assert manifest["settings"]["vocab_given"] and "vocab" not in manifest["seconds"]
    assert tc.cache_key(ds, 64, 1, vocab) != tc.cache_key(ds, 64, 1) != tc.cache_key(ds, 65, 1)


def _table(ds: Path) -> tuple[pa.Table, pa.Table]:
    files = sorted((ds / "data").glob("**/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]), pq.read_table(ds / meds.subject_splits_filepath)


def test_many_shards_and_the_nested_split_layout(order_cohort, tmp_path):
    data, splits = _table(order_cohort)
    many = tmp_path / "many"
    write_meds_dataset(data, splits, many, "many", shard_size=20)  # 12 shards: 10.parquet sorts before 2.parquet
    assert len(list((many / "data").glob("*.parquet"))) == 12
    assert_same(many, tmp_path / "cache-many", 64, 2)

    nested = tmp_path / "nested"
    shutil.copytree(many, nested)
    shutil.rmtree(nested / "data")
    split_of = dict(zip(splits.column("subject_id").to_pylist(), splits.column("split").to_pylist(), strict=True))
    for split in ("train", "tuning", "held_out"):
        ids = sorted(s for s, v in split_of.items() if v == split)
        (nested / "data" / split).mkdir(parents=True)
        for n, part in enumerate((ids[0::2], ids[1::2])):  # interleaved subject ranges within a split
            rows = data.filter(pa.compute.is_in(data.column("subject_id"), pa.array(part, pa.int64())))
            pq.write_table(rows, nested / "data" / split / f"{n}.parquet")
    assert_same(nested, tmp_path / "cache-nested", 64, 2)


T0 = datetime(2010, 3, 15, 10, 30)
US = timedelta(microseconds=1)


def write_rows(ds: Path, shards: list[list[tuple]], splits: dict[int, str]) -> Path:
    """A MEDS dataset from (subject, time or None, code) rows, one list per shard, rows in the given order."""
    (ds / "data").mkdir(parents=True)
    (ds / "metadata").mkdir()
    for n, rows in enumerate(shards):
        s, t, c = zip(*rows, strict=True) if rows else ((), (), ())
        table = pa.table({"subject_id": pa.array(s, pa.int64()), "time": pa.array(t, pa.timestamp("us")),
                          "code": pa.array(c, pa.string()), "numeric_value": pa.nulls(len(s), pa.float32())})
        pq.write_table(table, ds / "data" / f"{n}.parquet")
    pq.write_table(pa.table({"subject_id": pa.array(list(splits), pa.int64()), "split": list(splits.values())}),
                   ds / meds.subject_splits_filepath)
    return ds


BIRTH = meds.birth_code
EDGE_ROWS = [
    # 1: no birth; several events a day, repeated codes, statics incl. a rare one; rows out of order
    (1, T0 + timedelta(days=3), "B"), (1, T0, "A"), (1, T0 + timedelta(hours=2), "B"), (1, T0, "A"),
    (1, T0 + timedelta(hours=1), "C"), (1, None, "SEX//F"), (1, None, "RARE"), (1, None, "SEX//F"),
    # 2: birth after its events (ages clip to 0), and an earlier-dated second birth row wins
    (2, datetime(2020, 1, 1), BIRTH), (2, datetime(2019, 6, 1), BIRTH), (2, T0, "A"),
    (2, T0 + timedelta(days=400), "C"),
    (2, None, BIRTH),  # a null-time birth: neither static nor birth
    # 3: one visit longer than any max_len tested, after a short one
    (3, datetime(1960, 2, 29, 12), BIRTH), (3, T0, "A"),
    *[(3, T0 + timedelta(days=1, seconds=i), f"L{i}") for i in range(30)],
    # 4: midnight boundaries and completed months at microsecond precision
    (4, datetime(1999, 1, 31, 8, 0, 0, 5), BIRTH), (4, datetime(2011, 1, 31, 8, 0, 0, 4), "A"),
    (4, datetime(2011, 1, 31, 23, 59, 59, 999999), "B"), (4, datetime(2011, 2, 1), "B"),
    (4, datetime(2011, 3, 31, 8, 0, 0, 5), "C"), (4, datetime(1969, 12, 31, 23, 59, 59), "A"),
    # 5: only static rows
    (5, None, "SEX//M"), (5, None, "RARE2"),
    # 6: in the data, in no split; 7 is in a split with no data
    (6, T0, "ONLY6"), (6, None, "SEX//M"),
    # 8: more static codes than max_len allows, some out of the vocabulary
    *[(8, None, f"S{i:02d}") for i in range(12)], *[(8, None, "SEX//F")] * 2, (8, T0, "A"), (8, T0, "B"),
    (9, T0, "A"), (9, datetime(1930, 5, 5), BIRTH), (9, T0 - timedelta(days=9000), "C"), (9, None, "S00"),
    (10, datetime(2000, 1, 1), "A"),
    # 12: a split that is none of train / tuning / held_out: in no split, like 6
    (12, T0, "B"),
]
EDGE_SPLITS = {1: "train", 2: "train", 3: "train", 4: "tuning", 5: "train", 7: "train", 8: "train", 9: "held_out",
               10: "held_out", 12: "test"}


@pytest.mark.parametrize("max_len", [4, 10, 64])
@pytest.mark.parametrize("min_count", [1, 2])
def test_hand_built_edge_cases(tmp_path, max_len, min_count):
    three = [[r for r in EDGE_ROWS if r[0] in group] for group in ({1, 2}, {3, 4, 5, 6, 7, 8, 9}, {10}, set())]
    for layout, shards in {"one": [EDGE_ROWS], "three": three}.items():
        ds = write_rows(tmp_path / layout, shards, EDGE_SPLITS)
        manifest = assert_same(ds, tmp_path / f"cache-{layout}", max_len, min_count)
        # what is left out or altered is counted: 6 and 12 (no split; "three" leaves 12 out); 2's two events
        # before its earlier birth row, and 4's one in 1969
        assert tc.passed_over_counts(manifest) == {"subjects_without_split": 2 if layout == "one" else 1,
                                                   "events_before_birth": 3}
    _, arrays = tc.load_token_cache(tmp_path / "cache-one")
    assert arrays["train"].subject_ids.tolist() == [1, 2, 3, 5, 8]  # 6 (no split) and 7 (no data) dropped


def test_cache_layout_and_manifest(order_cohort, tmp_path):
    manifest = tc.build_token_cache(order_cohort, tmp_path / "c", 32, 1)
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert names == {"codes.npy", "ages.npy", "segments.npy", "positions.npy", "offsets.npy", "subject_ids.npy",
                     "splits.npy", "vocab.json", "manifest.json",
                     # whole histories (format 3): births, visits, events and static codes
                     "births.npy", "visit_offsets.npy", "visit_times.npy", "event_offsets.npy", "event_codes.npy",
                     "event_visits.npy", "static_offsets.npy", "static_codes.npy",
                     # next_visit targets (empty for other caches)
                     "target_times.npy", "target_offsets.npy", "target_codes.npy"}
    assert set(manifest["files"]) == names - {"manifest.json"}
    splits = np.load(tmp_path / "c" / "splits.npy")
    assert (np.diff(splits) >= 0).all() and set(splits.tolist()) == {0, 1, 2}
    for f, dtype in {"codes": np.int32, "ages": np.int16, "segments": np.int8, "positions": np.int16,
                     "offsets": np.int64, "subject_ids": np.int64}.items():
        assert np.load(tmp_path / "c" / f"{f}.npy", mmap_mode="r").dtype == dtype
    assert tc.DTYPES == DTYPES
    assert manifest["counts"]["events"] == read_meds_dataset(order_cohort).data.num_rows
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_damaged_caches_are_not_caches_and_get_rebuilt(order_cohort, tmp_path):
    warned = []
    folder, how = tc.token_cache(order_cohort, tmp_path, 32, 1, warn=warned.append)
    assert how == "built"
    assert tc.token_cache(order_cohort, tmp_path, 32, 1, warn=warned.append) == (folder, "reused") and not warned
    codes = folder / "codes.npy"
    raw = bytearray(codes.read_bytes())
    raw[-3] ^= 0x01
    codes.write_bytes(bytes(raw))
    with pytest.raises(tc.NotATokenCache, match="checksum"):
        tc.load_token_cache(folder)
    tc.load_token_cache(folder, verify=False)  # sizes still match: only the checksum tells
    assert tc.token_cache(order_cohort, tmp_path, 32, 1, warn=warned.append) == (folder, "built")
    assert len(warned) == 1 and "checksum" in warned[0]
    tc.load_token_cache(folder)  # rebuilt

    with open(folder / "ages.npy", "ab") as f:
        f.write(b"\0")
    with pytest.raises(tc.NotATokenCache, match="bytes"):
        tc.load_token_cache(folder, verify=False)
    (folder / "manifest.json").unlink()
    with pytest.raises(tc.NotATokenCache, match="manifest"):
        tc.load_token_cache(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": 0, "files": {}}))
    with pytest.raises(tc.NotATokenCache, match="format"):
        tc.read_manifest(folder)


@pytest.mark.parametrize("fail_at", ["part", "npy"])
def test_a_full_disk_leaves_no_cache_and_no_temporary_folder(order_cohort, tmp_path, monkeypatch, fail_at):
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    if fail_at == "part":
        real = tc._Parts.append
        monkeypatch.setattr(tc._Parts, "append", lambda self, t: full(self, t))
        order_cohort = tmp_path / "many"
        write_meds_dataset(*_table(synthetic_dataset(240, 3, tmp_path / "m", PRESETS["order"])), order_cohort, "x",
                           shard_size=40)
    else:
        real = tc._NpyWriter._put
        monkeypatch.setattr(tc._NpyWriter, "_put", lambda self, d: full(self, d))
    out = tmp_path / "cache" / "tokens"
    with pytest.raises(OSError, match="No space"):
        tc.build_token_cache(order_cohort, out, 32, 1)
    assert calls["n"] >= 3
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def _one_shard(tmp_path) -> Path:
    return write_rows(tmp_path / "ds", [EDGE_ROWS], EDGE_SPLITS)


def test_bad_shards_name_the_file(tmp_path):
    ds = _one_shard(tmp_path)
    shard = ds / "data" / "0.parquet"
    (ds / "data" / "1.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"1\.parquet: not a readable parquet file"):
        tc.build_token_cache(ds, tmp_path / "c", 16, 1)
    (ds / "data" / "1.parquet").unlink()
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["code"]), shard)
    with pytest.raises(DataError, match=r"0\.parquet: .*code"):
        tc.build_token_cache(ds, tmp_path / "c", 16, 1)
    pq.write_table(table.set_column(0, "subject_id", pa.array(["x"] * table.num_rows)), shard)
    with pytest.raises(DataError, match=r"0\.parquet: .*subject_id"):
        tc.build_token_cache(ds, tmp_path / "c", 16, 1)
    pq.write_table(table.set_column(1, "time", pa.nulls(table.num_rows, pa.timestamp("us"))), shard)
    with pytest.raises(DataError, match=r"'time' is null in all"):
        tc.build_token_cache(ds, tmp_path / "c", 16, 1)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".*"))


def test_a_subject_in_two_shards_names_both(tmp_path):
    ds = write_rows(tmp_path / "ds", [EDGE_ROWS, [(9, T0 + timedelta(days=1), "A")]], EDGE_SPLITS)
    with pytest.raises(DataError, match=r"0\.parquet and .*1\.parquet both hold subject 9"):
        tc.build_token_cache(ds, tmp_path / "c", 16, 1)


def test_input_errors_match_the_object_path(tmp_path):
    ds = _one_shard(tmp_path)
    counts = build_vocabulary(patients_by_split(read_meds_dataset(ds))["train"]).counts
    with pytest.raises(InputError) as got:
        tc.build_token_cache(ds, tmp_path / "c", 16, 99, source="X")
    assert str(got.value) == (f"data.min_code_count: no code occurs 99 times in the 'train' split of X "
                              f"({len(counts)} distinct codes, the most frequent {max(counts.values())} times); "
                              "lower it or use more data")

    for splits in ({1: "train", 4: "tuning", 9: "train"}, {1: "train", 4: "tuning", 9: "held_out", 77: "held_out"}):
        shutil.rmtree(tmp_path / "ds")
        if 77 in splits:
            ds = write_rows(tmp_path / "ds", [[r for r in EDGE_ROWS if r[0] != 9]], splits)
        else:
            ds = write_rows(tmp_path / "ds", [EDGE_ROWS], splits)
        with pytest.raises(InputError) as want:
            patients_by_split(read_meds_dataset(ds))
        with pytest.raises(InputError) as got:
            tc.build_token_cache(ds, tmp_path / "c", 16, 1)
        assert str(got.value) == str(want.value)



def test_splits_file_errors_match_read_meds_dataset(tmp_path):
    ds = _one_shard(tmp_path)
    splits = ds / meds.subject_splits_filepath
    pq.write_table(pa.table({"subject_id": pa.array([9, 1, 4, 1, 9, 9], pa.int64()),
                             "split": ["train", "train", "tuning", "held_out", "train", "x"]}), splits)
    for bad in ("duplicates", "a null split", "a null subject", "missing"):
        if bad == "a null split":
            pq.write_table(pa.table({"subject_id": pa.array([1, 4], pa.int64()), "split": ["train", None]}), splits)
        if bad == "a null subject":
            pq.write_table(pa.table({"subject_id": pa.array([1, None], pa.int64()), "split": ["train", "train"]}),
                           splits)
        if bad == "missing":
            splits.unlink()
        with pytest.raises(DataError) as want:
            read_meds_dataset(ds)
        with pytest.raises(DataError) as got:
            tc.build_token_cache(ds, tmp_path / "c", 16, 1)
        assert str(got.value) == str(want.value) and str(splits) in str(got.value)
