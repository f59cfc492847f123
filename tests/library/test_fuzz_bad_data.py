"""Issue 20: seeded fuzzing of malformed MEDS datasets (through a real job) and FHIR bundles (through the
converter). Every case ends in an InputError with a one-line message (the CLI's exit 2, no traceback) or, for
FHIR with skip_bad, a counted skip; a refused job stores nothing, a refused conversion writes no DEST."""

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from ehrseq.data.convert import convert
from ehrseq.data.meds_io import write_meds_dataset
from ehrseq.errors import InputError
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec

from support.helpers import SMALL_SPEC

MEDS_CASES = 150
FHIR_CASES = 150
FHIR_GOOD = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def tiny_meds(dest: Path) -> Path:
    """Twelve subjects, each with a birth, a static sex code and three visits; splits 8 / 2 / 2."""
    rows = [(s, None, "SEX//F") for s in range(1, 13)]
    rows += [(s, f"19{50 + s}-01-01", meds.birth_code) for s in range(1, 13)]
    rows += [(s, f"20{10 + v}-0{v + 1}-0{s % 9 + 1}", f"C//{(s * v) % 5}") for s in range(1, 13) for v in range(3)]
    subject, time, code = zip(*rows, strict=True)
    data = pa.table({"subject_id": pa.array(subject, pa.int64()),
                     "time": pa.array(time, pa.string()).cast(pa.timestamp("us")), "code": pa.array(code)})
    splits = pa.table({"subject_id": pa.array(range(1, 13), pa.int64()),
                       "split": ["train"] * 8 + ["tuning"] * 2 + ["held_out"] * 2})
    write_meds_dataset(data, splits, dest, name="tiny")
    return dest


def _corrupt_bytes(rng: random.Random, path: Path) -> None:
    data = bytearray(path.read_bytes())
    how = rng.choice(["truncate", "empty", "garbage", "footer length", "footer body"])
    if how == "truncate":
        data = data[:rng.randrange(len(data) - 8)]
    elif how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(b"PAR1" + rng.randbytes(rng.randrange(0, 200)) + b"PAR1")
    elif how == "footer length":
        data[-8:-4] = rng.choice([len(data) + rng.randrange(1, 1 << 20), rng.randrange(1, 8)]).to_bytes(4, "little")
    else:
        footer = int.from_bytes(data[-8:-4], "little")
        start = len(data) - 8 - footer
        data[start:start + 24] = rng.randbytes(24)
    path.write_bytes(bytes(data))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _bad_data_column(rng: random.Random, table: pa.Table) -> pa.Table:
    name = rng.choice(["subject_id", "time", "code"])
    how = rng.choice(["drop", "rename", "as text", "all null", "some null"] if name != "time" else
                     ["drop", "rename", "as text", "all null"])
    n = table.num_rows
    if how == "drop":
        return table.drop_columns([name])
    if how == "rename":
        return table.rename_columns([f"{c}_x" if c == name else c for c in table.column_names])
    if how == "as text" and name == "code":  # codes are text: numbers instead
        return _replace(table, name, pa.array([rng.randrange(100) for _ in range(n)]))
    if how == "as text":
        return _replace(table, name, pa.array([rng.choice(["x", "", "1e400", "nan"]) for _ in range(n)]))
    if how == "all null":
        return _replace(table, name, pa.nulls(n, table.schema.field(name).type))
    mask = pa.array([rng.random() < 0.3 for _ in range(n - 1)] + [True])  # at least one null
    return _replace(table, name, pc.if_else(mask, pa.scalar(None, table.schema.field(name).type),
                                                    table.column(name)))


def _bad_splits(rng: random.Random, table: pa.Table) -> pa.Table:
    how = rng.choice(["one split", "unknown names", "duplicates", "other subjects", "empty", "drop column",
                      "null split"])
    n = table.num_rows
    if how == "one split":
        return _replace(table, "split", pa.array([rng.choice(["train", "tuning", "held_out"])] * n))
    if how == "unknown names":
        return _replace(table, "split", pa.array([rng.choice(["TRAIN", "test", "", "val"]) for _ in range(n)]))
    if how == "duplicates":
        return pa.concat_tables([table, table.slice(rng.randrange(n), 1)])
    if how == "other subjects":
        return _replace(table, "subject_id", pc.add(table.column("subject_id"), rng.randrange(100, 10**9)))
    if how == "empty":
        return table.slice(0, 0)
    if how == "drop column":
        return table.drop_columns([rng.choice(["subject_id", "split"])])
    return _replace(table, "split", pa.nulls(n, pa.string()))


def _extra_shard(rng: random.Random, ds: Path) -> None:
    """A second data file that does not fit: another type for a column, or not parquet at all."""
    path = ds / "data" / "1.parquet"
    if rng.random() < 0.5:
        path.write_bytes(rng.randbytes(rng.randrange(0, 64)))
        return
    table = pq.read_table(ds / "data" / "0.parquet").slice(0, 5)
    pq.write_table(_replace(table, "subject_id", pa.array([f"p{v}" for v in table.column("subject_id")])), path)


def mutate_meds(rng: random.Random, ds: Path) -> str:
    """One malformation (what was done, for the failure message)."""
    shard, splits = ds / "data" / "0.parquet", ds / meds.subject_splits_filepath
    how = rng.choice(["bytes", "data column", "splits", "splits bytes", "missing file", "extra shard"])
    if how == "bytes":
        _corrupt_bytes(rng, shard)
    elif how == "data column":
        _rewrite(shard, lambda t: _bad_data_column(rng, t))
    elif how == "splits":
        _rewrite(splits, lambda t: _bad_splits(rng, t))
    elif how == "splits bytes":
        _corrupt_bytes(rng, splits)
    elif how == "missing file":
        rng.choice([shard, splits]).unlink()
    else:
        _extra_shard(rng, ds)
    return how


def test_fuzzed_meds_datasets_exit_2_with_one_line_and_store_nothing(tmp_path):
    good = tiny_meds(tmp_path / "good")
    rng = random.Random(20)
    for case in range(MEDS_CASES):
        ds = tmp_path / f"case{case}"
        shutil.copytree(good, ds)
        how = mutate_meds(rng, ds)
        spec = load_spec(SMALL_SPEC, ["data.source=meds", f"data.path={ds}", f"storage.uri=file://{ds}-bucket",
                                      "name=r", f"runtime.work_dir={ds}-work", "train.max_steps=1",
                                      "train.batch_size=4", "train.eval_every=0", "data.max_seq_len=16"])
        with pytest.raises(InputError) as refused:
            run_job(spec, Console(quiet=True))
        message = str(refused.value)
        assert "\n" not in message and str(ds) in message, (case, how, message)
        stored = [p for p in Path(f"{ds}-bucket").rglob("*") if p.is_file()]
        assert stored == [], (case, how, stored)
        shutil.rmtree(ds, ignore_errors=True)


JUNK = [None, True, 0, -1, 10**400, 1e308, float("nan"), float("inf"), "", "x", "2019-13-45", [], [1], {},
        {"coding": 5}, {"coding": [5]}, {"coding": [{"system": 5, "code": 7}]}, [[[]]], {"value": float("-inf")}]


def _nodes(obj, path=()):
    """Every (container, key) in a JSON document, to replace one of them."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield obj, k
        yield from _nodes(v, (*path, k))


def mutate_bundle(rng: random.Random, bundle: dict) -> str:
    """Replaces a few random nodes with junk values (or deep nesting); returns the JSON text."""
    for _ in range(rng.randrange(1, 4)):
        container, key = rng.choice(list(_nodes(bundle)))
        container[key] = rng.choice(JUNK) if rng.random() < 0.9 else json.loads("[" * 50 + "]" * 50)
    text = json.dumps(bundle)
    if rng.random() < 0.05:
        text = text[:rng.randrange(len(text))]  # a truncated file
    if rng.random() < 0.03:
        text = '{"resourceType": "Bundle", "entry": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return text


def test_fuzzed_fhir_bundles_exit_2_with_one_line_or_are_counted(tmp_path):
    names = sorted(p.name for p in FHIR_GOOD.glob("*.json"))
    rng = random.Random(20)
    for case in range(FHIR_CASES):
        src, out = tmp_path / f"src{case}", tmp_path / f"out{case}"
        shutil.copytree(FHIR_GOOD, src)
        name = rng.choice(names)
        (src / name).write_text(mutate_bundle(rng, json.loads((FHIR_GOOD / name).read_text())))
        skip_bad = rng.random() < 0.5
        try:
            summary = convert("fhir", src, out, skip_bad=skip_bad)
        except InputError as e:
            assert "\n" not in str(e) and str(src) in str(e), (case, str(e))
            assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
            continue
        finally:
            shutil.rmtree(src)
        assert summary.subjects >= 1 and (not skip_bad or summary.skipped_examples or
                                          (summary.skipped_files, summary.skipped_entries) == (0, 0))
        values = pq.read_table(out / "data" / "0.parquet").column("numeric_value").to_numpy(zero_copy_only=False)
        assert (abs(values[values == values]) < float("inf")).all(), case  # no NaN, no inf
        shutil.rmtree(out)
