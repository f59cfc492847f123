"""Classic baselines on the same patients and splits as BEHRT: a bag of codes, and a Cox model.

Features (the same for both): for each code, the sum over the visits that hold it of exp(-days before the
prediction time / RECENCY_DAYS), so a recent diagnosis weighs more than an old one, plus age at the prediction
time in decades. Order within the history is lost on purpose: that is what the baselines cannot see.

- `bag_of_codes`: L2-regularised logistic regression (scikit-learn); C chosen on the tuning split. For a
  survival task it is fitted on "event by the horizon" among subjects whose status there is known, and its
  logit is the risk score.
- `cox`: penalised Cox proportional hazards (lifelines) on the MAX_COX_CODES most frequent codes; the
  penalizer is chosen on the tuning split by Harrell's C. It needs event times, so it supports survival tasks
  only (a binary label has no time to fit).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrseq.data.patients import Patient
from ehrseq.data.supervised import LabelledSplit
from ehrseq.evaluation.binary import auroc
from ehrseq.evaluation.survival import harrell_c, horizon_status

RECENCY_DAYS = 365.0
MAX_COX_CODES = 100
C_GRID = (0.01, 0.1, 1.0, 10.0)
PENALIZER_GRID = (0.01, 0.1, 1.0)


def code_index(patients: Sequence[Patient], min_count: int = 1, max_codes: int | None = None) -> dict[str, int]:
    """Codes of the training histories (one count per patient), most frequent first, as feature columns."""
    counts = Counter(code for p in patients for code in {c for v in p.visits for c in v.codes})
    kept = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    return {code: i for i, code in enumerate(kept[:max_codes])}


def recency_features(patients: Sequence[Patient], prediction_times: np.ndarray, codes: dict[str, int]) -> np.ndarray:
    """(S, len(codes) + 1): recency-weighted code counts and age in decades at the prediction time."""
    X = np.zeros((len(patients), len(codes) + 1))
    for i, (p, t) in enumerate(zip(patients, prediction_times.astype("datetime64[us]").tolist(), strict=True)):
        for v in p.visits:
            w = math.exp(-(t - v.time).total_seconds() / 86_400 / RECENCY_DAYS)
            for c in v.codes:
                j = codes.get(c)
                if j is not None:
                    X[i, j] += w
        X[i, -1] = (t - p.birth).days / 3652.5 if p.birth else 0.0
    return X


@dataclass
class Baseline:
    """A fitted baseline: `score(split)` is a probability (binary) or a risk (survival, higher = earlier)."""

    kind: str
    task: str
    codes: dict[str, int]
    model: Any = None
    chosen: dict[str, float] = field(default_factory=dict)  # the regularisation picked on tuning
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def features(self, split: LabelledSplit) -> np.ndarray:
        return (recency_features(split.patients, split.prediction_times, self.codes) - self.mean) / self.scale

    def score(self, split: LabelledSplit) -> np.ndarray:
        X = self.features(split)
        if self.kind == "cox":
            return np.asarray(self.model.predict_log_partial_hazard(_frame(X)), dtype=float)
        if self.task == "binary":
            return self.model.predict_proba(X)[:, 1]
        return self.model.decision_function(X)


def fit_baseline(kind: str, task: str, train: LabelledSplit, tuning: LabelledSplit, horizon: float,
                 min_code_count: int = 1) -> Baseline:
    """Fits on `train`, picking the regularisation that does best on `tuning`."""
    if kind == "cox" and task != "survival":
        raise ValueError("the cox baseline needs event times: use it with task.kind survival")
    codes = code_index(train.patients, min_code_count, MAX_COX_CODES if kind == "cox" else None)
    raw = recency_features(train.patients, train.prediction_times, codes)
    mean, scale = raw.mean(0), raw.std(0)
    scale[scale == 0] = 1.0
    base = Baseline(kind, task, codes, mean=mean, scale=scale)
    X = (raw - mean) / scale
    best: tuple[float, Any, dict[str, float]] | None = None
    for value in (PENALIZER_GRID if kind == "cox" else C_GRID):
        base.model = _fit_cox(X, train, value) if kind == "cox" else _fit_logistic(X, train, task, horizon, value)
        scores = base.score(tuning)
        quality = (harrell_c(tuning.times, scores, tuning.labels) if task == "survival"
                   else auroc(tuning.labels, scores))
        quality = -np.inf if np.isnan(quality) else quality
        if best is None or quality > best[0]:
            best = (quality, base.model, {"penalizer" if kind == "cox" else "C": value, "tuning_score": quality})
    base.model, base.chosen = best[1], best[2]
    return base


def _fit_logistic(X: np.ndarray, train: LabelledSplit, task: str, horizon: float, C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    if task == "binary":
        y, rows = train.labels, slice(None)
    else:
        known, y = horizon_status(train.times, train.labels, horizon)
        rows, y = known, y[known]
    return LogisticRegression(C=C, max_iter=2000).fit(X[rows], y)


def _frame(X: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])


def _fit_cox(X: np.ndarray, train: LabelledSplit, penalizer: float) -> Any:
    from lifelines import CoxPHFitter

    df = _frame(X)
    df["duration"], df["event"] = np.maximum(train.times, 1e-3), train.labels.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines warns about low-variance rare codes; the penalizer copes
        return CoxPHFitter(penalizer=penalizer).fit(df, duration_col="duration", event_col="event")
