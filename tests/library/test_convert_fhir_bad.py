"""Issue 20: malformed FHIR bundles stop the conversion with one message naming the file and entry, or are
skipped and counted under skip_bad; never a traceback, never a NaN or infinite value in the output."""

import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data.convert import convert
from ehrseq.errors import DataError

GOOD = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
PATIENT = "patient_a.json"


def bundle() -> dict:
    return json.loads((GOOD / PATIENT).read_text())


def entry(b: dict, i: int) -> dict:
    return b["entry"][i]["resource"]


def source_with(tmp_path: Path, text: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(GOOD, src)
    (src / PATIENT).write_text(text)
    return src


def mutated(change) -> str:
    b = bundle()
    change(b)
    return json.dumps(b)  # NaN / Infinity written as the JSON extensions Python reads back


# name -> (bundle text, what the message names after the file)
BAD = {
    "list resourceType": (mutated(lambda b: entry(b, 4).update(resourceType=["Condition"])),
                          "entry 4 (? f5e83d2e-bfe1-4269-af54-d643a17de16c): resourceType ['Condition'] is not a "
                          "string"),
    "dict resourceType": (mutated(lambda b: entry(b, 5).update(resourceType={"a": 1})), "entry 5"),
    "non-list component": (mutated(lambda b: entry(b, 11).update(component={"code": 1})),
                           "entry 11 (Observation 8488af34-15ee-45dc-853a-bed685390773): component is not a list"),
    "int coding entry": (mutated(lambda b: entry(b, 4)["code"].update(coding=7)), "entry 4 (Condition"),
    "int coding system": (mutated(lambda b: entry(b, 9)["code"]["coding"][0].update(system=5)),
                          "entry 9 (Procedure 5ef98f2b-4a36-4b01-87e7-d27221dddc24): code.coding system 5 is not"),
    "valueInteger 10^400": (mutated(lambda b: (entry(b, 12).pop("valueQuantity"),
                                               entry(b, 12).update(valueInteger=10**400))),
                            "entry 12 (Observation 67f28483-5ee1-40ca-a94e-7f43a2bc4abf): valueInteger (an integer "
                            "of 1,329 bits) is not a finite number"),
    "NaN valueQuantity": (mutated(lambda b: entry(b, 13)["valueQuantity"].update(value=float("nan"))),
                          "entry 13 (Observation c532a1fc-94b5-401d-895b-cd20508193c5): valueQuantity.value nan is "
                          "not a finite number"),
    "inf valueQuantity": (mutated(lambda b: entry(b, 14)["valueQuantity"].update(value=float("-inf"))),
                          "valueQuantity.value -inf is not a finite number"),
    "1e400 in a component": (mutated(lambda b: entry(b, 11)["component"][1]["valueQuantity"].update(value=1e400)),
                             "entry 11 (Observation 8488af34-15ee-45dc-853a-bed685390773): component 1: "
                             "valueQuantity.value inf"),
    "nested 100,000 deep": ('{"resourceType": "Bundle", "entry": ' + "[" * 100_000 + "]" * 100_000 + "}",
                            "nested deeper than"),
    "dict text in a coded value": (mutated(lambda b: entry(b, 13).update(
        valueQuantity=None, valueCodeableConcept={"text": {"x": 1}})), "entry 13"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_malformed_bundle_names_file_and_entry(case, tmp_path):
    text, named = BAD[case]
    src = source_with(tmp_path, text)
    with pytest.raises(DataError) as refused:
        convert("fhir", src, tmp_path / "out")
    message = str(refused.value)
    assert message.startswith(f"{src / PATIENT}: ") and named in message, message
    assert "\n" not in message and len(message) < 600
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", BAD)
def test_skip_bad_skips_and_counts_each_malformed_bundle(case, tmp_path):
    text, _ = BAD[case]
    summary = convert("fhir", source_with(tmp_path, text), tmp_path / "out", skip_bad=True)
    assert summary.skipped_files + summary.skipped_entries >= 1
    assert summary.subjects == 2 - summary.skipped_files  # the file skipped whole, or only its bad entries
    values = pq.read_table(tmp_path / "out" / "data" / "0.parquet").column("numeric_value")
    assert pc.all(pc.is_finite(values.filter(pc.is_valid(values)))).as_py()
