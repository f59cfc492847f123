"""Supervised metrics on hand-computed cases (ties, censoring) and against brute-force pair counts."""

import itertools

import numpy as np
import pytest

from ehrseq.evaluation.binary import auprc, auroc, brier, calibration_curve
from ehrseq.evaluation.bootstrap import bootstrap_ci
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions, predictions_from_table
from ehrseq.evaluation.survival import auroc_at, harrell_c


def brute_auroc(labels, scores):
    pos, neg = scores[labels], scores[~labels]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def brute_c(times, risks, events):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(times)), 2):
        if events[i] and times[i] < times[j]:  # comparable: the earlier time is an event
            den += 1
            num += 1.0 if risks[i] > risks[j] else 0.5 if risks[i] == risks[j] else 0.0
    return num / den


def test_auroc_hand_computed_with_a_tie():
    # pairs (pos, neg): 0.9>0.5, 0.9>0.1, 0.5=0.5 (1/2), 0.5>0.1 -> 3.5 / 4
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(0.875)


def test_auroc_matches_brute_force_on_random_tied_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.random(60) < 0.3
        scores = np.round(rng.random(60) + labels * 0.3, 1)  # coarse: many ties
        assert auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores))


def test_auroc_undefined_with_one_class():
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auroc_and_auprc_equal_scikit_learns():
    """They replace scikit-learn's calls for speed (the bootstrap's thousands of them): the same figures on
    untied, coarse (many ties), constant and float32 scores of any size."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 400))
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        labels[0], labels[-1] = True, False
        scores = [rng.random(n) + labels * rng.random(), np.round(rng.random(n) + labels * 0.3, 1),
                  np.full(n, 0.5), (rng.random(n) + labels * 0.2).astype(np.float32)][trial % 4]
        assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):  # a diverged model's scores: refused, as scikit-learn does
        auroc(np.array([1, 0]), np.array([np.nan, 0.1]))


def test_auprc_and_brier_hand_computed():
    # ranked: P (precision 1, recall 1/2), N, P (precision 2/3, recall 1): AP = 1/2 * 1 + 1/2 * 2/3
    assert auprc(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.3])) == pytest.approx(5 / 6)
    assert brier(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx((0.04 + 0.16) / 2)


def test_calibration_curve_bins():
    curve = calibration_curve(np.array([0, 1, 1, 1]), np.array([0.05, 0.05, 0.95, 0.91]), num_bins=10)
    assert curve["predicted"] == pytest.approx([0.05, 0.93])
    assert curve["observed"] == pytest.approx([0.5, 1.0])
    assert curve["count"] == [2, 2]


def test_harrell_c_ties_censoring_and_sign():
    times, events = np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, False, True, True])
    # subject 0 (event at 1) vs 1, 2, 3: risk 4 < 10 discordant, 4 > 1 twice; subject 2 vs 3: tied risk = 1/2.
    # subject 1 is censored at 2, so (1, 2) and (1, 3) are not comparable. C = 2.5 / 4.
    risks = np.array([4.0, 10.0, 1.0, 1.0])
    assert harrell_c(times, risks, events) == pytest.approx(0.625)
    assert harrell_c(times, risks, events) == pytest.approx(brute_c(times, risks, events))
    # higher risk = earlier event: the perfectly ordered risk scores 1, its reverse 0
    assert harrell_c(times, -times, np.ones(4, bool)) == pytest.approx(1.0)
    assert harrell_c(times, times, np.ones(4, bool)) == pytest.approx(0.0)


def test_harrell_c_matches_brute_force_random():
    rng = np.random.default_rng(1)
    for _ in range(10):
        times = rng.integers(1, 1000, 40).astype(float)  # distinct enough; lifelines and brute force agree
        times += rng.random(40) * 1e-3
        events = rng.random(40) < 0.6
        risks = np.round(rng.normal(size=40), 1)
        assert harrell_c(times, risks, events) == pytest.approx(brute_c(times, risks, events))


def test_auroc_at_horizon_leaves_out_the_unknown():
    times = np.array([100.0, 200.0, 400.0, 50.0])
    events = np.array([True, True, False, False])  # subject 3: censored at 50, status at 365 unknown
    risks = np.array([0.5, 0.2, 0.3, 9.0])
    assert auroc_at(times, risks, events, 365) == pytest.approx(0.5)  # 0.5 > 0.3, 0.2 < 0.3


def test_bootstrap_skips_undefined_resamples():
    labels, scores = np.array([True, False, False, False]), np.array([0.9, 0.1, 0.2, 0.3])
    ci = bootstrap_ci(lambda rows: {"auroc": auroc(labels[rows], scores[rows])}, 4, num_resamples=200)
    assert ci["auroc"] == [1.0, 1.0]


def test_prediction_tables_round_trip():
    ids, t = np.arange(4), np.array(["2020-01-01"] * 4, dtype="datetime64[us]")
    b = BinaryPredictions(ids, t, np.array([1, 0, 1, 0], bool), np.array([0.9, 0.2, 0.4, 0.6]))
    again = predictions_from_table(b.to_table())
    assert isinstance(again, BinaryPredictions) and again.metrics() == b.metrics()
    s = SurvivalPredictions(ids, t, np.array([10.0, 400, 30, 20]), np.array([1, 0, 1, 0], bool),
                            np.array([2.0, -1, 1, 0]), horizon=365)
    table = s.to_table()
    assert table["boolean_value"].to_pylist() == [True, False, True, None]
    again = predictions_from_table(table)
    assert isinstance(again, SurvivalPredictions) and again.metrics() == s.metrics()


def test_bootstrap_resamples_whole_subjects_when_they_have_several_rows():
    from ehrseq.evaluation.bootstrap import bootstrap_draws

    groups = np.repeat(np.arange(50), 4)  # 50 subjects x 4 rows; a subject's rows always come together
    seen = bootstrap_draws(lambda rows: {"rows": len(rows), "whole": float(
        np.all(np.bincount(groups[rows], minlength=50) % 4 == 0))}, len(groups), num_resamples=20, groups=groups)
    assert (seen["rows"] == 200).all() and (seen["whole"] == 1.0).all()
    # identical scores within a subject: by-subject draws give a wider interval than row draws (about 2x for 4)
    y = np.repeat(np.random.default_rng(1).normal(size=50), 4)
    spread = {g is None: np.std(bootstrap_draws(lambda rows: {"mean": y[rows].mean()}, len(y), num_resamples=400,
                                                groups=g)["mean"]) for g in (None, groups)}
    assert spread[False] > 1.6 * spread[True]
    # one row per subject: the same draws as plain row resampling
    ids = np.arange(30) + 100
    a = bootstrap_draws(lambda rows: {"s": rows.sum()}, 30, num_resamples=5, seed=3)["s"]
    b = bootstrap_draws(lambda rows: {"s": rows.sum()}, 30, num_resamples=5, seed=3, groups=ids)["s"]
    assert (a == b).all()
