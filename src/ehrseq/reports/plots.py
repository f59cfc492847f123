"""The figures of a run's bundle and of a comparison: training curves from metrics records (what
metrics.jsonl holds), held-out discrimination, calibration and survival by predicted-risk group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ehrseq.evaluation.binary import auprc, auroc, calibration_curve

matplotlib.use("Agg")  # headless pods and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _series(records: Sequence[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    return [s for s, _ in rows], [v for _, v in rows]


METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC (average precision)", "brier": "Brier score (lower is better)",
    "c_index": "Harrell's C-index", "mlm_loss": "masked-token cross-entropy (nats)",
    "mlm_accuracy": "masked-token accuracy", "perplexity": "perplexity (lower is better)",
}
# bookkeeping, or a property of the data (the unigram predictor's MLM figures: the same at every evaluation)
NOT_PLOTTED = {"step", "split", "time", "epoch", "prevalence", "mlm_unigram_loss", "mlm_unigram_accuracy",
               "mlm_unigram_perplexity"}


def metric_label(name: str) -> str:
    """Axis label of a metric, with its unit or direction where that helps."""
    if name.startswith("auroc_") and name.endswith("d"):
        return f"AUROC at {name[len('auroc_'):-1]} days"
    return METRIC_LABELS.get(name, name)


def plot_loss(records: Sequence[dict[str, Any]], path: Path, title: str,
              tuning_key: str = "mlm_loss", loss_label: str = "cross-entropy (nats)") -> Path:
    """Training loss (window means) and tuning loss on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    steps, loss = _series(records, "train", "loss")
    ax.plot(steps, loss, label="train (window mean)", color="tab:blue", linewidth=1.2)
    steps, tuning = _series(records, "tuning", tuning_key)
    if steps:
        ax.plot(steps, tuning, "o-", label=f"tuning ({tuning_key})", color="tab:orange", linewidth=1.5)
    ax.set(xlabel="optimizer step", ylabel=loss_label, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_lr_throughput(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Learning-rate schedule and training throughput over steps."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=120)
    steps, lr = _series(records, "train", "lr")
    ax1.plot(steps, lr, color="tab:green")
    ax1.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    steps, tps = _series(records, "train", "tokens_per_s")
    ax2.plot(steps, tps, color="tab:purple")
    ax2.set(xlabel="optimizer step", ylabel="tokens / second", title="Throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_tuning_metrics(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Every figure of the tuning evaluations over steps, one panel each (None if there were none)."""
    tuning = [r for r in records if r.get("split") == "tuning"]
    names = list(dict.fromkeys(k for r in tuning for k, v in r.items()
                               if k not in NOT_PLOTTED and isinstance(v, (int, float))))
    if not names:
        return None
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=120, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = _series(records, "tuning", name)
        ax.plot(steps, values, "o-", color="tab:orange", label="tuning split")
        ax.set(xlabel="optimizer step", ylabel=metric_label(name), title=metric_label(name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: tuning evaluations")
    return _save(fig, path)


def plot_roc_pr(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> Path | None:
    """ROC and precision-recall curves of held-out predictions (None if only one class is present)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return None
    from sklearn.metrics import precision_recall_curve, roc_curve  # (a second to import: runs with labels only)

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    fpr, tpr, _ = roc_curve(labels, probabilities)
    roc.plot(fpr, tpr, color="tab:blue", label=f"model (AUROC {auroc(labels, probabilities):.3f})")
    roc.plot([0, 1], [0, 1], "--", color="grey", label="chance (AUROC 0.5)")
    roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
            title="ROC curve")
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    pr.step(recall, precision, where="post", color="tab:blue",
            label=f"model (AUPRC {auprc(labels, probabilities):.3f})")
    pr.axhline(labels.mean(), linestyle="--", color="grey", label=f"chance (prevalence {labels.mean():.3f})")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
           title="Precision-recall curve", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc else "upper right")
    fig.suptitle(f"{title}: held-out patients (n={len(labels)})")
    return _save(fig, path)


def plot_calibration(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> Path:
    """Reliability diagram (observed rate per predicted-probability bin) over a histogram of the predictions."""
    curve = calibration_curve(labels, probabilities)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    top.plot(curve["predicted"], curve["observed"], "o-", color="tab:blue", label="model (10 equal-width bins)")
    top.set(ylabel="observed outcome rate", title=f"{title}: calibration", xlim=(0, 1), ylim=(0, 1))
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.hist(probabilities, bins=20, range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set(xlabel="predicted probability", ylabel="patients")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_km_risk_groups(times: np.ndarray, events: np.ndarray, risks: np.ndarray, path: Path, title: str,
                        horizon: float | None = None, groups: int = 3) -> Path:
    """Kaplan-Meier event-free curves of patients grouped by predicted risk (equal-size groups by rank).

    A model that ranks well separates the curves: the highest-risk group has its events first.
    """
    from lifelines import KaplanMeierFitter  # (a second to import: survival runs only)

    times, events, risks = np.asarray(times, dtype=float), np.asarray(events, dtype=bool), np.asarray(risks)
    names = {3: ["lowest third", "middle third", "highest third"]}.get(groups) or [
        f"group {i + 1} of {groups}" for i in range(groups)]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = ["tab:blue", "tab:orange", "tab:red"] if groups == 3 else plt.get_cmap("viridis")(
        np.linspace(0, 0.9, groups))
    for name, rows, color in zip(names, np.array_split(np.argsort(risks, kind="stable"), groups), colors,
                                 strict=True):
        km = KaplanMeierFitter().fit(times[rows], events[rows], label=f"{name} of predicted risk (n={len(rows)})")
        km.plot_survival_function(ax=ax, color=color, ci_show=True)
    if horizon:
        ax.axvline(horizon, linestyle=":", color="grey", label=f"horizon ({horizon:g} days)")
    ax.set(xlabel="days since prediction time", ylabel="event-free probability",
           title=f"{title}: Kaplan-Meier by predicted-risk group", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", title="shaded: 95% CI", fontsize="small")
    return _save(fig, path)


def run_colors(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per run, the same in every figure of a comparison."""
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def plot_metric_scatter(points: Mapping[str, tuple[float, float, Sequence[float] | None]], path: Path,
                        title: str, xlabel: str, ylabel: str, log_x: bool = False,
                        colors: Mapping[str, Any] | None = None) -> Path:
    """One labelled point per run (x, metric, its 95% CI as an error bar): what a metric costs."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = colors or run_colors(list(points))
    for label, (x, y, ci) in points.items():
        err = None if ci is None else [[max(y - ci[0], 0.0)], [max(ci[1] - y, 0.0)]]
        ax.errorbar([x], [y], yerr=err, fmt="o", capsize=4, color=colors[label], label=label)
    if log_x and all(x > 0 for x, _, _ in points.values()):  # sizes and costs of a ladder span decades
        ax.set_xscale("log")
        xlabel += " (log scale)"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="run (95% CI)", fontsize="small")
    return _save(fig, path)


def plot_learning_curves(runs: Mapping[str, Sequence[dict[str, Any]]], path: Path, title: str,
                         tuning_key: str, colors: Mapping[str, Any] | None = None) -> Path | None:
    """Training loss and a tuning metric over steps, one line per run (runs without records are left out)."""
    colors = colors or run_colors(list(runs))
    runs = {label: records for label, records in runs.items() if records}
    if not runs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for label, records in runs.items():
        left.plot(*_series(records, "train", "loss"), color=colors[label], label=label)
        steps, values = _series(records, "tuning", tuning_key)
        if steps:
            right.plot(steps, values, "o-", color=colors[label], label=label)
    left.set(xlabel="optimizer step", ylabel="training loss (window mean)", title="Training loss")
    right.set(xlabel="optimizer step", ylabel=metric_label(tuning_key), title=f"Tuning {metric_label(tuning_key)}")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_label_efficiency(curves: Mapping[str, Sequence[tuple[float, float, Sequence[float]]]], path: Path,
                          title: str, metric: str, dashed: Sequence[str] = (),
                          references: Mapping[str, float] | None = None,
                          tick_labels: Mapping[float, str] | None = None,
                          replicates: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> Path:
    """Held-out metric vs labelled training examples (log x), one line per model with its 95% CI band.

    `curves`: model -> [(k, value, [low, high])]; `dashed`: the count baselines; `references`: horizontal lines
    (the oracle ceilings); `tick_labels`: names for x positions (k = all); `replicates`: model -> [(k, value)],
    each replicate's figure as a small dot beside its mean.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    colors = run_colors(list(curves))
    for label, points in curves.items():
        points = sorted(points)
        x = [p[0] for p in points]
        ax.plot(x, [p[1] for p in points], "o--" if label in dashed else "o-", color=colors[label], label=label)
        ax.fill_between(x, [p[2][0] for p in points], [p[2][1] for p in points], color=colors[label], alpha=0.15)
        dots = (replicates or {}).get(label, [])
        if len(dots) > len(points):  # more than one replicate somewhere
            ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=9, color=colors[label], alpha=0.6, zorder=3)
    for (name, value), style in zip((references or {}).items(), (":", "-.", (0, (3, 1, 1, 1, 1, 1))),
                                    strict=False):
        ax.axhline(value, linestyle=style, color="grey", label=f"{name} ({value:.3f})")
    ax.set_xscale("log")
    ticks = sorted({p[0] for points in curves.values() for p in points})
    ax.set_xticks(ticks, [(tick_labels or {}).get(t, f"{t:g}") for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="labelled training patients k (log scale)", ylabel=f"held-out {metric_label(metric)}", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="shaded: 95% CI; dots: replicates; dashed: counts")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
