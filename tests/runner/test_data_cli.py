"""`ehrseq data convert` as a user runs it, and `data.source: fhir | synthea-csv` in a job's data loading."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ehrseq.data.synthetic import BINARY_TASK, PRESETS, generate_synthetic
from ehrseq.errors import InputError

from support.reference_splits import load_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The real entry point (ehrseq_runner.cli.main: InputError -> one red line, exit 2) with the data sub-app
# registered, whether or not runner/cli.py registers it already.
ENTRY = """
from ehrseq_runner.cli import app, main
from ehrseq_runner.commands.data_cli import data_app
if not any(g.name == "data" for g in app.registered_groups):
    app.add_typer(data_app, name="data")
main()
"""


def data_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, "data", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_convert_prints_summary(tmp_path):
    r = data_cli("convert", "--from", "synthea-csv", str(FIXTURES / "synthea_csv"), "meds", "--seed", "3",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "subjects: 3" in r.stdout and "time span: 1946-03-01 to 2020-04-18" in r.stdout
    assert (tmp_path / "meds" / "metadata" / "dataset.json").is_file()


def test_bad_input_is_one_line_exit_2(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "fhir", src)
    shutil.copy(FIXTURES / "fhir_bad" / "broken.json", src)
    r = data_cli("convert", "--from", "fhir", str(src), "meds", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "broken.json: not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "meds").exists()

    r = data_cli("convert", "--from", "fhir", str(src), "meds", "--skip-bad", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipped (--skip-bad): 1 files, 0 entries" in r.stdout


def test_job_source_converts_once_then_reuses(tmp_path, monkeypatch):
    src = tmp_path / "synthea"
    shutil.copytree(FIXTURES / "synthea_csv", src)
    first = load_dataset("synthea-csv", str(src), 0, 5, tmp_path / "cache")
    assert len(first.splits) == 3 and first.data.num_rows == 26

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("ehrseq.data.convert.convert", no_conversion)
    again = load_dataset("synthea-csv", str(src), 0, 5, tmp_path / "cache")
    assert again.data.equals(first.data) and again.splits == first.splits
    with open(src / "conditions.csv", "a") as f:  # a changed source is converted anew
        f.write("2011-01-01,,b9c610cd-28a6-4636-ccb6-c7a0d2a4cb85,e,SNOMED-CT,1234,New\n")
    with pytest.raises(AssertionError, match="converted again"):
        load_dataset("synthea-csv", str(src), 0, 5, tmp_path / "cache")
    with pytest.raises(InputError, match="data.path"):
        load_dataset("fhir", None, 0, 5, tmp_path / "cache")


def test_synthetic_writes_a_meds_dataset_a_meds_job_reads(tmp_path):
    r = data_cli("synthetic", "control", "--preset", "order", "--num-patients", "300", "--seed", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dataset = load_dataset("meds", str(tmp_path / "control"), 0, 0, tmp_path / "cache")
    labels = pq.read_table(tmp_path / "control" / "labels" / f"{BINARY_TASK}.parquet")
    expected = generate_synthetic(300, 4, PRESETS["order"])
    assert dataset.data.num_rows == expected.data.num_rows
    assert labels.equals(expected.labels[BINARY_TASK])
    again = data_cli("synthetic", "control", cwd=tmp_path)  # never overwrites
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
