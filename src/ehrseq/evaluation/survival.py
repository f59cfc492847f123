"""Time-to-event metrics. Risk scores follow one convention everywhere: higher risk = earlier event.

Harrell's C comes from lifelines, whose `concordance_index` expects scores that grow with survival time,
hence the minus sign. Tied risks count 1/2, and a pair is comparable only when the earlier time is an event.
The AUROC at a horizon uses the subjects whose status at the horizon is known: an event by the horizon
(positive) or followed past it (negative); those censored earlier are left out.
"""

from __future__ import annotations

import numpy as np

from ehrseq.evaluation.binary import auroc


def harrell_c(times: np.ndarray, risks: np.ndarray, events: np.ndarray) -> float:
    """Share of comparable pairs whose higher-risk subject had the event first (ties in risk = 1/2)."""
    events = np.asarray(events, dtype=bool)
    if not events.any():
        return float("nan")
    from lifelines.utils import concordance_index  # (lifelines takes a second to import: only survival runs need it)

    try:
        return float(concordance_index(np.asarray(times, dtype=float), -np.asarray(risks, dtype=float), events))
    except ZeroDivisionError:  # no comparable pair (e.g. a resample of one subject)
        return float("nan")


def horizon_status(times: np.ndarray, events: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(known, positive) masks: event at or before the horizon, or known event-free at the horizon."""
    times, events = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    positive = events & (times <= horizon)
    return positive | (times >= horizon), positive


def auroc_at(times: np.ndarray, risks: np.ndarray, events: np.ndarray, horizon: float) -> float:
    """AUROC of the risk for 'event by the horizon' among subjects whose status there is known."""
    known, positive = horizon_status(times, events, horizon)
    return auroc(positive[known], np.asarray(risks)[known])


def survival_metrics(times: np.ndarray, risks: np.ndarray, events: np.ndarray, horizon: float) -> dict[str, float]:
    return {"c_index": harrell_c(times, risks, events),
            f"auroc_{horizon:g}d": auroc_at(times, risks, events, horizon)}
