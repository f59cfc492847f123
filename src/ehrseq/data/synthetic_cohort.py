"""What a synthetic generator returns: the events, the labels and the true risks behind them."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass
class SyntheticCohort:
    """MEDS events (including those after each prediction time), labels by task, and the oracle risks.

    `oracle[task]` is row-aligned with `labels[task]`: `subject_id`, `prediction_time`, `true_risk` and
    `true_risk_order_blind` (the same hazard without the order term) and `true_risk_order_marginal` (the Bayes
    risk of a model that sees everything but the order: the risk averaged over the order term).
    """

    data: pa.Table
    labels: dict[str, pa.Table]
    oracle: dict[str, pa.Table]
