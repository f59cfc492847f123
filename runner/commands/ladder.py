"""`ehrseq ladder LADDER.yaml`: run every rung of a ladder spec, then write the report that answers the question.

Every run is an ordinary run in storage, so a preempted ladder re-run continues where it stopped: the runner
itself skips completed runs and resumes an interrupted one. The analysis lives in `ehrseq.reports.ladder`;
this module only orchestrates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ehrseq.reports.ladder import LadderCell, LadderReport, write_ladder_report
from ehrseq.training.device import resolve_device
from ehrseq_runner.commands.compare import load_run
from ehrseq_runner.job.preemption import EXIT_PREEMPTED, StopRequest
from ehrseq_runner.job.run import EXIT_COMPLETED, run_job
from ehrseq_runner.job.tracking import log_ladder
from ehrseq_runner.spec.job_spec import JobSpec
from ehrseq_runner.spec.ladder_spec import LadderRun, LadderSpec


def run_ladder(ladder: LadderSpec, runs: Sequence[LadderRun], out: Path, console: Console,
               run: Callable[[JobSpec, Console, StopRequest], int] = run_job) -> int:
    """Runs each run in order, then writes the report; returns 0 or the first non-zero exit code (75 after a
    preemption: run the ladder again to continue). One stop request spans the ladder: a SIGTERM in any run, or
    between two, ends it."""
    for device in dict.fromkeys(r.spec.train.device for r in runs):
        resolve_device(device)  # a GPU torch cannot use: one line and exit 2 before the first run
    with StopRequest() as stop:
        for i, r in enumerate(runs, 1):
            console.rule(escape(f"ladder {ladder.name} {i}/{len(runs)}: {r.spec.resolved_run_id}"))
            code = EXIT_PREEMPTED if stop() else run(r.spec, console, stop=stop)
            if code != EXIT_COMPLETED:
                console.print(f"[yellow]ladder stopped[/] at {r.spec.resolved_run_id} (exit {code}); run the same "
                              "command again to continue")
                return code
    report = write_report(ladder, runs, out)
    for c in report.cohorts:
        for v in c.verdicts:
            console.print(escape(v.sentence()), highlight=False, soft_wrap=True)
        if c.control:
            verdict = "matches" if c.control.matches else "DOES NOT match"
            console.print(escape(f"{c.cohort}: control {c.control.preset} {verdict} the known answer "
                                 f"({c.control.measured})"), highlight=False, soft_wrap=True)
    console.print(f"[green]ladder report[/]: {escape(f'{report.report}, {report.table}')}")
    if ladder.tracking.mlflow is not None:
        parent = log_ladder(ladder.tracking.mlflow, ladder.name, [r.uri for r in runs], out,
                            lambda message: console.print(f"[yellow]warning:[/] {escape(message)}"))
        if parent:
            console.print(escape(f"MLflow: ladder run {parent}, its {len(runs)} runs nested under it"))
    return EXIT_COMPLETED


def write_report(ladder: LadderSpec, runs: Sequence[LadderRun], out: Path) -> LadderReport:
    """Loads every finished run's bundle and writes the ladder report into `out`."""
    endpoint = ladder.storage.endpoint_url
    kinds = {rung.name: rung.model.kind for rung in ladder.rungs}
    cells = [LadderCell(r.cohort, r.rung, kinds[r.rung], r.budget, r.replicate, load_run(r.uri, endpoint), r.setting)
             for r in runs if not r.pretraining]
    loaded = {r.uri: load_run(r.uri, endpoint) for r in runs if r.pretraining}
    base_uris = {(r.cohort, r.rung): r.spec.model.init_from for r in runs if not r.pretraining}
    pretraining = [(cohort, rung, loaded[uri]) for (cohort, rung), uri in base_uris.items() if uri in loaded]
    controls = {c.name: c.data.synthetic.preset for c in ladder.cohorts if c.data.source == "synthetic"}
    return write_ladder_report(ladder.name, cells, out, controls=controls, pretraining=pretraining,
                               num_resamples=ladder.resamples, seed=ladder.seed)
