"""Result bundles and `ehrseq compare`: every promised file, readable plots, provenance, fingerprints, the paired
bootstrap against known answers, and refusal of runs on different data."""

import csv
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from rich.console import Console

from ehrseq.errors import InputError
from ehrseq.evaluation.next_visit import NextVisitPredictions
from ehrseq.evaluation.paired import join_predictions, paired_bootstrap
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions
from ehrseq.reports.compare import compare_runs
from ehrseq.reports.provenance import compute_facts, data_fingerprint, git_commit
from ehrseq_runner.commands.compare import compare, load_run
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec

REPO = Path(__file__).resolve().parents[2]
COMMON = ["spec.yaml", "status.json", "metrics.jsonl", "summary.json", "SUMMARY.md", "vocab.json",
          "model.safetensors", "plots/loss.png", "plots/lr_throughput.png", "plots/tuning_metrics.png"]
EXPECTED = {
    "mlm": COMMON,
    "binary": [*COMMON, "predictions/held_out.parquet", "plots/roc_pr.png", "plots/calibration.png"],
    "survival": [*COMMON, "predictions/held_out.parquet", "plots/km_risk_groups.png"],
}


def tiny(root, name, model, task, num_patients=300):
    return JobSpec.model_validate({
        "name": name, "data": {"num_patients": num_patients, "max_seq_len": 32},
        "model": {"kind": model}, "task": {"kind": task},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 2, "device": "cpu", "log_every": 1},
        "storage": {"uri": f"file://{root}/runs"}, "runtime": {"work_dir": str(root / "work")}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny finished runs sharing one 300-patient cohort, plus a binary baseline on a 250-patient cohort."""
    root = tmp_path_factory.mktemp("reports")
    specs = {"mlm": ("behrt", "mlm", 300), "behrt-binary": ("behrt", "binary", 300),
             "boc-binary": ("bag_of_codes", "binary", 300), "behrt-survival": ("behrt", "survival", 300),
             "boc-binary-250": ("bag_of_codes", "binary", 250)}
    for name, (model, task, n) in specs.items():
        assert run_job(tiny(root, name, model, task, n), Console(quiet=True)) == 0
    return root


def uri(root, name):
    return f"file://{root}/runs/{name}"


def assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200, path
    assert image[..., :3].std() > 0.01, f"{path} is blank"


@pytest.mark.parametrize("name,task", [("mlm", "mlm"), ("behrt-binary", "binary"), ("behrt-survival", "survival")])
def test_bundle_has_every_file_the_docs_list_and_plots_are_readable(runs, name, task):
    folder = runs / "runs" / name
    stored = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(EXPECTED[task]) <= stored, set(EXPECTED[task]) - stored
    assert any(s.startswith("checkpoints/") and s.endswith("/manifest.json") for s in stored)
    bundle_table = (REPO / "docs" / "runs.md").read_text().split("## What a run leaves behind")[1].split("\n## ")[0]
    for item in EXPECTED[task]:
        listed = f"`{item}`" in bundle_table or f"`{item.rsplit('/', 1)[-1]}`" in bundle_table
        assert listed, f"docs/runs.md's bundle table does not list {item}"
    plots = sorted(s for s in stored if s.startswith("plots/"))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["plots"] == [p for p in EXPECTED[task] if p.startswith("plots/")]
    markdown = (folder / "SUMMARY.md").read_text()
    for plot in plots:
        assert_png(folder / plot)
        assert f"]({plot})" in markdown, plot
    assert "## Model card" in markdown and summary["data_fingerprint"] in markdown


def test_summary_records_time_cost_versions_and_fingerprints(runs):
    s = json.loads((runs / "runs" / "behrt-binary" / "summary.json").read_text())
    for key in ("metrics", "metrics_ci", "params_total", "params_trainable", "spec_fingerprint"):
        assert key in s, key
    assert s["device"] == "cpu" and s["gpus"] == 0 and s["gpu_hours"] == 0.0
    assert s["hardware"]["cpu"]["threads"] == torch.get_num_threads() and "gpu" not in s["hardware"]  # where it ran
    assert 0 < s["wall_time_s"] < 600 and s["cost"] is None and s["price_per_hour"] is None
    assert s["versions"]["torch"] == torch.__version__ and "cuda" in s["versions"]
    assert s["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", s["git_commit"])
    same_cohort = json.loads((runs / "runs" / "boc-binary" / "summary.json").read_text())
    other_cohort = json.loads((runs / "runs" / "boc-binary-250" / "summary.json").read_text())
    survival = json.loads((runs / "runs" / "behrt-survival" / "summary.json").read_text())
    assert s["data_fingerprint"] == same_cohort["data_fingerprint"]
    assert s["data_fingerprint"] != other_cohort["data_fingerprint"]
    assert s["spec_fingerprint"] != same_cohort["spec_fingerprint"]
    # the binary task evaluates a labelled subset of the held-out patients; survival all of them
    assert s["data_fingerprint"] != survival["data_fingerprint"]


def test_compute_facts_and_git_commit(monkeypatch, tmp_path):
    assert compute_facts(7200, "cpu", 1.5) == {"wall_time_s": 7200, "device": "cpu", "gpus": 0, "gpu_hours": 0.0,
                                               "price_per_hour": 1.5, "cost": 3.0}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    gpu = compute_facts(1800, "cuda", None)
    assert gpu["gpu_hours"] == 0.5 and gpu["cost"] is None and gpu["device_name"] == "Test GPU"
    monkeypatch.setenv("EHRSEQ_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"
    monkeypatch.delenv("EHRSEQ_GIT_COMMIT")
    assert git_commit(tmp_path) is None  # not a repository: no commit, no failure
    monkeypatch.setenv("PATH", "")
    assert git_commit() is None  # no git at all


def test_data_fingerprint_changes_with_dataset_splits_and_held_out_subjects():
    splits = {1: "train", 2: "tuning", 3: "held_out", 4: "held_out"}
    base = data_fingerprint("cohort", splits, [3, 4])
    assert data_fingerprint("cohort", dict(reversed(splits.items())), [4, 3]) == base  # order does not matter
    assert data_fingerprint("other cohort", splits, [3, 4]) != base
    assert data_fingerprint("cohort", {**splits, 1: "tuning"}, [3, 4]) != base
    assert data_fingerprint("cohort", splits, [3]) != base


def binary(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    ids, times = np.arange(n, dtype=np.int64), np.full(n, np.datetime64("2020-01-01", "us"))
    return labels, lambda p: BinaryPredictions(ids, times, labels, p)


def test_paired_bootstrap_identical_models_differ_by_zero_with_p_one():
    labels, make = binary()
    p = np.random.default_rng(1).random(len(labels))
    result = paired_bootstrap(make(p).metrics, make(p.copy()).metrics, len(p), num_resamples=100)
    for d in result.values():
        assert d.difference == 0 and d.ci == (0.0, 0.0) and d.p_value == 1.0


def test_paired_bootstrap_finds_a_clearly_better_model():
    labels, make = binary()
    rng = np.random.default_rng(2)
    weak, strong = make(rng.random(len(labels))), make(np.clip(labels * 0.6 + rng.random(len(labels)) * 0.5, 0, 1))
    result = paired_bootstrap(weak.metrics, strong.metrics, len(labels), metrics=["auroc", "brier"],
                              num_resamples=200)
    assert set(result) == {"auroc", "brier"}
    auroc = result["auroc"]
    assert auroc.difference > 0.3 and auroc.ci[0] > 0 and auroc.p_value < 0.01
    assert result["brier"].ci[1] < 0  # lower is better: the strong model's Brier is lower
    # the other way round: the same difference with the sign flipped
    back = paired_bootstrap(strong.metrics, weak.metrics, len(labels), metrics=["auroc"], num_resamples=100)
    assert back["auroc"].difference == pytest.approx(-auroc.difference) and back["auroc"].ci[1] < 0


def test_join_pairs_rows_by_subject_and_time_and_refuses_different_patients():
    n, rng = 50, np.random.default_rng(3)
    ids, times = np.arange(n, dtype=np.int64), np.full(n, np.datetime64("2021-06-01", "us"))
    a = SurvivalPredictions(ids, times, rng.random(n) * 500, rng.random(n) < 0.5, rng.random(n))
    order = rng.permutation(n)[: n - 5]  # shuffled, and five subjects missing
    b = SurvivalPredictions(ids[order], times[order], a.times[order], a.events[order], a.risks[order])
    ja, jb = join_predictions(a, b)
    assert len(ja.subject_ids) == n - 5 and np.array_equal(ja.subject_ids, jb.subject_ids)
    result = paired_bootstrap(ja.metrics, jb.metrics, n - 5, num_resamples=100)
    assert result["c_index"].difference == 0 and result["c_index"].p_value == 1.0
    with pytest.raises(InputError, match="events"):
        join_predictions(a, SurvivalPredictions(ids, times, a.times, ~a.events, a.risks))
    with pytest.raises(InputError, match="share no"):
        join_predictions(a, SurvivalPredictions(ids + 1000, times, a.times, a.events, a.risks))


def test_next_visit_predictions_pair_on_the_same_vocabulary_only():
    n, codes, rng = 40, ["A", "B", "C"], np.random.default_rng(4)
    ids, times = np.arange(n, dtype=np.int64), np.full(n, np.datetime64("2022-01-01", "us"))
    targets = rng.random((n, 3)) < 0.4
    a = NextVisitPredictions(ids, times, codes, targets, rng.random((n, 3)))
    order = rng.permutation(n)
    b = NextVisitPredictions(ids[order], times[order], codes, targets[order], a.probabilities[order])
    ja, jb = join_predictions(a, b)
    result = paired_bootstrap(ja.metrics, jb.metrics, n, num_resamples=100)
    assert result and all(d.difference == 0 and d.p_value == 1.0 for d in result.values())
    with pytest.raises(InputError, match="vocabularies"):
        join_predictions(a, NextVisitPredictions(ids, times, ["A", "B", "D"], targets, a.probabilities))


def test_compare_two_runs_on_the_same_cohort(runs, tmp_path):
    result = compare([uri(runs, "boc-binary"), uri(runs, "behrt-binary")], tmp_path / "cmp", num_resamples=200)
    assert result.labels == ["boc-binary", "behrt-binary"] and result.notes == []
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["run"] for r in rows] == result.labels
    for row, run in zip(rows, result.runs, strict=True):
        s = run.summary
        assert float(row["auroc"]) == pytest.approx(s["metrics"]["auroc"])
        assert float(row["auroc_ci_low"]) == pytest.approx(s["metrics_ci"]["auroc"][0])
        assert int(row["params_total"]) == s["params_total"] and row["device"] == "cpu"
    diff = result.paired["behrt-binary"]["auroc"]
    held_out = result.runs[0].summary["data"]["subjects"]["held_out"]
    assert diff.num_subjects == held_out and diff.ci[0] <= diff.difference <= diff.ci[1]
    assert diff.difference == pytest.approx(result.runs[1].summary["metrics"]["auroc"]
                                            - result.runs[0].summary["metrics"]["auroc"])
    assert float(rows[1]["auroc_diff_vs_boc-binary_p"]) == pytest.approx(diff.p_value)
    assert "prevalence" not in result.paired["behrt-binary"]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| run | model | parameters (trainable)" in report and "## Paired differences vs boc-binary" in report
    assert "oracle (true risk)" in report
    assert [p.name for p in result.plots] == ["metric_vs_params.png", "metric_vs_compute.png", "learning_curves.png"]
    for plot in result.plots:
        assert_png(plot)
        assert f"(plots/{plot.name})" in report


def test_compare_mlm_runs_without_a_paired_test(runs, tmp_path):
    run = load_run(uri(runs, "mlm"))
    assert run.predictions is None and run.records
    result = compare_runs([run, run], tmp_path / "mlm")
    assert result.paired == {} and "no per-patient predictions" in result.notes[0]
    assert "mlm_loss ↓" in result.report.read_text()


def test_compare_refuses_different_cohorts_unless_forced(runs, tmp_path, cli):
    args = ["compare", uri(runs, "boc-binary"), uri(runs, "boc-binary-250"), "--out", str(tmp_path / "out"),
            "--resamples", "100"]
    refused = cli(*args, timeout=120)
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "boc-binary-250 differs from boc-binary" in message and "data fingerprint" in message
    assert "300 patients" in message and "250 patients" in message and "Traceback" not in message
    assert not (tmp_path / "out").exists()
    forced = cli(*args, "--force", timeout=120)
    assert forced.returncode == 0, forced.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "forced: boc-binary-250 differs" in report and "no paired test for boc-binary-250" in report
    with pytest.raises(InputError, match="no summary.json"):
        load_run(uri(runs, "nope"))
    with pytest.raises(InputError, match="at least two"):
        compare([uri(runs, "mlm")], tmp_path / "one")
