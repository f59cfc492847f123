"""FHIR R4 bundles -> MEDS: validity, one birth per patient, one SNOMED event per Condition, bad input."""

import json
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.convert import convert
from ehrseq.data.convert.codes import namespace, parse_time
from ehrseq.data.convert.spool import EVENT_SCHEMA, ShardSpool
from ehrseq.data.meds_io import read_meds_dataset
from ehrseq.errors import DataError, InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = FIXTURES / "fhir"
BAD = FIXTURES / "fhir_bad"


def _shards(dest: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in sorted((dest / "data").glob("*.parquet"))]
    for t in tables:
        meds.DataSchema.validate(t)
    return pa.concat_tables(tables)


def _conditions(folder: Path) -> list[tuple[str, str, datetime]]:
    """(patient id, SNOMED code, onset) of every Condition in the fixture bundles, read independently."""
    out = []
    for path in sorted(folder.glob("*.json")):
        entries = [e["resource"] for e in json.loads(path.read_text())["entry"]]
        patient = next((r["id"] for r in entries if r["resourceType"] == "Patient"), None)
        for r in entries:
            if r["resourceType"] == "Condition":
                code = next(c["code"] for c in r["code"]["coding"] if c["system"] == "http://snomed.info/sct")
                out.append((patient, code, parse_time(r.get("onsetDateTime") or r["recordedDate"])))
    return out


def _subjects_by_source(dest: Path) -> dict[str, int]:
    rows = pq.read_table(dest / "metadata" / "subject_sources.parquet").to_pylist()
    return {r["source_id"]: r["subject_id"] for r in rows}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dest = tmp_path_factory.mktemp("fhir") / "meds"
    return convert("fhir", GOOD, dest, seed=1), dest


def test_output_is_valid_meds_with_one_birth_per_patient(converted):
    summary, dest = converted
    data = _shards(dest)
    assert summary.subjects == 2 and summary.files == 3  # the hospitalInformation bundle has no patient
    assert summary.events == data.num_rows and summary.codes == len(pc.unique(data.column("code")))
    births = data.filter(pc.equal(data.column("code"), meds.birth_code))
    assert sorted(births.column("subject_id").to_pylist()) == [1, 2]
    deaths = data.filter(pc.equal(data.column("code"), meds.death_code))
    assert deaths.column("time").to_pylist() == [datetime(2021, 6, 1, 9, 15)]  # wall clock, offset dropped
    ds = read_meds_dataset(dest)  # codes, splits and dataset.json are readable too
    assert set(ds.splits) == {1, 2}
    sources = pq.read_table(dest / "metadata" / "subject_sources.parquet").to_pylist()
    assert sources[1] == {"subject_id": 2, "source_id": "p-b"}


def test_one_snomed_event_per_condition(converted):
    _, dest = converted
    data = _shards(dest)
    to_subject = _subjects_by_source(dest)
    expected = Counter((to_subject[p], f"SNOMED//{c}", t) for p, c, t in _conditions(GOOD))
    assert sum(expected.values()) == 5
    rows = Counter((r["subject_id"], r["code"], r["time"]) for r in data.to_pylist())
    assert all(rows[key] == n for key, n in expected.items())
    assert "SNOMED//44054006" in {c for _, c, _ in expected}  # SNOMED preferred over a local first coding


def test_codes_are_namespaced_and_observations_numeric(converted):
    _, dest = converted
    rows = _shards(dest).to_pylist()
    prefixes = {r["code"].split("//")[0] for r in rows if "//" in r["code"]}
    assert prefixes == {"SEX", "SNOMED", "RXNORM", "LOINC", "CVX"}
    values = {r["code"]: r["numeric_value"] for r in rows if r["numeric_value"] is not None}
    assert values["LOINC//8480-6"] == pytest.approx(102.9, abs=1e-4)  # systolic, a blood-pressure component
    assert values["LOINC//4548-4"] == pytest.approx(8.1, abs=1e-4)
    assert "LOINC//85354-9" not in {r["code"] for r in rows}  # the panel itself carries no value
    smoking = next(r for r in rows if r["code"] == "LOINC//72166-2")
    assert smoking["numeric_value"] is None and smoking["text_value"] == "Ex-smoker (finding)"


def _with_bad(tmp_path: Path, *bad: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(GOOD, src)
    for name in bad:
        shutil.copy(BAD / name, src / name)
    return src


def test_broken_json_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        convert("fhir", _with_bad(tmp_path, "broken.json"), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_field_names_file_and_entry(tmp_path):
    with pytest.raises(DataError, match=r"missing_fields\.json: entry 2 \(Condition c-y2\): missing code\.coding"):
        convert("fhir", _with_bad(tmp_path, "missing_fields.json"), tmp_path / "out")


def test_skip_bad_skips_and_counts(tmp_path):
    summary = convert("fhir", _with_bad(tmp_path, "broken.json", "missing_fields.json"), tmp_path / "out",
                      skip_bad=True)
    assert (summary.skipped_files, summary.skipped_entries, summary.subjects) == (1, 2, 3)
    data = _shards(tmp_path / "out")
    subject = _subjects_by_source(tmp_path / "out")["p-y"]
    codes = data.filter(pc.equal(data.column("subject_id"), subject)).column("code").to_pylist()
    assert codes == ["SEX//F", meds.birth_code, "SNOMED//195662009"]  # the good entries of a partly bad file


def test_refuses_to_overwrite_a_folder_that_is_not_meds(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="refusing to overwrite"):
        convert("fhir", GOOD, tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").exists()
    convert("fhir", GOOD, tmp_path / "meds")
    convert("fhir", GOOD, tmp_path / "meds", subjects_per_shard=1)  # an existing MEDS dataset is replaced
    assert sorted(p.name for p in (tmp_path / "meds" / "data").iterdir()) == ["0.parquet", "1.parquet"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_spool_keeps_subjects_whole_across_spills(tmp_path):
    spool = ShardSpool(tmp_path, subjects_per_shard=2, max_rows=3)  # spills to disk after every 3 rows
    rows = [(s, i) for i in range(4) for s in (5, 1, 3, 2, 4)]  # subjects interleaved, as in CSV files
    for s, i in rows:
        spool.add(pa.table({"subject_id": [s], "time": pa.array([i], pa.timestamp("us")), "code": [f"C{i}"],
                            "numeric_value": pa.nulls(1, pa.float32()), "text_value": pa.nulls(1, pa.large_string())},
                           schema=EVENT_SCHEMA))
    shards = [sorted(zip(t.column("subject_id").to_pylist(), t.column("code").to_pylist(), strict=True))
              for t in spool.shards()]
    assert [sorted({s for s, _ in shard}) for shard in shards] == [[1, 2], [3, 4], [5]]
    assert sorted(x for shard in shards for x in shard) == sorted((s, f"C{i}") for s, i in rows)
    assert list(tmp_path.iterdir()) == []  # spilled parts are removed once read


def test_parse_time_and_namespaces():
    assert parse_time("2019-05-13T07:21:41.5-04:00") == datetime(2019, 5, 13, 7, 21, 41, 500000)
    assert parse_time("2019-05-13T07:21:41Z") == datetime(2019, 5, 13, 7, 21, 41)
    assert parse_time("1965-03-02") == datetime(1965, 3, 2)
    assert parse_time("2019-05") == datetime(2019, 5, 1)
    for bad in ("2019-13-01", "yesterday", "", None, 20190513):
        assert parse_time(bad) is None
    assert namespace("http://snomed.info/sct") == "SNOMED" and namespace("SNOMED-CT") == "SNOMED"
    assert namespace("http://hl7.org/fhir/sid/cvx") == "CVX" and namespace("RxNorm") == "RXNORM"
    assert namespace("http://example.org/fhir/CodeSystem/local-codes") == "LOCAL-CODES"
