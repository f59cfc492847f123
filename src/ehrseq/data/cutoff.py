"""Model inputs end strictly before the prediction time: nothing recorded at or after it may leak in.

Cut the MEDS rows (`events_before`) before grouping them into visits: that is exact to the microsecond,
including events later on the prediction day. `cut_patient` cuts an already built Patient; it keeps only
visits whose last event is before the prediction time, so a visit spanning it is dropped whole (which of
its codes came first is no longer known at that level).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from ehrseq.data.meds_io import sort_events
from ehrseq.data.patients import Patient


def events_before(data: pa.Table, prediction_times: pa.Table) -> pa.Table:
    """Each subject's rows strictly before its prediction time, plus its static (null-time) rows.

    `prediction_times` has `subject_id` and `prediction_time` (a MEDS label table will do), one row per
    subject; subjects without one are dropped.
    """
    cut = prediction_times.select(["subject_id", "prediction_time"])
    if len(pc.unique(cut.column("subject_id"))) != cut.num_rows:
        raise ValueError("events_before: one prediction time per subject (cut each prediction time separately)")
    cut = cut.rename_columns(["subject_id", "_cut"]).cast(
        pa.schema([("subject_id", data.schema.field("subject_id").type), ("_cut", data.schema.field("time").type)]))
    joined = data.join(cut, keys="subject_id", join_type="inner")
    keep = pc.or_kleene(pc.is_null(joined.column("time")), pc.less(joined.column("time"), joined.column("_cut")))
    return sort_events(joined.filter(keep).drop_columns(["_cut"]))


def cut_patient(patient: Patient, prediction_time: datetime) -> Patient:
    """The patient with only the visits that ended strictly before `prediction_time`."""
    kept = tuple(v for v in patient.visits if (v.end or v.time) < prediction_time)
    return replace(patient, visits=kept)
