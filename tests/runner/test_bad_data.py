"""Issue 20: bad MEDS data exits 2 with one line naming the file, column and count, before anything is stored."""

import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.cohort import synthetic_dataset

from support.helpers import SMALL_SPEC

SHARD = "data/0.parquet"
SPLITS = "metadata/subject_splits.parquet"


@pytest.fixture(scope="module")
def good_meds(tmp_path_factory) -> Path:
    return synthetic_dataset(60, 0, tmp_path_factory.mktemp("meds"))


def run_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`ehrseq ARGS` through the real entry point (InputError -> one line, exit 2), without a subprocess."""
    from ehrseq_runner.cli import main

    monkeypatch.setattr(sys, "argv", ["ehrseq", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def run_on(dataset: Path, tmp_path: Path, *overrides: str) -> list[str]:
    """`ehrseq run` arguments for a tiny job on `dataset` storing under tmp_path/bucket."""
    sets = ["data.source=meds", f"data.path={dataset}", f"storage.uri=file://{tmp_path}/bucket", "name=r",
            f"runtime.work_dir={tmp_path}/work", "train.max_steps=2", "train.batch_size=8", "train.eval_every=0",
            "data.max_seq_len=24", *overrides]
    return ["run", str(SMALL_SPEC), *(a for s in sets for a in ("--set", s))]


def stored_files(tmp_path: Path) -> list[Path]:
    """What the run stored (its writer lease included: a refused new run deletes it)."""
    return sorted(p for p in (tmp_path / "bucket").rglob("*") if p.is_file())


def rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def corrupt_footer(ds: Path) -> None:
    data = bytearray((ds / SHARD).read_bytes())
    data[-8:-4] = b"\xff\xff\xff\x7f"  # footer length far beyond the file
    (ds / SHARD).write_bytes(bytes(data))


def scrambled_footer(ds: Path) -> None:
    data = bytearray((ds / SHARD).read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer:-8 - footer + 40] = b"\xff" * 40  # the thrift metadata itself: pyarrow raises a bare OSError
    (ds / SHARD).write_bytes(bytes(data))


def null_times(ds: Path) -> None:
    rewrite(ds / SHARD, lambda t: t.set_column(t.schema.get_field_index("time"), "time",
                                               pa.nulls(t.num_rows, pa.timestamp("us"))))


def no_code_column(ds: Path) -> None:
    rewrite(ds / SHARD, lambda t: t.drop_columns(["code"]))


def no_tuning_split(ds: Path) -> None:
    rewrite(ds / SPLITS, lambda t: t.set_column(1, "split", pc.replace_substring(t.column("split"), "tuning",
                                                                                 "train")))


def splits_for_other_subjects(ds: Path) -> None:
    rewrite(ds / SPLITS, lambda t: t.set_column(0, "subject_id", pc.add(t.column("subject_id"), 10_000)))


def subjects_in_two_splits(ds: Path) -> None:
    rewrite(ds / SPLITS, lambda t: pa.concat_tables([t, t.slice(0, 3).set_column(1, "split",
                                                                                 pa.array(["held_out"] * 3))]))


def folder_as_shard(ds: Path) -> None:
    (ds / "data" / "x.parquet").mkdir()


def fifo_as_shard(ds: Path) -> None:
    os.mkfifo(ds / "data" / "x.parquet")  # read, it would block forever


def folder_as_splits(ds: Path) -> None:
    (ds / SPLITS).unlink()
    (ds / SPLITS).mkdir()


BAD_MEDS = {  # name -> (mutation, what the one line must name)
    "corrupt parquet footer": (corrupt_footer, [SHARD, "not a readable parquet file"]),
    "scrambled parquet footer": (scrambled_footer, [SHARD, "not a readable parquet file"]),
    "subjects in two splits": (subjects_in_two_splits, [SPLITS, "'subject_id'", "3 subjects more than once"]),
    "all event times null": (null_times, ["data", "'time'", "2,241"]),
    "no code column": (no_code_column, [SHARD, "code"]),
    "no tuning subjects": (no_tuning_split, [SPLITS, "'tuning'"]),
    "splits name other subjects": (splits_for_other_subjects, [SPLITS, "'train'", "0 of 48"]),
    "a folder named like a shard": (folder_as_shard, ["data/x.parquet", "a folder where a parquet file"]),
    "a FIFO named like a shard": (fifo_as_shard, ["data/x.parquet", "not a regular file"]),
    "a folder as the splits file": (folder_as_splits, [SPLITS]),
}


@pytest.mark.parametrize("case", BAD_MEDS)
def test_bad_meds_exits_2_naming_file_and_column_and_stores_nothing(case, good_meds, tmp_path, monkeypatch,
                                                                     capsys):
    mutate, named = BAD_MEDS[case]
    ds = tmp_path / "meds"
    shutil.copytree(good_meds, ds)
    mutate(ds)
    code, err = run_in_process(monkeypatch, capsys, *run_on(ds, tmp_path))
    assert (code, len(err.strip().splitlines())) == (2, 1), err
    assert "Traceback" not in err and all(n in err for n in named), (named, err)
    assert stored_files(tmp_path) == []  # no spec.yaml, no status.json: the run never showed as running


@pytest.mark.slow
def test_a_stored_run_refused_on_bad_data_keeps_its_status(good_meds, tmp_path, monkeypatch, capsys):
    ds = tmp_path / "meds"
    shutil.copytree(good_meds, ds)
    code, err = run_in_process(monkeypatch, capsys, *run_on(ds, tmp_path))
    assert code == 0, err
    status = tmp_path / "bucket" / "r" / "status.json"
    before = status.read_bytes()
    corrupt_footer(ds)
    code, err = run_in_process(monkeypatch, capsys, *run_on(ds, tmp_path, "train.max_steps=4"))
    assert (code, len(err.strip().splitlines())) == (2, 1) and SHARD in err, err
    assert status.read_bytes() == before  # still completed at step 2: never shown as running


def test_what_the_data_leaves_out_is_counted_and_said(good_meds, tmp_path, monkeypatch, capsys):
    """Issue 28 item 10: subjects with data but no split, and events dated before birth, are no longer passed
    over in silence: one warning line, and their counts in summary.json's data block."""
    ds = tmp_path / "meds"
    shutil.copytree(good_meds, ds)
    rewrite(ds / SPLITS, lambda t: t.slice(3))  # three subjects of the data in no split
    placed = pq.read_table(ds / SPLITS).column("subject_id")
    data = pq.read_table(ds / SHARD)
    birth = data.filter(pc.and_(pc.equal(data.column("code"), "MEDS_BIRTH"),
                                pc.is_in(data.column("subject_id"), placed))).slice(0, 1)
    early = birth.set_column(data.schema.get_field_index("code"), "code", pa.array(["EARLY"]))  # a day before birth
    early = early.set_column(data.schema.get_field_index("time"), "time",
                             pc.subtract(birth.column("time"), pa.scalar(86_400_000_000, pa.duration("us"))))
    pq.write_table(pa.concat_tables([data, early]), ds / SHARD)
    code, err = run_in_process(monkeypatch, capsys, *run_on(ds, tmp_path))
    out = capsys.readouterr().out
    assert code == 0, err
    said = " ".join((out + err).split())
    assert "3 subjects with data are in no split" in said and "1 events are dated before their subject's birth" \
        in said, said
    summary = json.loads((tmp_path / "bucket" / "r" / "summary.json").read_text())
    assert {k: summary["data"]["token_cache"][k] for k in ("subjects_without_split", "events_before_birth")} == \
        {"subjects_without_split": 3, "events_before_birth": 1}
