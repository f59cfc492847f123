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
        raise ValueError("events_before: one prediction time per subject (events_before_each takes several)")
    return sort_events(_rows_before(data, cut))


def events_before_each(data: pa.Table, prediction_times: pa.Table) -> pa.Table:
    """`events_before` for any number of prediction times per subject: row i of `prediction_times` gets its own
    copy of its subject's rows strictly before its time (and the static rows), with `subject_id` set to i, the
    example's index (map it back through `prediction_times`); examples whose subject has no rows get none."""
    cut = prediction_times.select(["subject_id", "prediction_time"]).append_column(
        "_example", pa.array(range(prediction_times.num_rows), pa.int64()))
    rows = _rows_before(data, cut)
    example = rows.column("_example").cast(data.schema.field("subject_id").type)
    rows = rows.set_column(rows.schema.get_field_index("subject_id"), "subject_id", example)
    return sort_events(rows.drop_columns(["_example"]))


def _rows_before(data: pa.Table, cut: pa.Table) -> pa.Table:
    """`data` joined to `cut` (`subject_id`, `prediction_time`, any other columns carried along) on subject,
    keeping the rows strictly before their prediction time and the static (null-time) rows."""
    cut = cut.rename_columns(["subject_id", "_cut", *cut.column_names[2:]])
    cut = cut.set_column(0, "subject_id", cut.column("subject_id").cast(data.schema.field("subject_id").type))
    cut = cut.set_column(1, "_cut", cut.column("_cut").cast(data.schema.field("time").type))
    joined = data.join(cut, keys="subject_id", join_type="inner")
    keep = pc.or_kleene(pc.is_null(joined.column("time")), pc.less(joined.column("time"), joined.column("_cut")))
    return joined.filter(keep).drop_columns(["_cut"])


def cut_patient(patient: Patient, prediction_time: datetime) -> Patient:
    """The patient with only the visits that ended strictly before `prediction_time`."""
    kept = tuple(v for v in patient.visits if (v.end or v.time) < prediction_time)
    return replace(patient, visits=kept)
