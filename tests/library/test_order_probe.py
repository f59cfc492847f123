"""The order probe: counterfactual A-then-B / B-then-A histories, scored by any model, against a known answer."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.supervised import LabelledSplit
from ehrseq.data.synthetic import PRESETS, PROGRESSION_A, PROGRESSION_B
from ehrseq.evaluation.order_probe import logit, order_probe, swapped_histories
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec

from support.reference_histories import Patient, Visit, history_arrays, visit_codes

A, B = PROGRESSION_A, PROGRESSION_B
T0 = datetime(2020, 1, 1)


def _patient(sid: int, *visits: tuple[str, ...]) -> Patient:
    return Patient(sid, T0 - timedelta(days=365 * 60),
                   tuple(Visit(T0 + timedelta(days=30 * i), codes) for i, codes in enumerate(visits)))


def _split(*patients: Patient) -> LabelledSplit:
    n = len(patients)
    return LabelledSplit(np.full(n, np.datetime64("2021-01-01", "us")), np.zeros(n, bool), np.full(n, np.nan),
                         np.arange(n), np.array([p.subject_id for p in patients]), history_arrays(patients))


def _a_before_b(h: HistoryArrays, row: int) -> bool:
    visits = visit_codes(h, row)
    first = {code: next(i for i, v in enumerate(visits) if code in v) for code in (A, B)}
    return first[A] < first[B]


def _swapped(p: Patient) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]] | None:
    rows, ab, ba = swapped_histories(history_arrays([p]))
    return (visit_codes(ab, 0), visit_codes(ba, 0)) if len(rows) else None


def test_swapped_histories_swap_the_onsets_and_keep_everything_else():
    p = _patient(1, ("X", B), ("Y",), (A, "Z"), (A, B), ("W",))
    h = history_arrays([p])
    _, ab, ba = swapped_histories(h)
    # the first B (visit 0) and the first A (visit 2) trade places; the later records and other codes stay
    assert visit_codes(ab, 0) == [("X", A), ("Y",), ("Z", B), (A, B), ("W",)]
    assert visit_codes(ba, 0) == [("X", B), ("Y",), ("Z", A), (A, B), ("W",)]
    assert np.array_equal(ab.visit_times, h.visit_times)
    assert (ab.births.tolist(), ab.static_codes.tolist()) == (h.births.tolist(), h.static_codes.tolist())
    assert _swapped(_patient(2, ("X",), (A,))) is None  # no B: no order to swap
    assert _swapped(_patient(3, (A, B), ("X",))) is None  # both onsets in one visit


def test_probe_recovers_a_known_order_effect():
    split = _split(_patient(1, ("X",), ("Y",)), _patient(2, (B,), ("X", A), ("Y",), ("Z",)),
                   _patient(3, (A,), ("X",)), _patient(4, (A, "Y"), ("Z",), ("W",), ("V",), (B, "W")))
    seen: list[int] = []

    def order_aware(s: LabelledSplit) -> np.ndarray:  # +1 log-odds when A's onset precedes B's, on any history
        seen.append(len(s))
        return np.array([0.2 + float(_a_before_b(s.histories, i)) for i in range(len(s))])

    probe = order_probe(split, order_aware, order_effect=1.0, order_window=26)
    assert (probe.mean_shift, probe.share_positive, probe.true_log_hr, probe.n) == (1.0, 1.0, 1.0, 2)
    assert seen == [2, 2]  # patients 1 and 3 (not holding both) are left out of both copies
    # a window of 3 visits: patient 4's onsets are 4 visits apart, so its true shift is 0
    assert order_probe(split, order_aware, order_effect=1.0, order_window=3).true_log_hr == 0.5

    def counts(s: LabelledSplit) -> np.ndarray:  # a bag of codes without recency: blind to order
        return np.array([sum(c in (A, B) for v in visit_codes(s.histories, i) for c in v)
                         for i in range(len(s))], float)

    blind = order_probe(split, counts, order_effect=0.0, order_window=26)
    assert (blind.mean_shift, blind.share_positive) == (0.0, 0.0)
    assert "+1.000 (true log-HR +1.000), positive for 100%" in probe.sentence()


def test_logit_inverts_the_sigmoid_and_stays_finite():
    x = np.array([-3.0, 0.0, 2.5])
    assert np.allclose(logit(1 / (1 + np.exp(-x))), x)
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()


@pytest.mark.slow
@pytest.mark.parametrize("model,task,preset", [("bag_of_codes", "binary", "order"), ("cox", "survival", "order"),
                                               ("behrt", "binary", "presence"), ("gbm", "binary", "transition")])
def test_synthetic_runs_report_the_probe_and_the_ceilings(tmp_path, model, task, preset):
    spec = JobSpec.model_validate({
        "name": f"{model}-{preset}", "data": {"num_patients": 300, "max_seq_len": 32, "synthetic": {"preset": preset}},
        "model": {"kind": model}, "task": {"kind": task},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 2, "device": "cpu", "log_every": 2},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})
    assert run_job(spec, Console(quiet=True)) == 0
    folder = Path(tmp_path) / "runs" / spec.name
    summary = json.loads((folder / "summary.json").read_text())
    probe = summary["order_probe"]
    assert probe["true_log_hr"] == PRESETS[preset].order_effect
    held_out = summary["data"]["examples"]["held_out"]  # those holding both A and B are probed (~64%)
    assert 0 < probe["n"] <= held_out and 0.0 <= probe["share_positive"] <= 1.0
    assert np.isfinite(probe["mean_shift"])
    assert set(summary["oracle_order_blind"]) == set(summary["oracle"])
    if preset == "presence":  # no order term: the three ceilings are the same numbers
        assert summary["oracle_order_blind"] == summary["oracle"] == summary["oracle_order_marginal"]
    else:
        headline = "auroc" if task == "binary" else "c_index"
        assert summary["oracle_order_blind"][headline] < summary["oracle"][headline]
        assert summary["oracle_order_marginal"][headline] < summary["oracle"][headline]
    assert f"synthetic-v3-{preset}-" in summary["data"]["dataset"]
    text = (folder / "SUMMARY.md").read_text()
    assert "Order probe (the onsets of A and B swapped" in text and "| best order-blind |" in text
