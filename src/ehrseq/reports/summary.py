"""SUMMARY.md: the run's headline figures and plots, readable on GitHub."""

from __future__ import annotations

from typing import Any

from ehrseq.evaluation.family_probe import FamilyProbe
from ehrseq.evaluation.order_probe import OrderProbe

PLOT_CAPTIONS = {
    "loss.png": "Training and tuning loss", "lr_throughput.png": "Learning rate and throughput",
    "tuning_metrics.png": "Tuning evaluations over training", "roc_pr.png": "Held-out ROC and precision-recall",
    "calibration.png": "Held-out calibration", "km_risk_groups.png": "Held-out survival by predicted-risk group",
}


def describe_hardware(hardware: dict[str, Any]) -> str:
    """One line that tells a GPU run from a CPU one: GPUs, memory and driver, or the CPU and its threads."""
    cpu = hardware["cpu"]
    build = f"CUDA {hardware['cuda_build']} build" if hardware.get("cuda_build") else "CPU-only build"
    torch_build = f"torch {hardware['torch']}, {build}"
    host_cpu = (f"{cpu['model']}, {cpu['threads']} torch threads "
                f"({cpu['cpus_usable']} of {cpu['cpus_host']} CPUs usable)")
    gpu = hardware.get("gpu")
    if gpu is None:
        return f"**CPU**: {host_cpu}; {torch_build}"
    memory = f", {gpu['memory_gib']} GiB each" if gpu.get("memory_gib") else ""
    driver = f", driver {gpu['driver']} (CUDA Version {gpu['driver_cuda']})" if gpu.get("driver") else ""
    return f"**GPU**: {gpu['count']} x {gpu['model']}{memory}{driver}; {torch_build}; host CPU {host_cpu}"


COVERAGE_FLOOR = 0.5  # below this median share of days kept, the report warns


def describe_coverage(coverage: dict[str, Any]) -> str:
    """Per split, the median [10th percentile] share of days and of (day, code) events before the prediction time
    that the window keeps."""
    def share(c: dict[str, Any], what: str) -> str:
        return f"{100 * c[what]['median']:.0f}% [{100 * c[what]['p10']:.0f}%]" if c[what]["median"] is not None \
            else "-"
    return "; ".join(f"{split}: days {share(c, 'days')}, events {share(c, 'events')}"
                     for split, c in coverage.items())


def coverage_warning(coverage: dict[str, Any] | None) -> str | None:
    """A sentence when the window keeps under COVERAGE_FLOOR of the median held-out example's days."""
    held_out = (coverage or {}).get("held_out") or {}
    median = held_out.get("days", {}).get("median")
    if median is None or median >= COVERAGE_FLOOR:
        return None
    return (f"the model reads {100 * median:.0f}% of the median held-out example's days before its prediction "
            f"time (10th percentile {100 * held_out['days']['p10']:.0f}%); count baselines read all of them, so a "
            "comparison is about the window as much as the model: raise data.max_seq_len, drop codes that fill it "
            "(data.codes), or make a hospital stay one visit (data.visit: admission)")


def render_summary_md(summary: dict[str, Any], plots: list[str]) -> str:
    """The summary as markdown: metrics with CIs (and the oracle ceiling), run facts, plots, model card."""
    ci = summary.get("metrics_ci", {})
    # synthetic cohorts: the true risk scored the same way, the best order-blind risk (averaged over the order
    # term) and the true risk without the order term
    ceilings = {title: summary[key] for key, title in (("oracle", "oracle (true risk)"), ("oracle_order_marginal",
                                                                                 "best order-blind"),
                                                       ("oracle_order_blind", "true risk w/o order term"))
                if summary.get(key)}
    rows = "\n".join(
        f"| {name} | {value:.4f} | " + (f"[{ci[name][0]:.4f}, {ci[name][1]:.4f}]" if name in ci else "-") + " |"
        + "".join(f" {c[name]:.4f} |" if name in c else " - |" for c in ceilings.values())
        for name, value in summary["metrics"].items()
    )
    header = "| metric | value | 95% CI |" + "".join(f" {title} |" for title in ceilings)
    rule = "|---|---|---|" + "---|" * len(ceilings)
    facts = [
        ("Run", summary["run_id"]), ("Model", summary["model"]), ("Task", summary["task"]),
        ("Parameters (total / trainable)", f"{summary['params_total']:,} / {summary['params_trainable']:,}"),
        ("Steps", summary["steps"]), ("Device", summary["device"] + (
            f" ({summary['device_name']})" if summary.get("device_name") else "")),
        ("Wall time", f"{summary['wall_time_s'] / 60:.1f} min"),
        ("GPU-hours", f"{summary['gpu_hours']:.3f}" if summary.get("gpus") else f"0 (ran on {summary['device']})"),
        ("Cost", f"${summary['cost']:.2f} at ${summary['price_per_hour']}/h" if summary.get("cost") is not None
         else "not recorded (set runtime.price_per_hour)"),
        ("Data", summary["data"]["description"]),
        ("Dataset", summary["data"].get("dataset", "-")),
        ("Examples (patients) train / tuning / held-out", " / ".join(
            f"{summary['data'].get('examples', summary['data']['subjects'])[s]:,} ({summary['data']['subjects'][s]:,})"
            for s in ("train", "tuning", "held_out"))),
        *([("Codes (data.codes)", f"include {', '.join(c['include']) or 'all'}; exclude "
            f"{', '.join(c['exclude']) or 'none'}: {c['events_dropped']:,} of {c['events']:,} events dropped")]
          if (c := summary["data"].get("codes")) else []),
        *([("Visits (data.visit)", v)] if (v := summary["data"].get("visit")) else []),
        *([("Coverage (median [10th percentile] share of each example's history the model reads)",
            describe_coverage(summary["data"]["coverage"]))] if summary["data"].get("coverage") else []),
        ("Vocabulary", f"{summary['data']['vocab_size']:,} tokens" + (
            f" (numeric values as tokens: {bins['codes']:,} codes in up to {bins['bins']} quantile bins each)"
            if (bins := summary["data"].get("numeric_bins")) else "")),
        ("Data fingerprint (dataset, splits, held-out subjects)", summary.get("data_fingerprint", "-")),
        ("Spec fingerprint", summary["spec_fingerprint"]),
        ("torch / CUDA", f"{summary['versions']['torch']} / {summary['versions'].get('cuda') or 'none'}"),
        *([("Hardware", describe_hardware(summary["hardware"]))] if summary.get("hardware") else []),
        ("Git commit", summary.get("git_commit") or "unknown"),
    ]
    if summary.get("labels_used"):  # every label a choice was made with, as the k-shot protocol counts them
        used = summary["labels_used"]
        facts.append(("Labels used (train / tuning)", " / ".join(
            f"{used[s]['examples']:,} examples of {used[s]['patients']:,} patients" for s in ("train", "tuning"))))
    if "init_from" in summary:
        facts.append(("Fine-tuned from", f"{summary['init_from']['uri']} (sha256 {summary['init_from']['sha256']})"))
    if isinstance(summary.get("baseline", {}).get("features"), list):  # count baselines: their hand-made inputs
        facts.append(("Features", "; ".join(summary["baseline"]["features"])))
    if summary.get("best_step") is not None:  # supervised runs: the weights of the best tuning evaluation
        facts.append(("Held-out scored with", f"step {summary['best_step']}'s weights, the best tuning "
                      f"{summary['best_metric']} ({summary['best_tuning_value']:.4f})"
                      + (" (patience ran out: stopped early)" if summary.get("stopped_early") else "")))
    if summary.get("underfit"):
        facts.append(("Underfit", f"the best tuning {summary.get('best_metric') or 'evaluation'} was the last one "
                      f"(step {summary['steps']}): the run ended still improving; a longer one may do better"))
    probe = f"\n{OrderProbe(**summary['order_probe']).sentence()}\n" if summary.get("order_probe") else ""
    warning = coverage_warning(summary["data"].get("coverage"))
    warning = f"\n**Warning: {warning}**\n" if warning else ""
    probe += unigram_sentence(summary["metrics"])
    if summary.get("family_probe"):
        counted = summary.get("family_probe_cooccurrence")
        probe += f"\n{FamilyProbe(**summary['family_probe']).sentence(FamilyProbe(**counted) if counted else None)}\n"
    fact_rows = "\n".join(f"| {k} | {v} |" for k, v in facts)
    images = "\n\n".join(f"### {PLOT_CAPTIONS.get(p.rsplit('/', 1)[-1], p)}\n\n![{p}]({p})" for p in plots)
    return f"""# {summary['run_id']}

Held-out metrics ({summary['data'].get('examples', summary['data']['subjects'])['held_out']:,} examples of
{summary['data']['subjects']['held_out']:,} patients never seen in training or tuning; 95% bootstrap intervals
over patients):
{warning}
{header}
{rule}
{rows}
{probe}
| | |
|---|---|
{fact_rows}

## Plots

{images}

## Model card

- **Data**: {summary['data']['description']}. Splits are by patient; the vocabulary is built from the
  training split only. Runs with the same data fingerprint ({summary.get('data_fingerprint', '-')}) used the
  same dataset, splits and held-out subjects and can be compared with `ehrseq compare`.
- **Task**: {summary['task']}{f" (labels {summary['labels']})" if summary.get('labels') else ""}.
- **Intended use**: research comparison of EHR sequence models; not for clinical decisions.
- **Limitations**: synthetic or de-identified cohorts differ from any real population; metrics carry the
  uncertainty shown above and should be compared with paired tests across runs on the same held-out set.
"""


def unigram_sentence(metrics: dict[str, float]) -> str:
    """MLM runs: the model's held-out figures read against a code-frequency predictor's on the same masked tokens
    (empty for other tasks)."""
    if "mlm_unigram_loss" not in metrics:
        return ""
    gap = metrics["mlm_unigram_loss"] - metrics["mlm_loss"]
    return (f"\nA code-frequency (unigram) predictor, which guesses each masked code from its share of the training "
            f"split's codes, scores perplexity {metrics['mlm_unigram_perplexity']:.1f} and accuracy "
            f"{metrics['mlm_unigram_accuracy']:.4f} on the same masked tokens, against the model's "
            f"{metrics['perplexity']:.1f} and {metrics['mlm_accuracy']:.4f}: the model is {abs(gap):.3f} nats per "
            f"token {'better' if gap > 0 else 'worse'} than frequencies alone.\n")
