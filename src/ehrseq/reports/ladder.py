"""The ladder's report: at each label budget, does a model beat the strongest count baseline, and by how much?

Input is one finished run per cohort x rung x label budget x replicate (loaded bundles, as `compare_runs`
takes them). Per cohort it gives learning curves (held-out metric vs k, 95% bands), a rung x k table, a paired
bootstrap of every rung against the best count baseline at each k, one plain sentence per (rung, k), compute per
rung and, for synthetic control cohorts, whether the measured verdict is the known one.

Choices, stated in the report too:
- The best count baseline at each k is picked on the tuning split (never on the held-out patients the verdicts
  are scored on); only when a baseline has no tuning figure does the held-out figure pick, with a note.
- Replicates are pooled: the figure is the mean over replicates, resampled on the same patients in each draw,
  so the interval covers patient sampling with the replicates' spread averaged in.
- Controls are judged with all labels (the largest budget): that is where the known answer holds; with few
  labels a pretrained model may beat counts even on a presence-driven outcome.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from ehrseq.errors import InputError
from ehrseq.evaluation.bootstrap import bootstrap_draws
from ehrseq.evaluation.paired import PairedDifference, align_predictions, difference_from_draws
from ehrseq.evaluation.predictions import predictions_from_table
from ehrseq.reports.compare import RunResult, headline_metric, md_table, wall_text
from ehrseq.reports.plots import metric_label, plot_label_efficiency

COUNT_KINDS = ("bag_of_codes", "gbm", "cox")  # models on code counts: the baselines a sequence model must beat
EXPECTED = {  # synthetic control preset -> the known answer with all labels
    "order": "the best sequence model beats the best count baseline (the outcome depends on code order)",
    "presence": "no sequence model beats the best count baseline (the outcome depends on code presence only)",
}


@dataclass(frozen=True)
class LadderCell:
    """One finished run of the ladder."""

    cohort: str
    rung: str
    kind: str  # model.kind: count baselines are COUNT_KINDS
    budget: int | None  # labelled training patients; None = all
    replicate: int
    run: RunResult


@dataclass(frozen=True)
class Point:
    """A rung at one budget, pooled over its replicates."""

    rung: str
    kind: str
    budget: int | None
    replicates: int
    value: float
    ci: tuple[float, float]
    tuning: float | None  # mean tuning-split figure, None when a replicate has none
    draws: np.ndarray  # (resamples,) the pooled figure on each resample of held-out patients


@dataclass(frozen=True)
class Verdict:
    cohort: str
    rung: str
    budget: int | None
    baseline: str  # the best count baseline at this budget
    difference: PairedDifference  # rung - baseline

    @property
    def outcome(self) -> str:
        low, high = self.difference.ci
        return "beats" if low > 0 else "worse" if high < 0 else "no difference"

    def sentence(self) -> str:
        d = self.difference
        figure = f"{d.difference:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] {metric_label(d.metric)}"
        verb = {"beats": f"beats the best count baseline ({self.baseline}) by",
                "worse": f"is worse than the best count baseline ({self.baseline}) by",
                "no difference": f"shows no difference from the best count baseline ({self.baseline}):"}[self.outcome]
        return f"{self.cohort}: at k={budget_text(self.budget)} {self.rung} {verb} {figure}"


@dataclass(frozen=True)
class ControlCheck:
    cohort: str
    preset: str
    budget: int | None
    expected: str
    measured: str
    matches: bool


@dataclass
class CohortResult:
    cohort: str
    metric: str
    points: list[Point]
    verdicts: list[Verdict]
    baselines: dict[int | None, str]  # budget -> best count baseline
    notes: list[str]
    control: ControlCheck | None
    plot: Path | None = None


@dataclass
class LadderReport:
    cohorts: list[CohortResult]
    report: Path
    table: Path

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for c in self.cohorts for v in c.verdicts]


def budget_text(budget: int | None) -> str:
    return "all" if budget is None else str(budget)


def tuning_score(run: RunResult, metric: str) -> float | None:
    """The run's figure on the tuning split: a trained model's at the evaluation it was scored with (else its best
    tuning evaluation), a fitted baseline's at its chosen regularisation; None when the bundle has neither."""
    if run.summary.get("best_metric") == metric and run.summary.get("best_tuning_value") is not None:
        return float(run.summary["best_tuning_value"])
    chosen = run.summary.get("baseline", {}).get("tuning_score")
    if chosen is not None:
        return float(chosen)
    values = [r[metric] for r in run.records if r.get("split") == "tuning" and r.get(metric) is not None]
    return max(values) if values else None


def analyse_cohort(cells: Sequence[LadderCell], control: str | None = None, *, num_resamples: int = 1000,
                   seed: int = 0) -> CohortResult:
    """Points, best baselines and verdicts of one cohort's runs (all on the same held-out patients)."""
    cohort = cells[0].cohort
    metric = headline_metric(cells[0].run.summary)
    missing = [c.run.uri for c in cells if c.run.predictions is None]
    if missing:
        raise InputError(f"cohort {cohort}: no held-out predictions in {', '.join(missing)}")
    try:
        aligned = align_predictions([predictions_from_table(c.run.predictions) for c in cells])
    except InputError as e:
        raise InputError(f"cohort {cohort}: the runs are not on the same held-out patients: {e}") from None
    num_subjects = len(aligned[0].subject_ids)
    figures = [p.metrics()[metric] for p in aligned]
    draws = [bootstrap_draws(lambda rows, p=p: {metric: p.metrics(rows)[metric]}, num_subjects,
                             num_resamples=num_resamples, seed=seed, groups=p.subject_ids)[metric]
             for p in aligned]  # the same rows in every draw: aligned runs list the same rows in one order
    groups: dict[tuple[str, int | None], list[int]] = {}
    for i, c in enumerate(cells):
        groups.setdefault((c.rung, c.budget), []).append(i)
    points = []
    for (rung, budget), rows in groups.items():
        pooled = np.mean([draws[i] for i in rows], axis=0)
        tunings = [tuning_score(cells[i].run, metric) for i in rows]
        points.append(Point(rung, cells[rows[0]].kind, budget, len(rows), mean(figures[i] for i in rows),
                            (float(np.nanquantile(pooled, 0.025)), float(np.nanquantile(pooled, 0.975))),
                            None if None in tunings else mean(tunings), pooled))
    notes: list[str] = []
    baselines, verdicts = {}, []
    for budget in dict.fromkeys(c.budget for c in cells):
        at_k = [p for p in points if p.budget == budget]
        base = _best(p for p in at_k if p.kind in COUNT_KINDS)
        if base is None:
            notes.append(f"k={budget_text(budget)}: no count baseline, so no verdicts")
            continue
        if base.tuning is None:
            notes.append(f"k={budget_text(budget)}: a count baseline has no tuning figure, so the best one "
                         f"({base.rung}) was picked on held-out {metric}")
        baselines[budget] = base.rung
        for p in at_k:
            if p is base:
                continue
            d = difference_from_draws(metric, base.value, p.value, p.draws - base.draws, num_subjects)
            if d is not None:
                verdicts.append(Verdict(cohort, p.rung, budget, base.rung, d))
    result = CohortResult(cohort, metric, points, verdicts, baselines, notes, None)
    result.control = check_control(result, control) if control in EXPECTED else None
    return result


def _best(points: Any) -> Point | None:
    """Highest tuning figure; the held-out figure only if some point lacks one."""
    points = list(points)
    if not points:
        return None
    by_tuning = all(p.tuning is not None for p in points)
    return max(points, key=lambda p: p.tuning if by_tuning else p.value)


def check_control(result: CohortResult, preset: str) -> ControlCheck:
    """The verdict a control must give with all labels (the largest budget), and the one it gave."""
    budget = None if None in result.baselines else max(result.baselines, default=None)
    sequence = [v for v in result.verdicts if v.budget == budget and v.rung not in _count_rungs(result)]
    if preset == "order":
        points = {p.rung: p for p in result.points if p.budget == budget}
        best = _best(points[v.rung] for v in sequence)
        verdict = next((v for v in sequence if best and v.rung == best.rung), None)
        measured = ("no sequence model was run" if verdict is None else
                    f"{verdict.rung} (best sequence model on tuning) {verdict.outcome}: "
                    f"{verdict.difference.difference:+.3f} [{verdict.difference.ci[0]:+.3f}, "
                    f"{verdict.difference.ci[1]:+.3f}]")
        matches = verdict is not None and verdict.outcome == "beats"
    else:
        winners = [v.rung for v in sequence if v.outcome == "beats"]
        measured = (f"{', '.join(winners)} beat{'s' if len(winners) == 1 else ''} it" if winners else
                    f"no sequence model beats it ({len(sequence)} compared)")
        matches = not winners
    return ControlCheck(result.cohort, preset, budget, EXPECTED[preset], measured, matches)


def _count_rungs(result: CohortResult) -> set[str]:
    return {p.rung for p in result.points if p.kind in COUNT_KINDS}


def write_ladder_report(name: str, cells: Sequence[LadderCell], out: Path, *,
                        controls: Mapping[str, str | None] | None = None,
                        pretraining: Sequence[tuple[str, str, RunResult]] = (), num_resamples: int = 1000,
                        seed: int = 0) -> LadderReport:
    """Writes out/report.md, out/ladder.csv and out/plots/<cohort>_label_efficiency.png.

    `controls`: cohort -> its synthetic preset (order / presence judge the verdicts); `pretraining`:
    (cohort, rung, run) of the pretraining runs, counted in their rungs' compute.
    """
    by_cohort: dict[str, list[LadderCell]] = {}
    for c in cells:
        by_cohort.setdefault(c.cohort, []).append(c)
    results = [analyse_cohort(cs, (controls or {}).get(cohort), num_resamples=num_resamples, seed=seed)
               for cohort, cs in by_cohort.items()]
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.plot = _plot(r, by_cohort[r.cohort], out / "plots" / f"{r.cohort}_label_efficiency.png")
    report = LadderReport(results, out / "report.md", out / "ladder.csv")
    _write_csv(report, by_cohort)
    report.report.write_text(render(name, report, by_cohort, pretraining, num_resamples))
    return report


def _train_size(cells: Sequence[LadderCell]) -> float:
    """Where k = all sits on the x axis: the training patients of an all-labels run."""
    sizes = [c.run.summary.get("data", {}).get("subjects", {}).get("train") for c in cells if c.budget is None]
    known = [s for s in sizes if s]
    return float(max(known)) if known else 2.0 * max((c.budget or 1) for c in cells)


def _plot(r: CohortResult, cells: Sequence[LadderCell], path: Path) -> Path:
    all_x = _train_size(cells)
    curves: dict[str, list[tuple[float, float, Sequence[float]]]] = {}
    for p in r.points:
        curves.setdefault(p.rung, []).append((all_x if p.budget is None else float(p.budget), p.value, p.ci))
    summary = cells[0].run.summary
    references = {label: summary[key][r.metric] for key, label in
                  (("oracle", "oracle"), ("oracle_order_blind", "order-blind oracle"))
                  if r.metric in summary.get(key, {})}
    return plot_label_efficiency(curves, path, f"{r.cohort}: held-out {metric_label(r.metric)} vs labels",
                                 r.metric, dashed=sorted(_count_rungs(r)), references=references,
                                 tick_labels={all_x: f"all ({all_x:g})"})


def _compute(runs: Sequence[RunResult]) -> dict[str, float | None]:
    costs = [r.summary.get("cost") for r in runs]
    return {"wall_time_s": sum(r.summary.get("wall_time_s", 0.0) for r in runs),
            "gpu_hours": sum(r.summary.get("gpu_hours", 0.0) for r in runs),
            "cost": None if None in costs else sum(costs)}


def _write_csv(report: LadderReport, by_cohort: Mapping[str, Sequence[LadderCell]]) -> None:
    columns = ["cohort", "rung", "model", "k", "replicates", "metric", "value", "ci_low", "ci_high", "tuning",
               "best_baseline", "difference", "difference_ci_low", "difference_ci_high", "p", "verdict",
               "wall_time_s", "gpu_hours", "cost"]
    with report.table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in report.cohorts:
            verdicts = {(v.rung, v.budget): v for v in r.verdicts}
            for p in r.points:
                runs = [c.run for c in by_cohort[r.cohort] if (c.rung, c.budget) == (p.rung, p.budget)]
                row: dict[str, Any] = {
                    "cohort": r.cohort, "rung": p.rung, "model": p.kind, "k": budget_text(p.budget),
                    "replicates": p.replicates, "metric": r.metric, "value": p.value, "ci_low": p.ci[0],
                    "ci_high": p.ci[1], "tuning": p.tuning, "best_baseline": r.baselines.get(p.budget),
                    **_compute(runs)}
                v = verdicts.get((p.rung, p.budget))
                if v:
                    d = v.difference
                    row |= {"difference": d.difference, "difference_ci_low": d.ci[0], "difference_ci_high": d.ci[1],
                            "p": d.p_value, "verdict": v.outcome}
                writer.writerow(row)


def render(name: str, report: LadderReport, by_cohort: Mapping[str, Sequence[LadderCell]],
           pretraining: Sequence[tuple[str, str, RunResult]], num_resamples: int) -> str:
    lines = [f"# Ladder {name}: does the bigger model help?", "",
             "Held-out figures with 95% bootstrap intervals over patients; each rung is compared with the best count "
             f"baseline ({', '.join(COUNT_KINDS)}) at the same k, picked on the tuning split, by a paired bootstrap "
             f"on the same held-out patients ({num_resamples} resamples). Replicates are pooled (mean figure per "
             "resample). \"beats\" / \"worse\": the 95% interval of the difference excludes 0.", ""]
    for r in report.cohorts:
        lines += _render_cohort(r, by_cohort[r.cohort], [(rung, run) for c, rung, run in pretraining
                                                          if c == r.cohort])
    return "\n".join(lines)


def _render_cohort(r: CohortResult, cells: Sequence[LadderCell], pretraining: Sequence[tuple[str, RunResult]]) \
        -> list[str]:
    summary = cells[0].run.summary
    data = summary.get("data", {})
    lines = [f"## Cohort {r.cohort}", "",
             f"{data.get('description', 'unknown data')}; task {summary.get('task')} "
             f"({summary.get('labels', '-')}); held-out patients {data.get('subjects', {}).get('held_out', '?')}; "
             f"metric {metric_label(r.metric)}.", ""]
    ceilings = [f"{label} {summary[key][r.metric]:.3f}" for key, label in
                (("oracle", "oracle (true risk)"), ("oracle_order_blind", "order-blind oracle (true risk without "
                                                                          "the order term)"))
                if r.metric in summary.get(key, {})]
    if ceilings:
        lines += ["Ceilings on these patients: " + "; ".join(ceilings) + ".", ""]
    if r.control:
        c = r.control
        lines += [f"**Control `{c.preset}`** (judged at k={budget_text(c.budget)}): expected {c.expected}; "
                  f"measured: {c.measured}. **{'Matches' if c.matches else 'DOES NOT MATCH'} the known answer.**", ""]
    lines += ["### Verdicts", "", *(f"- {v.sentence()}" for v in r.verdicts), ""]
    budgets = list(dict.fromkeys(p.budget for p in r.points))
    cell = {(p.rung, p.budget): p for p in r.points}
    rows = []
    for rung in dict.fromkeys(p.rung for p in r.points):
        rows.append([rung, *(f"{cell[rung, k].value:.3f} [{cell[rung, k].ci[0]:.3f}, {cell[rung, k].ci[1]:.3f}]"
                             + (" ◆" if r.baselines.get(k) == rung else "") if (rung, k) in cell else "-"
                             for k in budgets)])
    lines += [f"### Held-out {metric_label(r.metric)} by k", "",
              "◆ marks the best count baseline at that k (by tuning figure).", "",
              md_table(["rung", *(f"k={budget_text(k)}" for k in budgets)], rows), ""]
    if r.plot:
        lines += [f"![{r.cohort} learning curves](plots/{r.plot.name})", ""]
    lines += ["### Compute per rung", "", "Summed over every budget and replicate; pretraining is run once per cohort "
              "and shared by the rungs with the same pretraining.", ""]
    compute_rows = []
    for rung in dict.fromkeys(p.rung for p in r.points):
        runs = [c.run for c in cells if c.rung == rung]
        fit, pre = _compute(runs), _compute([run for name, run in pretraining if name == rung])
        compute_rows.append([rung, str(len(runs)), wall_text(fit["wall_time_s"]), f"{fit['gpu_hours']:.3f}",
                             f"{pre['gpu_hours']:.3f}" if any(name == rung for name, _ in pretraining) else "-",
                             "-" if fit["cost"] is None else f"${fit['cost'] + (pre['cost'] or 0):.2f}"])
    lines += [md_table(["rung", "runs", "wall time", "GPU-hours", "pretraining GPU-hours", "cost"], compute_rows),
              ""]
    if r.notes:
        lines += ["### Notes", "", *(f"- {n}" for n in r.notes), ""]
    return lines

