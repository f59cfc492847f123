"""Several finished runs side by side: does the bigger or newer model actually beat the smaller, older one?

Input is what each run's bundle holds (summary.json, metrics.jsonl, held-out predictions), already loaded, so a
notebook, the `ehrseq compare` command or a ladder of runs can call `compare_runs` the same way. Runs are
comparable only on the same held-out patients: the same data fingerprint and task, or `force`. Differences
between supervised models come from a paired bootstrap over those patients.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ehrseq.errors import InputError
from ehrseq.evaluation.paired import PairedDifference, join_predictions, paired_bootstrap
from ehrseq.evaluation.predictions import predictions_from_table
from ehrseq.reports.plots import metric_label, plot_learning_curves, plot_metric_scatter, run_colors

PREDICTIONS = "predictions/held_out.parquet"  # in a run's bundle: the rows every supervised metric comes from
HEADLINE = {"binary": "auroc", "survival": "c_index", "mlm": "mlm_loss"}
LOWER_IS_BETTER = {"brier", "mlm_loss", "perplexity", "mlm_unigram_loss", "mlm_unigram_perplexity"}
NOT_COMPARED = {"prevalence"}  # a property of the held-out patients, the same for every model
# summary.json fields, as they are, in comparison.csv
SUMMARY_COLUMNS = ["model", "task", "params_total", "params_trainable", "steps", "device", "wall_time_s",
                   "seconds_per_step", "checkpoint_bytes", "gpu_hours", "cost", "data_fingerprint"]


@dataclass
class RunResult:
    """One run's bundle as loaded from storage; `predictions` is None for runs without any (MLM)."""

    uri: str
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    predictions: pa.Table | None = None


@dataclass
class Comparison:
    labels: list[str]  # one per run, in the order given; the first is the baseline of the paired tests
    runs: list[RunResult]
    paired: dict[str, dict[str, PairedDifference]]  # run label -> metric -> (run - baseline)
    notes: list[str]  # what was forced or could not be tested, and why
    report: Path
    table: Path
    plots: list[Path]


def compare_runs(runs: Sequence[RunResult], out: Path, *, force: bool = False, num_resamples: int = 1000,
                 seed: int = 0) -> Comparison:
    """Writes out/report.md, out/comparison.csv and out/plots/*.png; the first run is the baseline.

    InputError if fewer than two runs, or if they are on different data or tasks and `force` is not set.
    """
    runs = list(runs)
    if len(runs) < 2:
        raise InputError(f"compare needs at least two runs (got {len(runs)})")
    labels = run_labels(runs)
    problems = comparability_problems(runs, labels)
    if problems and not force:
        raise InputError("refusing to compare runs on different data or tasks: " + "; ".join(problems)
                         + " (--force compares them anyway, without paired tests across different patients)")
    notes = [f"forced: {p}" for p in problems]
    paired = _paired_tests(runs, labels, notes, num_resamples, seed)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(runs, labels, out / "plots")
    comparison = Comparison(labels, runs, paired, notes, out / "report.md", out / "comparison.csv", plots)
    _write_csv(comparison)
    comparison.report.write_text(render_report(comparison, num_resamples))
    return comparison


def run_labels(runs: Sequence[RunResult]) -> list[str]:
    """Run ids, or the full URIs where two runs share an id (the same name in two storages)."""
    ids = [r.summary.get("run_id") or r.uri.rstrip("/").rsplit("/", 1)[-1] for r in runs]
    return [r.uri if ids.count(i) > 1 else i for i, r in zip(ids, runs, strict=True)]


def comparability_problems(runs: Sequence[RunResult], labels: Sequence[str]) -> list[str]:
    """Why each run is not on the same patients and task as the first; empty when all are comparable."""
    base, problems = runs[0].summary, []
    for label, run in zip(labels[1:], runs[1:], strict=True):
        s, why = run.summary, []
        if (s.get("task"), s.get("labels")) != (base.get("task"), base.get("labels")):
            why.append(f"task {_task(base)} vs {_task(s)}")
        fa, fb = base.get("data_fingerprint"), s.get("data_fingerprint")
        if fa is None or fb is None:
            why.append("no data fingerprint in " + " and ".join(
                lbl for lbl, f in ((labels[0], fa), (label, fb)) if f is None) + " (a bundle from an older ehrseq)")
        elif fa != fb:
            da, db = base.get("data", {}), s.get("data", {})
            diffs = [f"{k} {da.get(k)!r} vs {db.get(k)!r}" for k in ("dataset", "description", "subjects")
                     if da.get(k) != db.get(k)]
            why.append(f"data fingerprint {fa} vs {fb} ("
                       + ("; ".join(diffs) or "same dataset, different splits or held-out subjects") + ")")
        if why:
            problems.append(f"{label} differs from {labels[0]}: " + ", ".join(why))
    return problems


def headline_metric(summary: dict[str, Any]) -> str:
    """The figure a task is judged by (AUROC, C-index, MLM loss), else its first metric."""
    name = HEADLINE.get(summary.get("task", ""))
    return name if name in summary.get("metrics", {}) else next(iter(summary.get("metrics", {})), "")


def _same_patients_key(s: dict[str, Any]) -> tuple[Any, ...]:
    return s.get("task"), s.get("labels"), s.get("data_fingerprint")


def _task(s: dict[str, Any]) -> str:
    return f"{s.get('task')}" + (f" ({s['labels']})" if s.get("labels") else "")


def _paired_tests(runs: Sequence[RunResult], labels: Sequence[str], notes: list[str], num_resamples: int,
                  seed: int) -> dict[str, dict[str, PairedDifference]]:
    """Each run against the first on the held-out rows both scored (subject_id, prediction_time)."""
    if runs[0].predictions is None:
        notes.append(f"no paired tests: {labels[0]} has no per-patient predictions (MLM runs are compared by "
                     "their held-out figures and intervals)")
        return {}
    base = predictions_from_table(runs[0].predictions)
    out = {}
    for label, run in zip(labels[1:], runs[1:], strict=True):
        if run.predictions is None:
            notes.append(f"no paired test for {label}: it has no per-patient predictions")
            continue
        if _same_patients_key(run.summary) != _same_patients_key(runs[0].summary):
            notes.append(f"no paired test for {label}: not the same task and held-out patients as {labels[0]}")
            continue
        try:
            a, b = join_predictions(base, predictions_from_table(run.predictions))
        except InputError as e:
            notes.append(f"no paired test for {label}: {e}")
            continue
        names = [m for m in a.metrics() if m not in NOT_COMPARED]
        out[label] = paired_bootstrap(a.metrics, b.metrics, len(a.subject_ids), metrics=names,
                                      num_resamples=num_resamples, seed=seed, groups=a.subject_ids)
    return out


def _compute_axis(runs: Sequence[RunResult]) -> tuple[str, list[float]]:
    """What a run cost: dollars where every run has a price, GPU-hours where all ran on GPUs, else wall time."""
    summaries = [r.summary for r in runs]
    if all(s.get("cost") is not None for s in summaries):
        return "cost (USD at runtime.price_per_hour)", [s["cost"] for s in summaries]
    if all(s.get("gpus") for s in summaries):
        return "GPU-hours", [s["gpu_hours"] for s in summaries]
    return "wall time (minutes)", [s.get("wall_time_s", float("nan")) / 60 for s in summaries]


def _plots(runs: Sequence[RunResult], labels: Sequence[str], folder: Path) -> list[Path]:
    metric = headline_metric(runs[0].summary)
    name = metric_label(metric)
    scored = [(lbl, r.summary) for lbl, r in zip(labels, runs, strict=True) if metric in r.summary.get("metrics", {})]

    def point(s: dict[str, Any], x: float) -> tuple[float, float, list[float] | None]:
        return x, s["metrics"][metric], s.get("metrics_ci", {}).get(metric)

    compute_label, compute = _compute_axis(runs)
    compute_of = dict(zip(labels, compute, strict=True))
    colors = run_colors(labels)
    plots = [
        plot_metric_scatter({lbl: point(s, s["params_total"]) for lbl, s in scored}, folder / "metric_vs_params.png",
                            f"Held-out {name} vs model size", "parameters (total)", name, log_x=True,
                            colors=colors),
        plot_metric_scatter({lbl: point(s, compute_of[lbl]) for lbl, s in scored}, folder / "metric_vs_compute.png",
                            f"Held-out {name} vs {compute_label}", compute_label, name, log_x=True,
                            colors=colors),
        plot_learning_curves({lbl: r.records for lbl, r in zip(labels, runs, strict=True)},
                             folder / "learning_curves.png", "Learning curves (runs with training steps)", metric,
                             colors),
    ]
    return [p for p in plots if p is not None]


def _metric_names(runs: Sequence[RunResult]) -> list[str]:
    return list(dict.fromkeys(m for r in runs for m in r.summary.get("metrics", {})))


def _write_csv(c: Comparison) -> None:
    metrics = _metric_names(c.runs)
    tested = list(dict.fromkeys(m for diffs in c.paired.values() for m in diffs))
    columns = ["run", "uri", *SUMMARY_COLUMNS]
    columns += [f"{m}{suffix}" for m in metrics for suffix in ("", "_ci_low", "_ci_high")]
    columns += [f"{m}_diff_vs_{c.labels[0]}{suffix}" for m in tested for suffix in ("", "_ci_low", "_ci_high", "_p")]
    with c.table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for label, run in zip(c.labels, c.runs, strict=True):
            s = run.summary
            row: dict[str, Any] = {"run": label, "uri": run.uri, **{k: s.get(k) for k in SUMMARY_COLUMNS}}
            for m in metrics:
                low, high = s.get("metrics_ci", {}).get(m, (None, None))
                row |= {m: s.get("metrics", {}).get(m), f"{m}_ci_low": low, f"{m}_ci_high": high}
            for m, d in c.paired.get(label, {}).items():
                key = f"{m}_diff_vs_{c.labels[0]}"
                row |= {key: d.difference, f"{key}_ci_low": d.ci[0], f"{key}_ci_high": d.ci[1], f"{key}_p": d.p_value}
            writer.writerow(row)


def wall_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_report(c: Comparison, num_resamples: int) -> str:
    """report.md: the metrics table, the paired differences against the baseline, notes, plots, provenance."""
    metrics = _metric_names(c.runs)
    base = c.runs[0].summary
    header = ["run", "model", "parameters (trainable)", "steps", "device", "wall time", "s / step", "checkpoint",
              "GPU-hours", "cost",
              *(f"{m}{' ↓' if m in LOWER_IS_BETTER else ''}" for m in metrics)]
    rows = []
    for label, run in zip(c.labels, c.runs, strict=True):
        s = run.summary
        cost = s.get("cost")
        rows.append([label, s.get("model", "?"), f"{s.get('params_total', 0):,} ({s.get('params_trainable', 0):,})",
                     str(s.get("steps", "-")), s.get("device", "-"), wall_text(s.get("wall_time_s")),
                     _number(s.get("seconds_per_step"), "{:.3f}"), _number(s.get("checkpoint_bytes"), "{:,} B"),
                     f"{s.get('gpu_hours', 0):.3f}", "-" if cost is None else f"${cost:.2f}",
                     *(_with_ci(s.get("metrics", {}).get(m), s.get("metrics_ci", {}).get(m)) for m in metrics)])
    if base.get("oracle") and not any(n.startswith("forced") for n in c.notes):
        rows.append(["oracle (true risk)", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                     *(_with_ci(base["oracle"].get(m), None) for m in metrics)])
    lines = [f"# Comparison of {len(c.runs)} runs: {_task(base)}", "",
             f"Held-out patients: {base.get('data', {}).get('subjects', {}).get('held_out', '?')} "
             f"({base.get('data', {}).get('description', 'unknown data')}; data fingerprint "
             f"{base.get('data_fingerprint', '-')}). Metrics with 95% bootstrap intervals over patients; "
             "↓ marks lower-is-better.", "", md_table(header, rows), ""]
    if c.paired:
        lines += [f"## Paired differences vs {c.labels[0]}", "",
                  f"Each run minus {c.labels[0]} on the same held-out patients (joined on subject_id and "
                  f"prediction_time), {num_resamples} paired bootstrap resamples of patients; two-sided p "
                  "for no difference.", ""]
        diff_rows = [[label, m, f"{d.baseline:.3f}", f"{d.other:.3f}", f"{d.difference:+.3f}",
                      f"[{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]", f"{d.p_value:.3g}", str(d.num_subjects)]
                     for label, diffs in c.paired.items() for m, d in diffs.items()]
        lines += [md_table(["run", "metric", c.labels[0], "run", "difference", "95% CI", "p", "patients"],
                            diff_rows), ""]
    if c.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in c.notes), ""]
    lines += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})\n" for p in c.plots)]
    provenance = [[label, run.uri, run.summary.get("spec_fingerprint", "-"), run.summary.get("data_fingerprint", "-"),
                   run.summary.get("git_commit") or "-",
                   " / ".join(str(run.summary.get("versions", {}).get(k) or "-") for k in ("torch", "cuda"))]
                  for label, run in zip(c.labels, c.runs, strict=True)]
    lines += ["## Runs", "", md_table(["run", "URI", "spec fingerprint", "data fingerprint", "git commit",
                                        "torch / CUDA"], provenance), ""]
    return "\n".join(lines)


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)])
