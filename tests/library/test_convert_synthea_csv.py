"""Synthea CSV -> MEDS: Synthea 3 and Synthea 2 layouts, streaming in blocks, bad rows named by line."""

import shutil
from datetime import datetime
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.convert import convert, synthea_csv
from ehrseq.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _data(dest: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in sorted((dest / "data").glob("*.parquet"))]
    for t in tables:
        meds.DataSchema.validate(t)
    return pa.concat_tables(tables)


def _rows(dest: Path, subject: int) -> list[tuple]:
    data = _data(dest)
    data = data.filter(pc.equal(data.column("subject_id"), subject))
    return [(r["time"], r["code"], r["numeric_value"], r["text_value"]) for r in data.to_pylist()]


def test_synthea3_export(tmp_path):
    summary = convert("synthea-csv", FIXTURES / "synthea_csv", tmp_path / "out")
    data = _data(tmp_path / "out")
    assert (summary.subjects, summary.events) == (3, data.num_rows)
    births = data.filter(pc.equal(data.column("code"), meds.birth_code))
    assert births.column("subject_id").to_pylist() == [1, 2, 3]  # ids in patients.csv order
    rows = _rows(tmp_path / "out", 2)
    assert (None, "SEX//F", None, None) in rows
    assert (datetime(2020, 4, 18), meds.death_code, None, None) in rows
    # one event per conditions.csv row; its SYSTEM column wins over the usual SNOMED
    conditions = [r[:2] for r in rows if r[1] in ("SNOMED//44054006", "SNOMED//840539006", "ICD10//U07.1")]
    assert conditions == [(datetime(2019, 3, 2), "SNOMED//44054006"), (datetime(2020, 4, 10), "SNOMED//840539006"),
                          (datetime(2020, 4, 10), "ICD10//U07.1")]
    assert (datetime(2020, 4, 10, 15), "SNOMED//371908008", None, None) in rows  # procedures.csv START
    assert (datetime(2019, 3, 2, 9), "RXNORM//860975", None, None) in rows
    lab = next(r for r in rows if r[1] == "LOINC//4548-4")
    assert lab[2] == pytest.approx(7.4, abs=1e-4) and lab[3] is None
    smoking = next(r for r in _rows(tmp_path / "out", 1) if r[1] == "LOINC//72166-2")
    assert smoking[2] is None and smoking[3] == "Never smoked tobacco (finding)"
    assert (datetime(2016, 8, 11, 8, 30), "CVX//20", None, None) in _rows(tmp_path / "out", 3)


def test_synthea2_procedures_use_date(tmp_path):
    convert("synthea-csv", FIXTURES / "synthea_csv_v2", tmp_path / "out")
    rows = _rows(tmp_path / "out", 1)
    assert (datetime(2010, 1, 23, 17, 45, 28), "SNOMED//23426006", None, None) in rows
    assert (datetime(2010, 1, 23), "SNOMED//10509002", None, None) in rows  # no SYSTEM column: SNOMED


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "synthea_csv", src)
    return src


def _append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.writelines(line + "\n" for line in lines)


def test_bad_rows_name_file_and_line_or_are_skipped(tmp_path, monkeypatch):
    src = _copy(tmp_path)
    monkeypatch.setattr(synthea_csv, "BLOCK_SIZE", 256)  # several blocks: line numbers must carry across
    known = "b9c610cd-28a6-4636-ccb6-c7a0d2a4cb85"
    _append(src / "conditions.csv", *[f"2011-01-0{d},,{known},e,SNOMED-CT,6{d},Padding row" for d in range(1, 9)])
    _append(src / "conditions.csv", f"2011-02-30,,{known},e,SNOMED-CT,123,Impossible date",  # line 14
            "2011-03-01,,unknown-patient,e,SNOMED-CT,456,Who")  # line 15
    with pytest.raises(DataError, match=r"conditions\.csv: line 14: START is not a date/datetime \(got '2011-02-30'\)"):
        convert("synthea-csv", src, tmp_path / "out")
    summary = convert("synthea-csv", src, tmp_path / "out", skip_bad=True)
    assert summary.skipped_entries == 2 and summary.skipped_files == 0
    codes = set(_data(tmp_path / "out").column("code").to_pylist())
    assert {f"SNOMED//6{d}" for d in range(1, 9)} <= codes and not {"SNOMED//123", "SNOMED//456"} & codes


def test_bad_patient_rows(tmp_path):
    src = _copy(tmp_path)
    _append(src / "patients.csv", "d00d,1970-01-01,someday" + "," * 22 + "F")  # line 5
    with pytest.raises(DataError, match=r"patients\.csv: line 5: DEATHDATE is not a date \(got 'someday'\)"):
        convert("synthea-csv", src, tmp_path / "out")
    summary = convert("synthea-csv", src, tmp_path / "out", skip_bad=True)
    assert (summary.subjects, summary.skipped_entries) == (3, 1)


def test_ragged_rows(tmp_path):
    src = _copy(tmp_path)
    _append(src / "medications.csv", "2011-01-01T00:00:00Z,,b9c610cd-28a6-4636-ccb6-c7a0d2a4cb85")  # line 4
    with pytest.raises(DataError, match=r"medications\.csv: not a readable CSV file.*Expected 13 columns, got 3"):
        convert("synthea-csv", src, tmp_path / "out")
    summary = convert("synthea-csv", src, tmp_path / "out", skip_bad=True)
    assert summary.skipped_entries == 1
    assert summary.skipped_examples == [f"{src / 'medications.csv'}: line 4: expected 13 fields, got 3"]


def test_missing_column_or_file(tmp_path):
    src = _copy(tmp_path)
    (src / "conditions.csv").write_text("START,STOP,PATIENT,ENCOUNTER,DESCRIPTION\n")
    with pytest.raises(DataError, match=r"conditions\.csv: missing column\(s\) CODE"):
        convert("synthea-csv", src, tmp_path / "out")
    (src / "patients.csv").unlink()
    with pytest.raises(DataError, match=r"patients\.csv: file not found"):
        convert("synthea-csv", src, tmp_path / "out")
