"""What a visit is (`data.visit`): the unit BEHRT's segments and positions count, and the count baselines count in.

MEDS has timed codes, no encounters, so visits are derived from the rows:

- `day` (the default): a subject's events on one calendar day (UTC);
- `hours:N`: fixed N-hour buckets since the epoch (`hours:24` is `day`);
- `admission`: each hospital stay is one visit, from an admission code to its discharge code, as MEDS-Transforms'
  MIMIC-IV extraction records them (`HOSPITAL_ADMISSION//<type>//<location>` at admittime,
  `HOSPITAL_DISCHARGE//<location>` at dischtime) and CEHR-BERT groups visits; events outside any stay are day
  visits. Start and end codes are patterns as in data.codes (globs, or prefixes without a wildcard).

A stay holds every row from the first row at its admission's time to the last row at its discharge's time, so
diagnoses stamped at discharge belong to it. Stays that nest or overlap (an ICU stay inside a hospital stay, a
transfer that closes and reopens at one moment) are one visit: the subject's stay depth is counted through its
admission (+1) and discharge (-1) rows, a discharge without an open stay ignored. A stay still open at the
subject's last row (a history cut at a prediction time during it) runs to that row, so only the rows a model may
see decide how they are grouped.

The token cache calls `visit_index` (ehrseq.data.stream), and so does the per-patient reference the tests prove it
equal to (tests/support/reference_histories.py): every model reads the same visits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ehrseq.data.codes import matching

HOUR_US = 3_600 * 1_000_000
KINDS = ("day", "admission", "hours")
MAX_HOURS = 8_760  # a year
ADMISSION_START = ("HOSPITAL_ADMISSION",)  # MEDS-Transforms' MIMIC-IV codes
ADMISSION_END = ("HOSPITAL_DISCHARGE",)


@dataclass(frozen=True)
class VisitRule:
    """`kind` day | admission | hours; `hours` the bucket width (24 for day and for events outside stays);
    `start` and `end` the admission and discharge code patterns (admission only)."""

    kind: str = "day"
    hours: int = 24
    start: tuple[str, ...] = ADMISSION_START
    end: tuple[str, ...] = ADMISSION_END

    @classmethod
    def parse(cls, text: str, start: tuple[str, ...] = ADMISSION_START,
              end: tuple[str, ...] = ADMISSION_END) -> VisitRule:
        """`day`, `admission` or `hours:N` (N whole hours, 1 to MAX_HOURS); ValueError naming what is wrong."""
        if text in ("day", "admission"):
            rule = cls(text, 24, tuple(start), tuple(end))
        elif (m := re.fullmatch(r"hours:(\d{1,5})", text)) and 1 <= int(m[1]) <= MAX_HOURS:
            rule = cls("hours", int(m[1]))
        else:
            raise ValueError(f"{text!r} is not a visit definition; use day, admission or hours:N (N whole hours, "
                             f"1 to {MAX_HOURS})")
        if rule.kind == "admission" and not (rule.start and rule.end):
            raise ValueError("admission visits need admission (start) and discharge (end) code patterns")
        return rule

    def identity(self) -> dict[str, Any] | None:
        """What the token cache's key holds; None for day visits (so caches built before data.visit stay valid)."""
        if self.kind == "day" or (self.kind == "hours" and self.hours == 24):
            return None
        if self.kind == "hours":
            return {"kind": "hours", "hours": self.hours}
        return {"kind": "admission", "start": list(self.start), "end": list(self.end)}

    def describe(self) -> str:
        """For the summary: the rule in words."""
        if self.kind == "admission":
            return (f"admission (stays from {', '.join(self.start)} to {', '.join(self.end)}; other events by "
                    "calendar day)")
        return "calendar day" if self.identity() is None else f"{self.hours}-hour buckets"


DAY_VISITS = VisitRule()


def visit_index(patient: np.ndarray, time: np.ndarray, code: np.ndarray, names: list[str],
                rule: VisitRule = DAY_VISITS) -> np.ndarray:
    """(R,) int64 visit of each row, 0, 1, ... in row order, for a subject's (or many subjects') timed event rows
    sorted by patient then time: `patient` (R,) any ids, `time` (R,) int64 microseconds, `code` (R,) index into
    `names`. Visits never span two patients."""
    R = len(time)
    if not R:
        return np.zeros(0, np.int64)
    bucket = time // (rule.hours * HOUR_US)  # (R,)
    stay = _stays(patient, time, code, names, rule) if rule.kind == "admission" else np.full(R, -1)
    previous_stay = np.r_[-1, stay[:-1]]
    new_bucket = np.r_[True, bucket[1:] != bucket[:-1]]
    new = np.where(stay >= 0, stay != previous_stay, (previous_stay >= 0) | new_bucket)  # (R,) a visit starts
    new |= np.r_[True, patient[1:] != patient[:-1]]
    return np.cumsum(new) - 1


def _stays(patient: np.ndarray, time: np.ndarray, code: np.ndarray, names: list[str],
           rule: VisitRule) -> np.ndarray:
    """(R,) the stay of each row (0, 1, ... in row order), -1 outside any."""
    R = len(time)
    is_start, is_end = matching(rule.start, names)[code], matching(rule.end, names)[code]
    rows = np.flatnonzero(is_start | is_end)  # (M,) boundary rows
    rows = rows[np.lexsort((~is_start[rows], time[rows], patient[rows]))]  # at one moment admissions first
    p = patient[rows]
    first = np.r_[True, p[1:] != p[:-1]] if len(rows) else np.zeros(0, bool)  # (M,) a patient's first boundary
    step = np.where(is_start[rows], 1, -1)
    total = np.cumsum(step)
    group = np.cumsum(first) - 1
    running = total - (total - step)[first][group]  # (M,) admissions minus discharges so far, per patient
    # depth, a discharge with no open stay ignored: running - min(0, its minimum so far); the offset puts each
    # patient's values below every earlier patient's, so one running minimum restarts at each patient
    offset = group * (2 * len(rows) + 1)
    depth = running - np.minimum(np.minimum.accumulate(running - offset) + offset, 0)
    before = np.where(first, 0, np.r_[0, depth[:-1]])
    is_open, is_close = (before == 0) & (depth > 0), (before > 0) & (depth == 0)  # (M,) a stay opens / closes
    marks = np.flatnonzero(is_open | is_close)  # within a patient: open, close, open, close, ..., maybe open
    at = np.flatnonzero(is_open[marks])  # (K,) each stay's open among the marks
    opens, after = marks[at], marks[np.minimum(at + 1, len(marks) - 1)]  # the next mark: its close if the patient's
    closed = (at + 1 < len(marks)) & (p[after] == p[opens])
    new_patient = np.r_[True, patient[1:] != patient[:-1]]
    first_at, last_at = _runs(new_patient | np.r_[True, time[1:] != time[:-1]])  # (R,) rows at the same moment
    _, last_row = _runs(new_patient)  # (R,) the patient's last row
    a = first_at[rows[opens]]  # (K,) each stay's first and last row
    b = np.where(closed, last_at[rows[after]], last_row[rows[opens]])
    opened = np.bincount(a, minlength=R)  # (R,) 1 where a stay starts
    inside = np.cumsum(opened - np.bincount(b + 1, minlength=R + 1)[:R]) > 0
    return np.where(inside, np.cumsum(opened) - 1, -1)  # the latest stay opened, where one is open


def _runs(new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R,) the first and the last row of each row's run, a run starting wherever `new` (R,) is True."""
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    return starts[run], np.r_[starts[1:] - 1, len(new) - 1][run]
