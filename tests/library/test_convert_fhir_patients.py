"""Issue 28 item 9: a bundle's events go to its one Patient only; a bundle holding several Patients, or a
resource naming another patient, is refused (or, with skip_bad, skipped and counted), never merged."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.convert import convert
from ehrseq.errors import DataError

GOOD = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def _source(tmp_path: Path, change) -> Path:
    src = tmp_path / "src"
    shutil.copytree(GOOD, src)
    bundle = json.loads((src / "patient_b.json").read_text())
    change(bundle)
    (src / "patient_b.json").write_text(json.dumps(bundle))
    return src


def _second_patient(bundle: dict) -> None:
    """Appends Patient p904 with a Condition of its own (p-b's Conditions stay p-b's)."""
    patient = copy.deepcopy(next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"))
    patient["fullUrl"], patient["resource"]["id"] = "urn:uuid:p904", "p904"
    condition = copy.deepcopy(next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"))
    condition["resource"]["subject"] = {"reference": "urn:uuid:p904"}
    bundle["entry"] += [patient, condition]


def _foreign_condition(bundle: dict) -> None:
    condition = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")["resource"]
    condition["subject"] = {"reference": "Patient/does-not-exist"}


def test_a_bundle_of_two_patients_is_refused_naming_both(tmp_path):
    src = _source(tmp_path, _second_patient)
    with pytest.raises(DataError, match=r"patient_b.json: Bundle holds 2 Patients \(p-b, p904\); expected one"):
        convert("fhir", src, tmp_path / "out")
    summary = convert("fhir", src, tmp_path / "skipped", skip_bad=True)
    assert (summary.subjects, summary.skipped_files) == (1, 1)  # never one subject with both patients' events


def test_a_resource_naming_another_patient_is_not_given_to_the_bundles(tmp_path):
    src = _source(tmp_path, _foreign_condition)
    with pytest.raises(DataError, match="its subject 'Patient/does-not-exist' is not the bundle's Patient"):
        convert("fhir", src, tmp_path / "out")
    summary = convert("fhir", src, tmp_path / "skipped", skip_bad=True)
    clean = convert("fhir", GOOD, tmp_path / "clean")
    assert (summary.subjects, summary.skipped_entries, summary.events) == (2, 1, clean.events - 1)


def test_references_to_the_bundles_own_patient_are_kept(tmp_path):
    def own(bundle: dict) -> None:
        forms = iter(["urn:uuid:p-b", "Patient/p-b", "https://fhir.example.org/r4/Patient/p-b"])
        for e in bundle["entry"]:
            if e["resource"]["resourceType"] != "Patient":
                e["resource"]["subject"] = {"reference": next(forms, "Patient/p-b")}

    summary = convert("fhir", _source(tmp_path, own), tmp_path / "out")
    clean = convert("fhir", GOOD, tmp_path / "clean")
    assert (summary.subjects, summary.events, summary.skipped_entries) == (clean.subjects, clean.events, 0)
    codes = pq.read_table(tmp_path / "out" / "data" / "0.parquet").column("code")
    assert pc.count_distinct(codes).as_py() == clean.codes
