"""The ladder's report: at each label budget, does a model beat the strongest count baseline, and by how much?

Input is one finished run per cohort x rung x label budget x replicate (loaded bundles, as `compare_runs`
takes them). Per cohort it gives learning curves (held-out metric vs k, 95% bands, each replicate's figure), a
rung x k table, a paired bootstrap of every rung against the best count baseline at each k, one plain sentence
per (rung, k), the labels each figure used, compute per rung and, for synthetic control cohorts, whether the
measured verdict is the known one.

Choices, stated in the report too:
- Runs are paired only when their data fingerprints (dataset, splits, held-out patients) are equal.
- The best count baseline at each k is picked on the tuning split (never on the held-out patients the verdicts
  are scored on; at budget k the tuning split holds k patients too); only when a baseline has no tuning figure
  does the held-out figure pick, with a note.
- Replicates are in the interval: each bootstrap draw resamples the held-out patients (the same ones for every
  rung: paired) and, for every rung, its replicates with replacement, so the variance of training and of the
  label subsample is part of it. One replicate leaves it out (a note says so).
- Equal tuning effort: where the ladder gives trained rungs several settings (learning rate x length), each
  replicate keeps the setting with the best tuning figure, as gbm keeps the best of its settings; the compute
  table counts every setting tried.
- Multiplicity: a cohort's verdicts (every rung but the baseline at every k) are one family of m comparisons;
  their intervals are simultaneous (Bonferroni: each at level 1 - 0.05 / m), a verdict says "beats" or "worse"
  only when that interval excludes 0, and the CSV adds Holm-adjusted p-values.
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
from ehrseq.reports.summary import coverage_warning, describe_coverage

COUNT_KINDS = ("bag_of_codes", "gbm", "cox")  # models on code counts: the baselines a sequence model must beat
POSITIVE = "the best sequence model beats the best count baseline (the outcome depends on an order no per-code " \
           "aggregate sees)"
NEGATIVE = "no sequence model beats the best count baseline (the outcome depends on code presence only)"
EXPECTED = {"transition": POSITIVE, "presence": NEGATIVE, "transition_presence": NEGATIVE}  # with all labels
UNJUDGED = {  # presets whose answer against full-strength counts is not known in advance
    "order": "onset order drives the outcome, but per-code first-occurrence features see which code came first, "
             "so the full-strength count baseline can learn it too: no verdict is expected",
}
ALPHA = 0.05
CEILINGS = (("oracle", "true risk (oracle)"), ("oracle_order_marginal", "best order-blind (true risk averaged over "
            "the order term)"), ("oracle_order_blind", "true risk without the order term"))


@dataclass(frozen=True)
class LadderCell:
    """One finished run of the ladder."""

    cohort: str
    rung: str
    kind: str  # model.kind: count baselines are COUNT_KINDS
    budget: int | None  # labelled training patients; None = all
    replicate: int
    run: RunResult
    setting: str | None = None  # which of the ladder's tuning settings this run tried (None: the only one)


@dataclass(frozen=True)
class Point:
    """A rung at one budget, pooled over its replicates."""

    rung: str
    kind: str
    budget: int | None
    replicates: int
    value: float  # mean over replicates
    ci: tuple[float, float]
    tuning: float | None  # mean tuning-split figure, None when a replicate has none
    draws: np.ndarray  # (resamples,) the figure on each resample of held-out patients and of replicates
    values: tuple[float, ...] = ()  # each replicate's figure
    labels: float | None = None  # labelled examples the fit used (train + tuning), mean over replicates


@dataclass(frozen=True)
class Verdict:
    cohort: str
    rung: str
    budget: int | None
    baseline: str  # the best count baseline at this budget
    difference: PairedDifference  # rung - baseline, its interval adjusted for the cohort's m comparisons
    ci95: tuple[float, float] = (np.nan, np.nan)  # the unadjusted 95% interval
    p_holm: float = np.nan  # Holm-adjusted p-value

    @property
    def outcome(self) -> str:
        low, high = self.difference.ci
        return "beats" if low > 0 else "worse" if high < 0 else "no difference"

    def sentence(self) -> str:
        d = self.difference
        figure = f"{d.difference:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] {metric_label(d.metric)} (adjusted)"
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
    level: float = 1 - ALPHA  # each verdict interval's level: 1 - alpha / m


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


def choose_settings(cells: Sequence[LadderCell]) -> tuple[list[LadderCell], dict[str, list[str]]]:
    """Per cohort, rung, k and replicate, the run whose setting scored best on the tuning split; and per cohort,
    a note per rung saying how often each setting was kept."""
    groups: dict[tuple[str, str, int | None, int], list[LadderCell]] = {}
    for c in cells:
        groups.setdefault((c.cohort, c.rung, c.budget, c.replicate), []).append(c)
    chosen, kept = [], {}
    for (cohort, rung, _, _), tried in groups.items():
        best = tried[0]
        if len(tried) > 1:
            metric = headline_metric(tried[0].run.summary)
            scores = [tuning_score(c.run, metric) for c in tried]
            if None in scores:
                raise InputError(f"{', '.join(c.run.uri for c, s in zip(tried, scores, strict=True) if s is None)}: "
                                 "no tuning figure to choose a setting by")
            best = tried[int(np.argmax(scores))]
            counts = kept.setdefault((cohort, rung), {c.setting: 0 for c in tried})
            counts[best.setting] += 1
        chosen.append(best)
    notes: dict[str, list[str]] = {}
    for (cohort, rung), counts in kept.items():
        notes.setdefault(cohort, []).append(
            f"{rung}: the best of {len(counts)} settings on the tuning split, per replicate and k (kept: "
            + ", ".join(f"{setting} {n} times" for setting, n in counts.items()) + ")")
    return chosen, notes


def analyse_cohort(cells: Sequence[LadderCell], control: str | None = None, *, num_resamples: int = 1000,
                   seed: int = 0) -> CohortResult:
    """Points, best baselines and verdicts of one cohort's runs (all on the same held-out patients)."""
    cohort = cells[0].cohort
    metric = headline_metric(cells[0].run.summary)
    missing = [c.run.uri for c in cells if c.run.predictions is None]
    if missing:
        raise InputError(f"cohort {cohort}: no held-out predictions in {', '.join(missing)}")
    fingerprints = {c.run.summary["data_fingerprint"]: c.run.uri for c in cells if "data_fingerprint" in c.run.summary}
    if len(fingerprints) > 1:
        raise InputError(f"cohort {cohort}: the runs are on different data (data fingerprints "
                         + ", ".join(f"{f} in {uri}" for f, uri in fingerprints.items()) + "); rerun them on one")
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
    rng = np.random.default_rng([seed, 1])  # the replicates' resampling, apart from the patients'
    points = []
    for (rung, budget), rows in groups.items():
        pooled = _resample_replicates(np.stack([draws[i] for i in rows]), rng)
        tunings = [tuning_score(cells[i].run, metric) for i in rows]
        used = [_labels_used(cells[i].run) for i in rows]
        points.append(Point(rung, cells[rows[0]].kind, budget, len(rows), mean(figures[i] for i in rows),
                            (float(np.nanquantile(pooled, 0.025)), float(np.nanquantile(pooled, 0.975))),
                            None if None in tunings else mean(tunings), pooled, tuple(figures[i] for i in rows),
                            None if None in used else mean(used)))
    notes: list[str] = []
    if all(p.replicates == 1 for p in points):
        notes.append("one replicate per rung and k: the intervals cover held-out patients only, not the variance "
                     "of training and of the label subsample (set replicates: 5)")
    baselines, compared = {}, []
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
        compared += [(p, base) for p in at_k if p is not base]
    level = 1 - ALPHA / max(1, len(compared))  # Bonferroni: simultaneous over the cohort's comparisons
    found = [(p, base, difference_from_draws(metric, base.value, p.value, p.draws - base.draws, num_subjects, level),
              difference_from_draws(metric, base.value, p.value, p.draws - base.draws, num_subjects))
             for p, base in compared]
    found = [f for f in found if f[2] is not None]
    verdicts = [Verdict(cohort, p.rung, p.budget, base.rung, d, d95.ci, p_holm)
                for (p, base, d, d95), p_holm in zip(found, holm([f[2].p_value for f in found]), strict=True)]
    if len(compared) > 1:
        notes.append(f"{len(compared)} comparisons: each verdict's interval is at level {100 * level:.2f}% "
                     f"(Bonferroni), so all {len(compared)} hold together at 95%")
    result = CohortResult(cohort, metric, points, verdicts, baselines, notes, None, level=level)
    result.control = check_control(result, control) if control in EXPECTED else None
    if control in UNJUDGED:
        notes.append(f"control `{control}`: {UNJUDGED[control]}")
    return result


def _resample_replicates(draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(R,) from (n, R) replicate x patient-resample figures: in each draw, n replicates drawn with replacement
    and averaged, so the spread between replicates widens the interval (n = 1: the draws themselves)."""
    n, resamples = draws.shape
    if n == 1:
        return draws[0]
    picked = rng.integers(0, n, size=(resamples, n))
    return np.nanmean(draws[picked, np.arange(resamples)[:, None]], axis=1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the given order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]) if len(p) else p
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def _labels_used(run: RunResult) -> float | None:
    used = run.summary.get("labels_used")
    return float(sum(used[s]["examples"] for s in ("train", "tuning"))) if used else None


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
    if EXPECTED[preset] == POSITIVE:
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
    by_cohort: dict[str, list[LadderCell]] = {}  # every run, each tuning setting included: the compute spent
    for c in cells:
        by_cohort.setdefault(c.cohort, []).append(c)
    chosen, setting_notes = choose_settings(cells)
    results = []
    for cohort in by_cohort:
        result = analyse_cohort([c for c in chosen if c.cohort == cohort], (controls or {}).get(cohort),
                                num_resamples=num_resamples, seed=seed)
        result.notes += setting_notes.get(cohort, [])
        results.append(result)
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
    replicates: dict[str, list[tuple[float, float]]] = {}
    for p in r.points:
        x = all_x if p.budget is None else float(p.budget)
        curves.setdefault(p.rung, []).append((x, p.value, p.ci))
        replicates.setdefault(p.rung, []).extend((x, v) for v in p.values)
    return plot_label_efficiency(curves, path, f"{r.cohort}: held-out {metric_label(r.metric)} vs labels",
                                 r.metric, dashed=sorted(_count_rungs(r)), references=ceilings(cells, r.metric),
                                 tick_labels={all_x: f"all ({all_x:g})"}, replicates=replicates)


def ceilings(cells: Sequence[LadderCell], metric: str) -> dict[str, float]:
    """The synthetic cohort's true-risk figures on these held-out patients, by name (none on real data)."""
    summary = cells[0].run.summary
    return {label: summary[key][metric] for key, label in CEILINGS if metric in summary.get(key, {})}


def _compute(runs: Sequence[RunResult]) -> dict[str, float | None]:
    """Wall time, CPU-hours (wall time x threads of the runs that ran on the CPU), GPU-hours and cost."""
    costs = [r.summary.get("cost") for r in runs]
    return {"wall_time_s": sum(r.summary.get("wall_time_s", 0.0) for r in runs),
            "cpu_hours": sum(r.summary.get("wall_time_s", 0.0) / 3600 * _cpu_threads(r.summary) for r in runs
                             if not r.summary.get("gpus")),
            "gpu_hours": sum(r.summary.get("gpu_hours", 0.0) for r in runs),
            "cost": None if None in costs else sum(costs)}


def _cpu_threads(summary: Mapping[str, Any]) -> int:
    return int(summary.get("hardware", {}).get("cpu", {}).get("threads") or 1)


def _write_csv(report: LadderReport, by_cohort: Mapping[str, Sequence[LadderCell]]) -> None:
    columns = ["cohort", "rung", "model", "k", "replicates", "replicate_values", "labels_used", "metric", "value",
               "ci_low", "ci_high", "tuning", "best_baseline", "difference", "difference_ci_low", "difference_ci_high",
               "ci_level", "difference_ci95_low", "difference_ci95_high", "p", "p_holm", "verdict", "wall_time_s",
               "cpu_hours", "gpu_hours", "cost"]
    with report.table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in report.cohorts:
            verdicts = {(v.rung, v.budget): v for v in r.verdicts}
            for p in r.points:
                runs = [c.run for c in by_cohort[r.cohort] if (c.rung, c.budget) == (p.rung, p.budget)]
                row: dict[str, Any] = {
                    "cohort": r.cohort, "rung": p.rung, "model": p.kind, "k": budget_text(p.budget),
                    "replicates": p.replicates, "replicate_values": " ".join(f"{v:.4f}" for v in p.values),
                    "labels_used": p.labels, "metric": r.metric, "value": p.value, "ci_low": p.ci[0],
                    "ci_high": p.ci[1], "tuning": p.tuning, "best_baseline": r.baselines.get(p.budget),
                    **_compute(runs)}
                v = verdicts.get((p.rung, p.budget))
                if v:
                    d = v.difference
                    row |= {"difference": d.difference, "difference_ci_low": d.ci[0], "difference_ci_high": d.ci[1],
                            "ci_level": r.level, "difference_ci95_low": v.ci95[0], "difference_ci95_high": v.ci95[1],
                            "p": d.p_value, "p_holm": v.p_holm, "verdict": v.outcome}
                writer.writerow(row)


def render(name: str, report: LadderReport, by_cohort: Mapping[str, Sequence[LadderCell]],
           pretraining: Sequence[tuple[str, str, RunResult]], num_resamples: int) -> str:
    lines = [f"# Ladder {name}: does the bigger model help?", "",
             "Held-out figures (the mean over replicates) with 95% bootstrap intervals that resample held-out patients "
             "and, per rung, its replicates, so training and subsample variance are in them. At k, every model "
             "trains on k labelled patients and makes every choice (early stopping, kept checkpoint, a baseline's "
             "setting, the best baseline) on k tuning patients; pretraining read no labelled patient's events at or "
             "after its prediction time. Each rung is compared with the best count baseline "
             f"({', '.join(COUNT_KINDS)}; gbm on counts, recency, first and last occurrence and 30/365-day counts of "
             "every code) at the same k, picked on the tuning split, by a paired bootstrap on the same held-out "
             f"patients ({num_resamples} resamples). \"beats\" / \"worse\": the difference's interval, adjusted for "
             "the cohort's number of comparisons (Bonferroni), excludes 0.", ""]
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
    covered = next((c.run.summary["data"]["coverage"] for c in cells
                    if c.run.summary.get("data", {}).get("coverage")), None)
    if covered:  # the sequence models read a window; the count baselines the whole history
        warning = coverage_warning(covered)
        lines += ["Coverage of the sequence models' window (median [10th percentile] share of each example's history "
                  f"before its prediction time): {describe_coverage({'held_out': covered['held_out']})}."
                  + (f" **Warning: {warning}.**" if warning else ""), ""]
    known = ceilings(cells, r.metric)
    if known:
        lines += ["Known figures on these patients: " + "; ".join(f"{k} {v:.3f}" for k, v in known.items()) + ".",
                  ""]
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
    used = {k: max((p.labels or 0) for p in r.points if p.budget == k) for k in budgets}
    lines += [f"### Held-out {metric_label(r.metric)} by k", "",
              "◆ marks the best count baseline at that k (by tuning figure). Labels used: training plus tuning "
              "examples, at most " + ", ".join(f"{used[k]:,.0f} at k={budget_text(k)}" for k in budgets) + ".", "",
              md_table(["rung", *(f"k={budget_text(k)}" for k in budgets)], rows), ""]
    if r.plot:
        lines += [f"![{r.cohort} learning curves](plots/{r.plot.name})", ""]
    lines += ["### Compute per rung", "", "Fine-tuning summed over every budget and replicate; pretraining is run "
              "once per cohort and shared by the rungs with the same pretraining. CPU-hours: wall time x threads of "
              "the runs on the CPU.", ""]
    compute_rows = []
    for rung in dict.fromkeys(p.rung for p in r.points):
        runs = [c.run for c in cells if c.rung == rung]
        fit, pre = _compute(runs), _compute([run for name, run in pretraining if name == rung])
        pretrained = any(name == rung for name, _ in pretraining)
        compute_rows.append([rung, str(len(runs)), wall_text(fit["wall_time_s"]), f"{fit['cpu_hours']:.2f}",
                             f"{fit['gpu_hours']:.3f}",
                             *((wall_text(pre["wall_time_s"]), f"{pre['cpu_hours']:.2f}", f"{pre['gpu_hours']:.3f}")
                               if pretrained else ("-", "-", "-")),
                             "-" if fit["cost"] is None else f"${fit['cost'] + (pre['cost'] or 0):.2f}"])
    lines += [md_table(["rung", "runs", "wall time", "CPU-hours", "GPU-hours", "pretraining wall time",
                        "pretraining CPU-hours", "pretraining GPU-hours", "cost"], compute_rows), ""]
    lines += _render_pretraining(pretraining)
    if r.notes:
        lines += ["### Notes", "", *(f"- {n}" for n in r.notes), ""]
    return lines


def _render_pretraining(pretraining: Sequence[tuple[str, RunResult]]) -> list[str]:
    """Each pretraining's held-out masked-code figures beside a code-frequency (unigram) guess on the same masked
    tokens, and what it read of the labelled patients: whether the pretraining learned anything, and honestly."""
    rows = []
    rungs: dict[str, list[str]] = {}  # a shared pretraining: every rung that fine-tunes it
    for rung, run in pretraining:
        rungs.setdefault(run.uri, []).append(rung)
    for uri, run in {run.uri: run for _, run in pretraining}.items():
        m, data = run.summary.get("metrics", {}), run.summary.get("pretraining_data") or {}
        figures = [f"{m[k]:.3f} / {m[u]:.3f}" if k in m and u in m else "-" for k, u in
                   (("perplexity", "mlm_unigram_perplexity"), ("mlm_accuracy", "mlm_unigram_accuracy"))]
        mode, labelled = data.get("mode", "?"), data.get("patients_labelled", "?")
        read = {"pool": f"pool ({labelled} labelled patients left out)",
                "cut": f"cut ({labelled} labelled patients read before their prediction times)"}.get(mode, mode)
        probe, counted = run.summary.get("family_probe"), run.summary.get("family_probe_cooccurrence")
        family = "-" if not probe else f"{probe['family_share']:.3f} / " + (
            "-" if probe["matched_share"] is None else f"{probe['matched_share']:.3f}") + f" / {probe['chance']:.3f}" \
            + (f" (counts {counted['family_share']:.3f})" if counted else "")
        name = uri.rsplit("/", 1)[-1] + (" (underfit: best at its last step)" if run.summary.get("underfit") else "")
        rows.append([", ".join(rungs[uri]), name, *figures, family, read])
    if not rows:
        return []
    return ["### Pretraining", "", "Held-out masked-code perplexity and accuracy, model / unigram (the training "
            "split's code frequencies on the same masked tokens); labelled patients read before their prediction "
            "times only (`cut`) or not at all (`pool`). Family probe (cohorts with a planted family of rare codes): "
            "the share of family codes among each family code's 5 nearest code vectors / the same for "
            "frequency-matched codes / chance (counts: the same probe on the training patients' co-occurrence counts, "
            "no model: whether the data reveals the family); a pretraining that learned it is well above both.", "",
            md_table(["rungs", "run", "perplexity", "accuracy", "family probe",
                      "what it read of the labelled patients"], rows), ""]

