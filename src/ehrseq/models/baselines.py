"""Count baselines on the same patients and splits as BEHRT: a bag of codes, a Cox model and a GBM.

Features (ehrseq.models.count_features): per code, recency-weighted counts (each visit holding it weighs
exp(-days before the prediction time / 365), so a recent diagnosis weighs more than an old one); the GBM, the
strong baseline, gets every per-code aggregate (counts, recency, days since the first and last occurrence, counts
within 30 and 365 days). Then the static codes (sex, ...) and, unless `age=False`, the age at the prediction
time in decades. The order of events within the history is lost except where these aggregates carry it (one
code's first occurrence before another's, a code within a window): what a sequence model must add is the rest.

- `bag_of_codes`: L2-regularised logistic regression (scikit-learn) on standardised features; C chosen on the
  tuning split. For a survival task it is fitted on "event by the horizon" among subjects whose status there
  is known, and its logit is the risk score.
- `cox`: penalised Cox proportional hazards (lifelines) on the MAX_COX_CODES most frequent codes; the
  penalizer is chosen on the tuning split by Harrell's C. It needs event times, so it supports survival tasks
  only (a binary label has no time to fit).
- `gbm`: LightGBM (ehrseq.models.gbm), early-stopped and its setting chosen on the tuning split; binary and
  survival targets as bag_of_codes, its log-odds the score (a probability for binary tasks).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.supervised import LabelledSplit
from ehrseq.evaluation.binary import auroc
from ehrseq.evaluation.survival import harrell_c, horizon_status
from ehrseq.models.count_features import FULL_STRENGTH, CountFeatures
from ehrseq.models.gbm import fit_gbm, gbm_log_odds, gbm_size

MAX_COX_CODES = 100
C_GRID = (0.01, 0.1, 1.0, 10.0)
PENALIZER_GRID = (0.01, 0.1, 1.0)
FEATURE_KINDS = {"bag_of_codes": ("recency",), "cox": ("recency",), "gbm": FULL_STRENGTH}


@dataclass
class Baseline:
    """A fitted baseline: `score(split)` is a probability (binary) or a risk (survival, higher = earlier)."""

    kind: str
    task: str
    features: CountFeatures
    model: Any = None
    chosen: dict[str, float] = field(default_factory=dict)  # the regularisation picked on tuning
    mean: np.ndarray | None = None  # standardisation (linear models); None for trees
    scale: np.ndarray | None = None

    def matrix(self, split: LabelledSplit) -> np.ndarray:
        """(S, F) the split's features, standardised for the linear models."""
        X = self.features.matrix(split.histories, split.prediction_times)
        return X if self.mean is None else (X - self.mean) / self.scale

    def score(self, split: LabelledSplit) -> np.ndarray:
        X = self.matrix(split)
        if self.kind == "cox":
            return np.asarray(self.model.predict_log_partial_hazard(_frame(X)), dtype=float)
        logits = gbm_log_odds(self.model, X) if self.kind == "gbm" else self.model.decision_function(X)
        return 1.0 / (1.0 + np.exp(-logits)) if self.task == "binary" else logits

    @property
    def num_params(self) -> int:
        """Fitted numbers: a coefficient per feature and an intercept (cox: baseline hazard); GBM: tree nodes."""
        return gbm_size(self.model) if self.kind == "gbm" else self.features.width + 1


def fit_baseline(kind: str, task: str, train: LabelledSplit, tuning: LabelledSplit, horizon: float,
                 min_code_count: int = 1, age: bool = True, seed: int = 0,
                 code_histories: HistoryArrays | None = None) -> Baseline:
    """Fits on `train`, picking the regularisation (GBM: setting and rounds) that does best on `tuning`.

    The feature columns are the codes of `code_histories` (default: train's); at a label budget pass the whole
    training split's histories, whose codes are no labels, as BEHRT's vocabulary is built from them too."""
    if kind == "cox" and task != "survival":
        raise ValueError("the cox baseline needs event times: use it with task.kind survival")
    features = CountFeatures.fit(train.histories if code_histories is None else code_histories, FEATURE_KINDS[kind],
                                 age, min_code_count, MAX_COX_CODES if kind == "cox" else None)
    raw = features.matrix(train.histories, train.prediction_times)
    base = Baseline(kind, task, features)

    def quality(model: Any) -> float:
        base.model = model
        scores = base.score(tuning)
        return harrell_c(tuning.times, scores, tuning.labels) if task == "survival" else auroc(tuning.labels, scores)

    if kind == "gbm":
        rows, y = _target(train, task, horizon)
        tune_rows, y_tune = _target(tuning, task, horizon)
        X_tune = features.matrix(tuning.histories, tuning.prediction_times)[tune_rows]
        base.model, base.chosen = fit_gbm(raw[rows], y, X_tune, y_tune, quality, seed, features.names())
        return base
    base.mean, base.scale = raw.mean(0), raw.std(0)
    base.scale[base.scale == 0] = 1.0
    X = (raw - base.mean) / base.scale
    best: tuple[float, Any, dict[str, float]] | None = None
    for value in (PENALIZER_GRID if kind == "cox" else C_GRID):
        model = _fit_cox(X, train, value) if kind == "cox" else _fit_logistic(X, train, task, horizon, value)
        score = quality(model)
        score = -np.inf if np.isnan(score) else score
        if best is None or score > best[0]:
            best = (score, model, {"penalizer" if kind == "cox" else "C": value, "tuning_score": score})
    base.model, base.chosen = best[1], best[2]
    return base


def _target(split: LabelledSplit, task: str, horizon: float) -> tuple[np.ndarray | slice, np.ndarray]:
    """(rows, y): the binary label, or for survival "event by the horizon" among subjects whose status is known."""
    if task == "binary":
        return slice(None), split.labels
    known, y = horizon_status(split.times, split.labels, horizon)
    return known, y[known]


def _fit_logistic(X: np.ndarray, train: LabelledSplit, task: str, horizon: float, C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    rows, y = _target(train, task, horizon)
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
