"""The ladder: every model on one cohort and task, then one report; a preempted ladder continues where it stopped."""

import csv

import pytest
from rich.console import Console

from runner.ladder import SCALES, LadderScale, ladder_specs, run_ladder
from runner.preemption import EXIT_PREEMPTED

MICRO = LadderScale(num_patients=200, max_seq_len=32, pretrain_steps=3, finetune_steps=3, batch_size=16,
                    eval_every=3)


def test_rungs_share_one_cohort_and_fine_tune_from_their_own_pretraining():
    specs = ladder_specs("survival", SCALES["tiny"], "file://./runs/ladder")
    names = [s.resolved_run_id for s in specs]
    assert names.index("pretrain-behrt-large") < names.index("survival-behrt-large") < \
        names.index("survival-behrt-large-lora")
    finals = [s for s in specs if s.task.kind == "survival"]
    assert {(s.model.kind, s.model.size if s.model.kind == "behrt" else None, bool(s.lora)) for s in finals} == {
        ("bag_of_codes", None, False), ("cox", None, False), ("med2vec", None, False), ("behrt", "small", False),
        ("behrt", "medium", False), ("behrt", "large", False), ("behrt", "large", True)}
    assert len({(s.seed, s.data.model_dump_json()) for s in specs}) == 1  # same patients and splits everywhere
    for s in specs:
        if s.model.init_from:
            assert s.model.init_from.rsplit("/", 1)[1] in names[:names.index(s.resolved_run_id)]
    assert "survival-cox" not in [s.resolved_run_id for s in ladder_specs("binary", MICRO, "file://x")]


def test_a_preempted_rung_stops_the_ladder_and_a_rerun_continues(tmp_path):
    specs = ladder_specs("binary", MICRO, f"file://{tmp_path}/runs")
    calls: list[str] = []

    def fake_run(spec, console):
        calls.append(spec.resolved_run_id)
        return EXIT_PREEMPTED if len(calls) == 3 else 0

    assert run_ladder(specs, tmp_path / "report", Console(quiet=True), run=fake_run) == EXIT_PREEMPTED
    assert calls == [s.resolved_run_id for s in specs[:3]]
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_micro_ladder_runs_every_model_and_writes_one_report(tmp_path):
    specs = ladder_specs("binary", MICRO, f"file://{tmp_path}/runs", device="cpu",
                         work_dir=str(tmp_path / "work"))
    assert run_ladder(specs, tmp_path / "report", Console(quiet=True)) == 0
    with (tmp_path / "report" / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == sorted(s.resolved_run_id for s in specs if s.task.kind == "binary")
    assert all(r["auroc"] for r in rows)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "binary-behrt-large-lora" in report
