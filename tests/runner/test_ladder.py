"""The ladder: a spec expands into ordinary runs, a preempted ladder continues, and the report's verdicts are right."""

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from scipy.stats import norm

from ehrseq.errors import InputError
from ehrseq.evaluation.binary import auroc
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions
from ehrseq.reports.compare import RunResult
from ehrseq.reports.ladder import LadderCell, analyse_cohort
from ehrseq_runner.commands.ladder import run_ladder
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.spec.job_spec import SpecError
from ehrseq_runner.spec.ladder_spec import load_ladder

from support.helpers import REPO

LADDER = """\
name: lad
seed: 3
cohorts:
  - {name: order, data: {num_patients: 200, max_seq_len: 32, synthetic: {preset: transition}}}
  - {name: presence, data: {num_patients: 200, max_seq_len: 32, synthetic: {preset: presence}}}
task: {kind: binary}
label_budgets: [16, null]
replicates: 2
resamples: 200
train: {max_steps: 4, batch_size: 8, device: cpu}
rungs:
  - {name: bag, model: {kind: bag_of_codes}}
  - {name: behrt-large, model: {kind: behrt, size: large}, pretrain: {task: mlm, train: {max_steps: 3}}}
  - {name: behrt-large-lora, model: {kind: behrt, size: large}, pretrain: {task: mlm, train: {max_steps: 3}},
     lora: {rank: 4}, train: {lr: 0.001}}
storage: {uri: "file://STORAGE"}
"""


def write_ladder(tmp_path: Path, text: str = LADDER) -> Path:
    path = tmp_path / "ladder.yaml"
    path.write_text(text.replace("STORAGE", str(tmp_path / "runs")))
    return path


def test_a_ladder_expands_into_readable_runs_with_one_pretraining_per_cohort(tmp_path):
    ladder, runs = load_ladder(write_ladder(tmp_path), ["train.batch_size=4"])
    ids = [r.spec.resolved_run_id for r in runs]
    assert ids[:7] == ["lad-order-behrt-large-pretrain", "lad-order-bag-k16-r0", "lad-order-behrt-large-k16-r0",
                       "lad-order-behrt-large-lora-k16-r0", "lad-order-bag-k16-r1", "lad-order-behrt-large-k16-r1",
                       "lad-order-behrt-large-lora-k16-r1"]
    assert len(ids) == len(set(ids)) == 2 * (1 + 2 * 2 * 3)
    pretraining = [r for r in runs if r.pretraining]
    assert [(r.cohort, r.spec.task.kind, r.spec.train.max_steps, r.spec.train.label_budget) for r in pretraining] \
        == [("order", "mlm", 3, None), ("presence", "mlm", 3, None)]  # identical pretrainings are run once
    for r in runs:
        assert r.spec.seed == 3 and r.spec.train.batch_size == 4  # the same cohort and splits everywhere
        if r.pretraining:
            continue
        assert (r.spec.train.label_budget, r.spec.train.replicate) == (r.budget, r.replicate)
        assert r.spec.task.kind == "binary"
        if r.rung == "bag":
            assert r.spec.model.init_from is None
        else:  # every budget and replicate fine-tunes from its cohort's single pretraining run
            assert r.spec.model.init_from == f"file://{tmp_path}/runs/lad-{r.cohort}-behrt-large-pretrain"
            assert ids.index(r.spec.model.init_from.rsplit("/", 1)[1]) < ids.index(r.spec.resolved_run_id)
    lora = [r.spec for r in runs if r.rung == "behrt-large-lora"]
    assert all(s.lora.rank == 4 and s.train.lr == 0.001 and s.train.max_steps == 4 for s in lora)
    assert {r.spec.data.synthetic.preset for r in runs if r.cohort == "presence"} == {"presence"}


BAD = {
    "unknown key": ("replicates: 2\n", "replicates: 2\nrepeats: 3\n", "repeats: unknown field"),
    "bad budget": ("label_budgets: [16, null]", "label_budgets: [0, null]", "label_budgets: Value error"),
    "repeated budget": ("label_budgets: [16, null]", "label_budgets: [16, 16]", "budgets repeat"),
    "budget by hand": ("train: {max_steps: 4,", "train: {label_budget: 8, max_steps: 4,", "come from label_budgets"),
    "pretraining task": ("task: {kind: binary}", "task: {kind: mlm}", "task: Value error, a ladder compares"),
    "unknown rung key": ("{name: bag, model:", "{name: bag, layers: 2, model:", "rungs.0.layers: unknown field"),
    "invalid job": ("{name: bag, model: {kind: bag_of_codes}}", "{name: bag, model: {kind: cox}}",
                    "cohort order, rung bag (lad-order-bag-k16-r0): model.kind: cox needs event times"),
    "repeated rung": ("name: behrt-large-lora,", "name: bag,", "names must be unique; repeated: bag"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_ladder_is_one_error_naming_the_file_and_field(case, tmp_path):
    old, new, expected = BAD[case]
    assert old in LADDER
    with pytest.raises(SpecError) as e:
        load_ladder(write_ladder(tmp_path, LADDER.replace(old, new, 1)))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'ladder.yaml'}: ") and expected in message and "\n" not in message


@pytest.mark.slow
def test_the_cli_exits_2_with_one_line_on_a_bad_ladder(cli, tmp_path):
    result = cli("ladder", str(write_ladder(tmp_path, LADDER.replace("replicates: 2", "replicates: 0"))))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ladder.yaml" in lines[0] and "replicates" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


def test_every_shipped_ladder_validates_and_opens_with_its_command(tmp_path):
    paths = sorted((REPO / "jobs").glob("ladder_*.yaml"))
    assert [p.name for p in paths] == ["ladder_cpu.yaml", "ladder_pod.yaml", "ladder_positions.yaml",
                                       "ladder_pretrain.yaml", "ladder_tiny.yaml"]
    for path in paths:
        ladder, runs = load_ladder(path, [f"storage.uri=file://{tmp_path}"])  # S3 clients: slow to make x 100 runs
        assert path.read_text().startswith(f"# ehrseq ladder jobs/{path.name}")
        presets = {c.data.synthetic.preset for c in ladder.cohorts}  # each positive control beside its negative twin
        pairs = ({"transition", "transition_presence"}, {"family", "family_presence"})
        assert presets and presets == set().union(*(pair for pair in pairs if pair & presets)), presets
        pretrainings = [r.spec for r in runs if r.pretraining]
        assert all(s.task.pretrain_data in ("cut", "pool") for s in pretrainings)  # never whole timelines
        assert {r.spec.model.kind for r in runs} >= {"gbm", "behrt"}  # against the full-strength count baseline


# Hand-made bundles: the report's verdicts on predictions whose answer is known, without training anything.
HELD_OUT = 400
LABELS = np.random.default_rng(0).random(HELD_OUT) < 0.3


def fake_bundle(root: Path, run, strength: float, tuning: float) -> None:
    """A finished run's summary.json and predictions: scores = strength x label + noise (0 = chance)."""
    noise = np.random.default_rng(run.replicate or 0).normal(size=HELD_OUT)
    scores = 1 / (1 + np.exp(-(strength * LABELS + noise - 0.5)))
    p = BinaryPredictions(np.arange(HELD_OUT), np.full(HELD_OUT, np.datetime64("2020-01-01", "us")), LABELS, scores)
    folder = root / run.spec.resolved_run_id
    (folder / "predictions").mkdir(parents=True)
    pq.write_table(p.to_table(), folder / "predictions" / "held_out.parquet")
    count = run.spec.model.kind in ("bag_of_codes", "gbm")
    summary = {"run_id": run.spec.resolved_run_id, "task": "binary", "labels": "outcome_within_365d",
               "metrics": p.metrics(), "wall_time_s": 60.0, "gpu_hours": 0.5, "cost": 1.0,
               "data": {"subjects": {"train": 1000, "tuning": 200, "held_out": HELD_OUT}},
               "oracle": {"auroc": 0.95}, **({"baseline": {"tuning_score": tuning}} if count else {}),
               **({"family_probe": {"neighbours": 5, "family_share": 0.4, "matched_share": 0.15, "chance": 0.1},
                   "family_probe_cooccurrence": {"neighbours": 5, "family_share": 0.9, "matched_share": 0.1,
                                                 "chance": 0.1}}
                  if run.pretraining and run.cohort == "order" else {}),
               **({"underfit": True} if run.pretraining and run.cohort == "presence" else {})}
    (folder / "summary.json").write_text(json.dumps(summary))
    if not count:
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 4, "split": "tuning", "auroc": tuning}) + "\n")


STRENGTH = {  # (cohort, rung, budget) -> how well the fake model ranks; gbm: better held-out, worse tuning
    ("order", "bag", 16): 0.4, ("order", "gbm", 16): 0.6, ("order", "behrt", 16): 0.4,
    ("order", "bag", None): 1.0, ("order", "gbm", None): 1.1, ("order", "behrt", None): 4.0,
    ("presence", "bag", 16): 0.4, ("presence", "gbm", 16): 0.5, ("presence", "behrt", 16): 0.4,
    ("presence", "bag", None): 1.0, ("presence", "gbm", None): 1.1, ("presence", "behrt", None): 1.0,
}
VERDICT_LADDER = LADDER.replace("replicates: 2", "replicates: 1").split("rungs:")[0] + """\
rungs:
  - {name: bag, model: {kind: bag_of_codes}}
  - {name: gbm, model: {kind: bag_of_codes}}
  - {name: behrt, model: {kind: behrt}, pretrain: {task: mlm}}
storage: {uri: "file://STORAGE"}
"""


def test_a_preempted_ladder_continues_and_the_report_gives_the_known_verdicts(tmp_path):
    ladder, runs = load_ladder(write_ladder(tmp_path, VERDICT_LADDER))
    root, calls = tmp_path / "runs", []

    def fake_run(spec, console, stop=None, preempt_at=None):
        run = next(r for r in runs if r.spec is spec)
        calls.append(spec.resolved_run_id)
        if len(calls) == preempt_at:
            return EXIT_PREEMPTED
        if not (root / spec.resolved_run_id).exists():  # the runner skips a completed run
            strength = 0.0 if run.pretraining else STRENGTH[run.cohort, run.rung, run.budget]
            fake_bundle(root, run, strength, tuning=0.6 if run.rung == "gbm" else 0.7)
        return 0

    out = tmp_path / "report"
    first = run_ladder(ladder, runs, out, Console(quiet=True), run=lambda s, c, stop: fake_run(s, c, preempt_at=4))
    assert first == EXIT_PREEMPTED and not out.exists()
    made = sorted(p.name for p in root.iterdir())
    assert made == sorted(r.spec.resolved_run_id for r in runs[:3])
    calls.clear()
    assert run_ladder(ladder, runs, out, Console(quiet=True), run=fake_run) == 0
    assert calls == [r.spec.resolved_run_id for r in runs]
    assert sorted(p.name for p in root.iterdir()) == sorted(calls)

    with (out / "ladder.csv").open() as f:
        rows = {(r["cohort"], r["rung"], r["k"]): r for r in csv.DictReader(f)}
    # the best count baseline is picked on tuning (bag 0.7 > gbm 0.6), though gbm is better held-out
    assert {r["best_baseline"] for r in rows.values()} == {"bag"}
    assert float(rows["order", "gbm", "all"]["value"]) > float(rows["order", "bag", "all"]["value"])
    assert rows["order", "behrt", "all"]["verdict"] == "beats"
    assert float(rows["order", "behrt", "all"]["difference_ci_low"]) > 0
    assert rows["presence", "behrt", "all"]["verdict"] == "no difference"  # identical predictions
    assert float(rows["presence", "behrt", "all"]["difference"]) == 0.0
    scores = 1 / (1 + np.exp(-(4.0 * LABELS + np.random.default_rng(0).normal(size=HELD_OUT) - 0.5)))
    assert float(rows["order", "behrt", "all"]["value"]) == pytest.approx(auroc(LABELS, scores))
    report = (out / "report.md").read_text()
    assert "at k=all behrt beats the best count baseline (bag) by +0." in report
    assert "at k=all behrt shows no difference from the best count baseline (bag): +0.000" in report
    assert report.count("Matches the known answer") == 2 and "true risk (oracle) 0.950" in report
    assert (out / "plots" / "order_label_efficiency.png").stat().st_size > 10_000
    assert "### Pretraining" in report and "| behrt | lad-order-behrt-pretrain |" in report
    pretrainings = {line.split(" | ")[1]: line for line in report.splitlines() if "| lad-" in line}
    assert "| 0.400 / 0.150 / 0.100 (counts 0.900) |" in pretrainings["lad-order-behrt-pretrain"]  # the family probes
    assert "| - |" in pretrainings["lad-presence-behrt-pretrain (underfit: best at its last step)"]  # no probe
    assert "underfit" not in pretrainings["lad-order-behrt-pretrain"]


@pytest.mark.slow
def test_a_tiny_real_ladder_writes_its_report(tmp_path):
    text = LADDER.split("rungs:")[0].replace("replicates: 2", "replicates: 1") + """\
rungs:
  - {name: bag, model: {kind: bag_of_codes}}
  - {name: behrt, model: {kind: behrt, size: small}, train: {max_steps: 2}}
storage: {uri: "file://STORAGE"}
runtime: {work_dir: WORK}
""".replace("WORK", str(tmp_path / "work"))
    ladder, runs = load_ladder(write_ladder(tmp_path, text.replace("  - {name: presence", "  # - {name: presence")))
    assert run_ladder(ladder, runs, tmp_path / "report", Console(quiet=True)) == 0
    with (tmp_path / "report" / "ladder.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["rung"], r["k"], r["verdict"] != "") for r in rows] == [
        ("bag", "16", False), ("behrt", "16", True), ("bag", "all", False), ("behrt", "all", True)]
    for r in rows:  # the figure is the run's own held-out AUROC
        summary = json.loads((tmp_path / "runs" / f"lad-order-{r['rung']}-k{r['k']}-r0" / "summary.json").read_text())
        assert float(r["value"]) == pytest.approx(summary["metrics"]["auroc"])
    assert "Control `transition`" in (tmp_path / "report" / "report.md").read_text()


def test_survival_verdicts_use_the_c_index():
    rng = np.random.default_rng(1)
    n = 200
    times, events = rng.exponential(300, n), rng.random(n) < 0.7
    ids, at = np.arange(n), np.full(n, np.datetime64("2020-01-01", "us"))

    def cell(rung, kind, risks, tuning):
        summary = {"task": "survival", "metrics": {"c_index": 0.0}, "baseline": {"tuning_score": tuning}}
        table = SurvivalPredictions(ids, at, times, events, risks).to_table()
        return LadderCell("c", rung, kind, None, 0, RunResult(f"file:///r/{rung}", summary, [], table))

    cells = [cell("cox", "cox", rng.normal(size=n), 0.6), cell("gbm", "gbm", rng.normal(size=n), 0.5),
             cell("behrt", "behrt", -times / 100 + rng.normal(0, 0.5, n), 0.9)]
    result = analyse_cohort(cells, "transition", num_resamples=100)
    assert result.metric == "c_index" and result.baselines == {None: "cox"}
    behrt = next(v for v in result.verdicts if v.rung == "behrt")
    assert behrt.outcome == "beats" and behrt.difference.other > 0.8
    assert result.control.matches and "behrt (best sequence model on tuning) beats" in result.control.measured


def _cells(figures: dict[tuple[str, str], list[float]], n: int = 400, fingerprints: list[str] | None = None):
    """Binary cells whose held-out AUROCs sit near the given figures: one cell per replicate figure."""
    rng = np.random.default_rng(7)
    y = rng.random(n) < 0.4
    ids, at = np.arange(n), np.full(n, np.datetime64("2020-01-01", "us"))
    noise = rng.normal(size=n)
    out, i = [], 0
    for (rung, kind), values in figures.items():
        for r, target in enumerate(values):
            strength = 2 ** 0.5 * norm.ppf(target)  # the AUROC of strength x label + N(0, 1) noise
            table = BinaryPredictions(ids, at, y, 1 / (1 + np.exp(-(strength * y + noise)))).to_table()
            summary = {"task": "binary", "metrics": {"auroc": 0.0}, "baseline": {"tuning_score": 0.7},
                       **({"data_fingerprint": fingerprints[i]} if fingerprints else {})}
            out.append(LadderCell("c", rung, kind, None, r, RunResult(f"file:///r/{rung}{r}", summary, [], table)))
            i += 1
    return out


def test_replicates_widen_the_interval_and_can_undo_a_one_fit_verdict():
    """The issue's case: one replicate of a rung beats the baseline, its replicates disagree; resampling the
    replicates puts that spread in the interval, so the pooled verdict is no longer 'beats'."""
    one = analyse_cohort(_cells({("gbm", "gbm"): [0.70], ("behrt", "behrt"): [0.76]}), num_resamples=400)
    assert one.verdicts[0].outcome == "beats" and any("one replicate" in n for n in one.notes)
    spread = {("gbm", "gbm"): [0.70, 0.70, 0.70], ("behrt", "behrt"): [0.76, 0.62, 0.75]}
    pooled = analyse_cohort(_cells(spread), num_resamples=400)
    point = next(p for p in pooled.points if p.rung == "behrt")
    assert len(point.values) == 3 and point.ci[1] - point.ci[0] > 2 * (one.points[1].ci[1] - one.points[1].ci[0])
    assert pooled.verdicts[0].outcome == "no difference"


def test_verdict_intervals_are_adjusted_for_the_number_of_comparisons():
    figures = {("gbm", "gbm"): [0.70], **{(f"m{i}", "behrt"): [0.70 + 0.01 * i] for i in range(6)}}
    result = analyse_cohort(_cells(figures), num_resamples=300)  # (both intervals are quantiles of the same draws)
    assert len(result.verdicts) == 6 and result.level == pytest.approx(1 - 0.05 / 6)
    for v in result.verdicts:  # the adjusted interval contains the unadjusted 95% one
        assert v.difference.ci[0] <= v.ci95[0] and v.difference.ci[1] >= v.ci95[1]
        assert v.p_holm >= v.difference.p_value


def test_holm_adjusts_step_down():
    from ehrseq.reports.ladder import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_runs_on_different_data_are_not_paired():
    from ehrseq.errors import InputError

    cells = _cells({("gbm", "gbm"): [0.7], ("behrt", "behrt"): [0.75]}, fingerprints=["aaaa", "bbbb"])
    with pytest.raises(InputError, match="the runs are on different data"):
        analyse_cohort(cells, num_resamples=100)


TUNED_LADDER = VERDICT_LADDER.replace("replicates: 1", "replicates: 2\ntuning: {lr_scale: [1.0, 0.25]}")


def test_every_trained_rung_tries_the_ladders_settings_and_the_report_keeps_the_best_on_tuning(tmp_path):
    ladder, runs = load_ladder(write_ladder(tmp_path, TUNED_LADDER))
    behrt = [r for r in runs if r.rung == "behrt" and not r.pretraining]
    assert [r.spec.resolved_run_id for r in behrt[:2]] == ["lad-order-behrt-k16-r0-s0", "lad-order-behrt-k16-r0-s1"]
    assert [(r.setting, r.spec.train.lr) for r in behrt[:2]] == [("lr x1, length x1", 3e-4),
                                                                 ("lr x0.25, length x1", 7.5e-5)]
    assert len(behrt) == 2 * 2 * 2 * 2  # cohorts x budgets x replicates x settings
    assert all(r.setting is None and r.spec.resolved_run_id.endswith(("-r0", "-r1")) for r in runs
               if r.rung in ("bag", "gbm"))  # count baselines tune themselves: one run each
    root = tmp_path / "runs"

    def fake_run(spec, console, stop=None):
        run = next(r for r in runs if r.spec is spec)
        good = run.setting is not None and "x0.25" in run.setting  # the small learning rate wins on tuning
        strength = 0.0 if run.pretraining else STRENGTH[run.cohort, run.rung, run.budget] if good or \
            run.rung != "behrt" else 0.0
        fake_bundle(root, run, strength, tuning=0.9 if good else 0.6 if run.rung == "gbm" else 0.7)
        return 0

    out = tmp_path / "report"
    assert run_ladder(ladder, runs, out, Console(quiet=True), run=fake_run) == 0
    with (out / "ladder.csv").open() as f:
        rows = {(r["cohort"], r["rung"], r["k"]): r for r in csv.DictReader(f)}
    behrt_all = rows["order", "behrt", "all"]
    assert behrt_all["verdict"] == "beats" and float(behrt_all["tuning"]) == 0.9  # the kept setting's figures
    assert behrt_all["replicates"] == "2" and float(behrt_all["wall_time_s"]) == 4 * 60.0  # both settings' compute
    assert float(rows["order", "bag", "all"]["wall_time_s"]) == 2 * 60.0
    report = (out / "report.md").read_text()
    assert "behrt: the best of 2 settings on the tuning split, per replicate and k (kept: lr x1, length x1 0 " \
           "times, lr x0.25, length x1 4 times)" in report


@pytest.mark.parametrize("tuning", ["{lr_scale: [1.0, 1.0]}", "{lr_scale: [0]}", "{length_scale: []}",
                                    "{lr_scale: [1, 2, 3, 4, 5]}"])
def test_a_bad_tuning_grid_is_refused(tuning, tmp_path):
    with pytest.raises(SpecError, match="tuning"):
        load_ladder(write_ladder(tmp_path, VERDICT_LADDER.replace("replicates: 1", f"replicates: 1\ntuning: {tuning}")))


def test_the_plan_counts_every_run_and_its_steps_before_anything_runs(tmp_path):
    from ehrseq.training.length import run_length
    from ehrseq_runner.commands.ladder_plan import plan_ladder

    text = TUNED_LADDER.replace("max_steps: 4", "epochs: 2, min_steps: 0, max_steps: 50")
    _, runs = load_ladder(write_ladder(tmp_path, text))
    text = plan_ladder(runs, tmp_path / "datasets", "H100", mfu=0.1, overhead_s=36.0, price_per_hour=2.0)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| rung")}
    assert int(rows["bag"][0]) == 2 * 2 * 2 and float(rows["bag"][-1].strip(" |")) == 8 * 36 / 3600  # overhead only
    behrt = [r for r in runs if r.rung == "behrt" and not r.pretraining]
    assert int(rows["behrt"][0]) == len(behrt) == 16
    assert not (tmp_path / "runs").exists()  # nothing ran
    steps = int(rows["behrt"][1].replace(",", ""))  # 8 runs at k = 16 (4 steps each), 8 on ~160 training patients
    low, high = (8 * 4 + 8 * run_length(n, 8, 50, epochs=2).steps for n in (100, 200))
    assert low < steps < high
    assert text.rstrip().endswith("at $2.0/h.")
    with pytest.raises(InputError, match="unknown GPU 'TPU'"):
        plan_ladder(runs, tmp_path / "datasets", "TPU", mfu=0.1, overhead_s=36.0, price_per_hour=None)
