"""Source vocabularies -> MEDS conventions: namespaced codes (`SNOMED//44054006`) and naive timestamps.

FHIR names a code system by URL, Synthea CSV by a short name (or not at all: each file has a usual one).
Both map to one namespace so the same concept gets the same MEDS code whatever the export format.
"""

from __future__ import annotations

import re
from datetime import datetime

NAMESPACES = {
    # FHIR system URLs
    "http://snomed.info/sct": "SNOMED",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://unitsofmeasure.org": "UCUM",
    # Synthea CSV SYSTEM column values
    "SNOMED-CT": "SNOMED",
    "SNOMED": "SNOMED",
    "RXNORM": "RXNORM",
    "LOINC": "LOINC",
    "CVX": "CVX",
    "ICD10": "ICD10",
    "ICD10CM": "ICD10CM",
    "ICD-10-CM": "ICD10CM",
    "CPT": "CPT",
}
# Systems we prefer when a concept carries several codings (e.g. SNOMED plus a local code).
_KNOWN = frozenset(v for k, v in NAMESPACES.items() if "//" in k)


def namespace(system: str | None) -> str:
    """The MEDS prefix for a code system; unknown URLs fall back to their last path segment, upper-cased."""
    if not system:
        return "UNKNOWN"
    if system in NAMESPACES:
        return NAMESPACES[system]
    if system.upper() in NAMESPACES:
        return NAMESPACES[system.upper()]
    tail = re.split(r"[/:]", system.rstrip("/"))[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tail).upper() or "UNKNOWN"


def is_known_system(system: str | None) -> bool:
    return bool(system) and NAMESPACES.get(system) in _KNOWN


_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?)?)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?"
)


def parse_time(value: object) -> datetime | None:
    """A FHIR date/dateTime as a naive datetime in the recorded wall-clock time, or None if malformed.

    MEDS times carry no zone. Keeping the local wall clock (dropping the offset) keeps each visit on the
    calendar day it happened, which is how visits are grouped. Partial dates (`2019`, `2019-05`) take the
    first day of the period.
    """
    if not isinstance(value, str):
        return None
    m = _TIME.fullmatch(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac = m.groups()
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:  # e.g. month 13
        return None
