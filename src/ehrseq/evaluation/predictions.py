"""Held-out predictions of a supervised task, in the MEDS prediction layout, and the metrics they give.

The parquet file is the source of truth: `summary.json`'s figures are `from_table(table).metrics()`, so
anyone can recompute them (and their bootstrap intervals, with the run's seed) from the file alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ehrseq.evaluation.binary import binary_metrics
from ehrseq.evaluation.next_visit import NextVisitPredictions
from ehrseq.evaluation.survival import survival_metrics


@dataclass
class BinaryPredictions:
    """Probabilities are kept at float32 precision, the MEDS-DEV PredictionSchema's type, so the file holds exactly
    the values every figure was computed from (and meds-evaluation reads the same numbers)."""

    subject_ids: np.ndarray  # (S,) int64
    prediction_times: np.ndarray  # (S,) datetime64[us]
    labels: np.ndarray  # (S,) bool
    probabilities: np.ndarray  # (S,) float64 holding float32 values

    def __post_init__(self) -> None:
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32).astype(np.float64)

    def metrics(self, rows: np.ndarray | None = None) -> dict[str, float]:
        sel = slice(None) if rows is None else rows
        return binary_metrics(self.labels[sel], self.probabilities[sel])

    def to_table(self) -> pa.Table:
        return pa.table({
            "subject_id": pa.array(self.subject_ids, pa.int64()),
            "prediction_time": pa.array(self.prediction_times.astype("datetime64[us]"), pa.timestamp("us")),
            "boolean_value": pa.array(self.labels, pa.bool_()),
            "predicted_boolean_value": pa.array(self.probabilities >= 0.5, pa.bool_()),
            "predicted_boolean_probability": pa.array(self.probabilities.astype(np.float32), pa.float32()),
        })

    @classmethod
    def from_table(cls, table: pa.Table) -> BinaryPredictions:
        return cls(table["subject_id"].to_numpy(), table["prediction_time"].to_numpy(),
                   table["boolean_value"].to_numpy(zero_copy_only=False).astype(bool),
                   table["predicted_boolean_probability"].to_numpy())


@dataclass
class SurvivalPredictions:
    subject_ids: np.ndarray
    prediction_times: np.ndarray
    times: np.ndarray  # (S,) days from prediction time to event or censoring
    events: np.ndarray  # (S,) bool
    risks: np.ndarray  # (S,) higher = earlier event
    horizon: float = 365.0

    def metrics(self, rows: np.ndarray | None = None) -> dict[str, float]:
        sel = slice(None) if rows is None else rows
        return survival_metrics(self.times[sel], self.risks[sel], self.events[sel], self.horizon)

    def to_table(self) -> pa.Table:
        """MEDS prediction columns plus `time`, `event`, `predicted_risk`; boolean_value = event by the horizon
        (null when censored before it), predicted_boolean_probability = a monotone map of the risk."""
        known = (self.events & (self.times <= self.horizon)) | (self.times >= self.horizon)
        by_horizon = self.events & (self.times <= self.horizon)
        return pa.table({
            "subject_id": pa.array(self.subject_ids, pa.int64()),
            "prediction_time": pa.array(self.prediction_times.astype("datetime64[us]"), pa.timestamp("us")),
            "boolean_value": pa.array(by_horizon, pa.bool_(), mask=~known),
            "predicted_boolean_value": pa.array(self.risks > np.median(self.risks), pa.bool_()),
            "predicted_boolean_probability": pa.array(1.0 / (1.0 + np.exp(-self.risks)), pa.float32()),
            "time": pa.array(self.times, pa.float64()),
            "event": pa.array(self.events, pa.bool_()),
            "predicted_risk": pa.array(self.risks, pa.float64()),
        }, metadata={"horizon_days": str(self.horizon)})

    @classmethod
    def from_table(cls, table: pa.Table) -> SurvivalPredictions:
        horizon = float((table.schema.metadata or {}).get(b"horizon_days", b"365"))
        return cls(table["subject_id"].to_numpy(), table["prediction_time"].to_numpy(), table["time"].to_numpy(),
                   table["event"].to_numpy(zero_copy_only=False).astype(bool), table["predicted_risk"].to_numpy(),
                   horizon)


def predictions_from_table(table: pa.Table) -> BinaryPredictions | SurvivalPredictions | NextVisitPredictions:
    """Whichever kind the file holds (survival files carry `predicted_risk`, next-visit files
    `predicted_probabilities`)."""
    if "predicted_probabilities" in table.column_names:
        return NextVisitPredictions.from_table(table)
    return SurvivalPredictions.from_table(table) if "predicted_risk" in table.column_names \
        else BinaryPredictions.from_table(table)
