"""LightGBM on count features: the strong count baseline of EHRSHOT and MEDS-Tab.

Gradient-boosted trees fit a binary target (binary tasks: the label; survival: "event by the horizon" among
subjects whose status there is known, as bag_of_codes does), and the score is the predicted log-odds. For each
setting in GRID, boosting stops once the tuning split's log-loss has not improved for EARLY_STOPPING rounds;
the setting whose early-stopped model scores best on the tuning split (the caller's quality function: AUROC or
Harrell's C) is kept. Seeded, single-configuration threads and `deterministic=True`: the same data gives the
same trees.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

NUM_THREADS = 1  # fixed, for reproducible trees; one thread also never spins against other busy processes
MAX_ROUNDS = 2000
EARLY_STOPPING = 50
GRID = ({"num_leaves": 7, "min_child_samples": 20}, {"num_leaves": 31, "min_child_samples": 50})
BASE = {"objective": "binary", "learning_rate": 0.05, "feature_fraction": 0.5, "bagging_fraction": 0.8,
        "bagging_freq": 1, "lambda_l2": 1.0, "verbosity": -1, "num_threads": NUM_THREADS, "deterministic": True,
        "force_col_wise": True}


def fit_gbm(X: np.ndarray, y: np.ndarray, X_tune: np.ndarray, y_tune: np.ndarray,
            quality: Callable[[Any], float], seed: int, names: list[str]) -> tuple[Any, dict[str, float]]:
    """The best early-stopped booster over GRID and what was chosen (its setting, rounds, tuning score).

    X (S, F) float32 with NaN for missing values; y (S,) bool; X_tune/y_tune the tuning split's rows with a
    known target (for early stopping); `quality(booster)` scores a booster on the whole tuning split.
    """
    import lightgbm as lgb

    names = [re.sub(r'[",:\[\]{}]', "_", name) for name in names]  # LightGBM refuses JSON characters there
    train = lgb.Dataset(X, y.astype(float), feature_name=names, free_raw_data=False)
    tune = lgb.Dataset(X_tune, y_tune.astype(float), reference=train)
    best: tuple[float, Any, dict[str, float]] | None = None
    for setting in GRID:
        params = {**BASE, **setting, "seed": seed}
        booster = lgb.train(params, train, num_boost_round=MAX_ROUNDS, valid_sets=[tune],
                            callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)])
        score = quality(booster)
        score = -np.inf if np.isnan(score) else score
        if best is None or score > best[0]:
            best = (score, booster, {**setting, "rounds": booster.best_iteration, "tuning_score": score})
    return best[1], best[2]


def gbm_log_odds(booster: Any, X: np.ndarray) -> np.ndarray:
    """(S,) predicted log-odds, from the early-stopped number of rounds."""
    return np.asarray(booster.predict(X, raw_score=True, num_iteration=booster.best_iteration), dtype=float)


def gbm_size(booster: Any) -> int:
    """Nodes (splits and leaves) over all trees: the closest thing a GBM has to a parameter count."""
    trees = booster.dump_model(num_iteration=booster.best_iteration)["tree_info"]
    return sum(2 * t["num_leaves"] - 1 for t in trees)
