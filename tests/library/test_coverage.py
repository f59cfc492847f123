"""Coverage: how much of each example's history before its prediction time the max_seq_len window keeps."""

import json

import numpy as np
import pytest
from rich.console import Console

from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.stream import coverage, histories, iter_shards, read_splits
from ehrseq.data.token_cache import build_token_cache
from ehrseq.reports.summary import coverage_warning
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec


def test_coverage_counts_the_days_and_events_the_window_keeps(tmp_path):
    """Per patient, kept and total days and (day, code) events, checked against the histories by hand: a window
    large enough keeps everything, a small one keeps the most recent whole visits."""
    dataset = synthetic_dataset(80, 2, tmp_path)
    splits = read_splits(dataset)
    h = histories(next(iter_shards(dataset)), splits)
    from ehrseq.data.stream import encode
    from ehrseq.data.vocab import Vocabulary

    vocab = Vocabulary({n: 1 for n in h.names})
    visits = np.bincount(h.visit_patient, minlength=len(h.subjects))
    events = np.bincount(h.visit_patient, weights=np.diff(h.visit_start), minlength=len(h.subjects))
    wide = encode(h, vocab, 4096).kept
    np.testing.assert_array_equal(wide, np.stack([visits, visits, events, events], 1))
    narrow = encode(h, vocab, 24)
    for p in range(len(h.subjects)):
        kept_visits, total, kept_events, _ = narrow.kept[p]
        assert kept_visits <= total and kept_events <= events[p] and kept_visits >= 1
        sizes = np.diff(h.visit_start)[h.visit_patient == p]
        if kept_visits and kept_events == sizes[-kept_visits:].sum():  # whole visits: the most recent ones
            assert narrow.lengths[p] >= kept_events + kept_visits + 1
    cov = coverage(narrow.kept)
    assert cov["patients"] == len(h.subjects) and 0 < cov["days"]["p10"] <= cov["days"]["median"] < 1


def test_runs_report_coverage_and_warn_when_the_window_keeps_under_half(tmp_path, capsys):
    manifest = build_token_cache(synthetic_dataset(200, 3, tmp_path / "d"), tmp_path / "cache", max_len=16)
    assert set(manifest["coverage"]) == {"train", "tuning", "held_out"}
    spec = JobSpec.model_validate({
        "name": "short", "data": {"num_patients": 300, "max_seq_len": 16,
                                       "synthetic": {"preset": "transition"}}, "task": {"kind": "binary"},
        "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "device": "cpu", "log_every": 2, "min_steps": 0},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})
    assert run_job(spec, Console(quiet=False, force_terminal=False, width=200)) == 0
    summary = json.loads((tmp_path / "runs" / "short" / "summary.json").read_text())
    held_out = summary["data"]["coverage"]["held_out"]
    assert held_out["days"]["median"] < 0.5 and held_out["patients"] == summary["data"]["examples"]["held_out"]
    assert summary["data"]["subjects"]["held_out"] == summary["data"]["examples"]["held_out"]  # one row each here
    text = (tmp_path / "runs" / "short" / "SUMMARY.md").read_text()
    assert "Coverage" in text and "**Warning: the model reads" in text and "Examples (patients)" in text
    assert "the model reads" in capsys.readouterr().out
    assert coverage_warning({"held_out": {"days": {"median": 0.9, "p10": 0.5}}}) is None


@pytest.mark.parametrize("median, warns", [(0.49, True), (0.5, False)])
def test_the_warning_threshold_is_half_the_days(median, warns):
    assert (coverage_warning({"held_out": {"days": {"median": median, "p10": 0.1}}}) is not None) == warns
