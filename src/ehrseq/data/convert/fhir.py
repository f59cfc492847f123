"""FHIR R4 Bundles (one JSON file per patient, as Synthea writes them) -> MEDS events.

One file is parsed at a time, so memory holds one patient's bundle (a few MB) however many files there
are. Each clinical resource becomes one event at its clinical time, coded by its first coding from a
known system (SNOMED, RxNorm, LOINC, CVX, ...). Observations keep numeric values (each component of a
panel, such as blood pressure, is its own event); Patient gives MEDS_BIRTH, MEDS_DEATH and a static sex.
Bundles with neither a Patient nor clinical resources (Synthea's hospital and practitioner files) are
ignored. Events go to the bundle's one Patient only: a bundle holding several, or a resource whose subject is
another patient, is refused (under skip_bad: skipped and counted), never merged into one subject.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import meds
import pyarrow as pa

from ehrseq.data.convert.codes import is_known_system, namespace, parse_time
from ehrseq.data.convert.report import Problems
from ehrseq.errors import one_line

# resourceType -> (field holding the CodeableConcept, fields tried in order for the event's time)
RESOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Encounter": ("type", ("period.start",)),
    "Condition": ("code", ("onsetDateTime", "onsetPeriod.start", "recordedDate")),
    "MedicationRequest": ("medicationCodeableConcept", ("authoredOn",)),
    "MedicationAdministration": ("medicationCodeableConcept", ("effectiveDateTime", "effectivePeriod.start")),
    "Procedure": ("code", ("performedDateTime", "performedPeriod.start")),
    "Observation": ("code", ("effectiveDateTime", "effectivePeriod.start", "issued")),
    "Immunization": ("vaccineCode", ("occurrenceDateTime",)),
    "AllergyIntolerance": ("code", ("recordedDate", "onsetDateTime")),
}
SEX = {"female": "SEX//F", "male": "SEX//M"}
FLOAT32_MAX = 3.4028234663852886e38  # MEDS numeric_value is float32: larger magnitudes would become inf


class EntryError(ValueError):
    """One bundle entry cannot be converted; the message says which field."""


def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _show(value: Any) -> str:
    """A value from the file, short and on one line (an integer of 10^5000 has no printable repr)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}(an integer of {value.bit_length():,} bits)"
    return one_line(repr(value), 80)


def _codings(concept: Any, field: str) -> list[dict]:
    """The codings of a CodeableConcept; EntryError when `coding` is not a list."""
    coding = concept.get("coding") if isinstance(concept, dict) else None
    if coding is not None and not isinstance(coding, list):
        raise EntryError(f"{field}.coding {_show(coding)} is not a list")
    return [c for c in coding or [] if isinstance(c, dict)]


def _code(concept: Any, field: str) -> str:
    """`NAMESPACE//code` from a CodeableConcept (or a list of them, as Encounter.type)."""
    concepts = concept if isinstance(concept, list) else [concept]
    codings = [c for cc in concepts for c in _codings(cc, field)]
    codings = [c for c in codings if isinstance(c.get("code"), str) and c["code"].strip()]
    if not codings:
        raise EntryError(f"missing {field}.coding with a code")
    for c in codings:
        if c.get("system") is not None and not isinstance(c["system"], str):
            raise EntryError(f"{field}.coding system {_show(c['system'])} is not a string")
    best = next((c for c in codings if is_known_system(c.get("system"))), codings[0])
    return f"{namespace(best.get('system'))}//{best['code'].strip()}"


def _time(resource: dict, fields: tuple[str, ...]) -> datetime:
    for f in fields:
        value = _get(resource, f)
        if value is not None:
            t = parse_time(value)
            if t is None:
                raise EntryError(f"{f} {value!r} is not a FHIR date/dateTime")
            return t
    raise EntryError(f"missing {' / '.join(fields)}")


def _number(value: Any, field: str) -> float:
    """A finite number that fits MEDS numeric_value (float32); NaN, inf and 10^400 are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EntryError(f"{field} {_show(value)} is not a number")
    if not (isinstance(value, float) and not math.isfinite(value)) and abs(value) <= FLOAT32_MAX:
        return float(value)
    raise EntryError(f"{field} {_show(value)} is not a finite number that fits numeric_value (float32)")


def _value(obj: dict) -> tuple[float | None, str | None]:
    """(numeric_value, text_value) of an Observation or one of its components."""
    quantity = obj.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        return _number(quantity["value"], "valueQuantity.value"), None
    if "valueInteger" in obj:
        return _number(obj["valueInteger"], "valueInteger"), None
    if isinstance(obj.get("valueString"), str):
        return None, obj["valueString"]
    concept = obj.get("valueCodeableConcept")
    if isinstance(concept, dict):
        coding = (_codings(concept, "valueCodeableConcept") or [{}])[0]
        text = concept.get("text") or coding.get("display") or coding.get("code")
        if text is not None and not isinstance(text, str):
            raise EntryError(f"valueCodeableConcept text {_show(text)} is not a string")
        return None, text
    return None, None


def _events(resource: dict) -> list[tuple[datetime, str, float | None, str | None]]:
    """The events of one clinical resource."""
    kind = resource["resourceType"]
    concept_field, time_fields = RESOURCES[kind]
    time = _time(resource, time_fields)
    concept = resource.get(concept_field)
    if kind == "Encounter" and not concept and isinstance(resource.get("class"), dict):
        concept = {"coding": [{"system": "ENCOUNTER", "code": resource["class"].get("code")}]}
    if kind == "Observation" and resource.get("component") and not any(k.startswith("value") for k in resource):
        if not isinstance(resource["component"], list):
            raise EntryError("component is not a list")
        out = []
        for i, comp in enumerate(resource["component"]):
            try:
                if not isinstance(comp, dict):
                    raise EntryError(f"{_show(comp)} is not an object")
                out.append((time, _code(comp.get("code"), "code"), *_value(comp)))
            except EntryError as e:
                raise EntryError(f"component {i}: {e}") from None
        return out
    values = _value(resource) if kind == "Observation" else (None, None)
    return [(time, _code(concept, concept_field), *values)]


def _patient_events(patient: dict) -> list[tuple[datetime | None, str, float | None, str | None]]:
    birth = patient.get("birthDate")
    if birth is None:
        raise EntryError("missing birthDate")
    birth_time = parse_time(birth)
    if birth_time is None:
        raise EntryError(f"birthDate {birth!r} is not a FHIR date")
    out: list[tuple[datetime | None, str, float | None, str | None]] = [(birth_time, meds.birth_code, None, None)]
    if "deceasedDateTime" in patient:
        death = parse_time(patient["deceasedDateTime"])
        if death is None:
            raise EntryError(f"deceasedDateTime {patient['deceasedDateTime']!r} is not a FHIR dateTime")
        out.append((death, meds.death_code, None, None))
    gender = patient.get("gender")
    if isinstance(gender, str) and gender:
        out.append((None, SEX.get(gender, f"SEX//{gender.upper()}"), None, None))
    return out


def _references_to(patient: dict, full_url: Any) -> set[str]:
    """The ways a resource in the bundle can point at its Patient: the entry's fullUrl (Synthea: urn:uuid:ID)
    and Patient/ID."""
    pid = patient.get("id")
    refs = {f"Patient/{pid}", f"urn:uuid:{pid}"} if isinstance(pid, str) and pid else set()
    return refs | ({full_url} if isinstance(full_url, str) and full_url else set())


def _subject_reference(resource: dict) -> str | None:
    """The patient a clinical resource names (`subject`, or `patient` for Immunization and AllergyIntolerance);
    None when it names none (then it is the bundle's patient's)."""
    for field in ("subject", "patient"):
        ref = resource.get(field)
        if isinstance(ref, dict) and ref.get("reference") is not None:
            return ref["reference"] if isinstance(ref["reference"], str) else _show(ref["reference"])
    return None


def _label(i: int, resource: Any) -> str:
    if not isinstance(resource, dict):
        return f"entry {i}"
    kind, name = resource.get("resourceType"), resource.get("id")
    return f"entry {i} ({one_line(kind, 40) if isinstance(kind, str) else '?'} " \
           f"{one_line(name, 80) if isinstance(name, str) else '?'})"


class FhirReader:
    """Reads a folder of FHIR R4 Bundle JSON files (searched recursively, in name order)."""

    unit = "files"

    def __init__(self, src: Path, problems: Problems) -> None:
        self.src = Path(src)
        self.problems = problems
        self.files = sorted(self.src.rglob("*.json"))
        self.source_ids: list[str] = []  # subject_id i + 1 came from source_ids[i]

    def events(self, on_progress: Callable[[int, int], None] | None = None) -> Iterator[pa.Table]:
        """One table of events per patient bundle; subject ids are 1, 2, ... in file order."""
        for n, path in enumerate(self.files, start=1):
            rows = self._read(path, subject_id=len(self.source_ids) + 1)
            if rows is not None:
                yield rows
            if on_progress:
                on_progress(n, len(self.files))

    def _read(self, path: Path, subject_id: int) -> pa.Table | None:
        try:
            with open(path, "rb") as f:
                bundle = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # ValueError: also an integer over 4,300 digits
            self.problems.bad_file(path, f"not valid JSON ({one_line(e)})")
            return None
        except RecursionError:
            self.problems.bad_file(path, "not valid JSON here (nested deeper than Python's JSON parser allows)")
            return None
        except OSError as e:
            self.problems.bad_file(path, f"cannot read ({e.strerror})")
            return None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            self.problems.bad_file(path, "not a FHIR Bundle (resourceType is not 'Bundle')")
            return None
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            self.problems.bad_file(path, "Bundle has no 'entry' list")
            return None
        resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
        kinds = [r.get("resourceType") if isinstance(r, dict) else None for r in resources]
        kinds = [k if k is None or isinstance(k, str) else False for k in kinds]  # False: not a string
        if "Patient" not in kinds:
            if any(k in RESOURCES for k in kinds):
                self.problems.bad_file(path, "Bundle has clinical resources but no Patient")
            return None  # e.g. Synthea's hospitalInformation / practitionerInformation bundles

        patients = [r for r, k in zip(resources, kinds, strict=True) if k == "Patient"]
        if len(patients) > 1:  # whose would each Condition be? never merged into one subject
            names = ", ".join(one_line(p.get("id"), 80) if isinstance(p.get("id"), str) else "?" for p in patients[:5])
            self.problems.bad_file(path, f"Bundle holds {len(patients)} Patients ({names}); expected one patient "
                                         "per bundle (split it into one file per patient, as Synthea writes)")
            return None
        i = kinds.index("Patient")
        try:
            rows = _patient_events(resources[i])
        except EntryError as e:
            self.problems.bad_file(path, f"{_label(i, resources[i])}: {e}")
            return None
        own = _references_to(resources[i], entries[i].get("fullUrl"))
        own_url_tail = tuple(f"/{ref}" for ref in own if ref.startswith("Patient/"))  # a server's .../Patient/ID
        for i, (resource, kind) in enumerate(zip(resources, kinds, strict=True)):
            if resource is None:
                self.problems.bad_entries(f"{path}: entry {i}", "missing 'resource'")
            elif not isinstance(resource, dict):
                self.problems.bad_entries(f"{path}: entry {i}", f"resource {_show(resource)} is not an object")
            elif kind is False:
                self.problems.bad_entries(f"{path}: {_label(i, resource)}",
                                          f"resourceType {_show(resource['resourceType'])} is not a string")
            elif kind in RESOURCES:
                subject = _subject_reference(resource)
                if subject is not None and subject not in own and not subject.endswith(own_url_tail):
                    self.problems.bad_entries(f"{path}: {_label(i, resource)}", f"its subject {_show(subject)} is "
                                              "not the bundle's Patient; not given to anyone")
                    continue
                try:
                    rows += _events(resource)
                except EntryError as e:
                    self.problems.bad_entries(f"{path}: {_label(i, resource)}", str(e))
        self.source_ids.append(str(resources[kinds.index("Patient")].get("id") or path.stem))
        time, code, numeric, text = zip(*rows, strict=True)
        return pa.table(
            {
                "subject_id": pa.array([subject_id] * len(rows), pa.int64()),
                "time": pa.array(time, pa.timestamp("us")),
                "code": pa.array(code, pa.string()),
                "numeric_value": pa.array(numeric, pa.float32()),
                "text_value": pa.array(text, pa.large_string()),
            }
        )
