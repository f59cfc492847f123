"""SUMMARY.md: the run's headline figures and plots, readable on GitHub."""

from __future__ import annotations

from typing import Any


def render_summary_md(summary: dict[str, Any], plots: list[str]) -> str:
    ci = summary.get("metrics_ci", {})
    oracle = summary.get("oracle", {})  # synthetic cohorts: the true risk scored the same way
    rows = "\n".join(
        f"| {name} | {value:.4f} | " + (f"[{ci[name][0]:.4f}, {ci[name][1]:.4f}]" if name in ci else "-") + " |"
        + (f" {oracle[name]:.4f} |" if name in oracle else (" - |" if oracle else ""))
        for name, value in summary["metrics"].items()
    )
    header = "| metric | value | 95% CI |" + (" oracle |" if oracle else "")
    rule = "|---|---|---|" + ("---|" if oracle else "")
    facts = [
        ("Run", summary["run_id"]), ("Model", summary["model"]), ("Task", summary["task"]),
        ("Parameters (total / trainable)", f"{summary['params_total']:,} / {summary['params_trainable']:,}"),
        ("Steps", summary["steps"]), ("Device", summary["device"]),
        ("Wall time", f"{summary['wall_time_s'] / 60:.1f} min"),
        ("Data", summary["data"]["description"]),
        ("Subjects train / tuning / held-out", " / ".join(str(summary["data"]["subjects"][s])
                                                         for s in ("train", "tuning", "held_out"))),
        ("Vocabulary", f"{summary['data']['vocab_size']:,} tokens"),
        ("Spec fingerprint", summary["spec_fingerprint"]),
    ]
    if "init_from" in summary:
        facts.append(("Fine-tuned from", f"{summary['init_from']['uri']} (sha256 {summary['init_from']['sha256']})"))
    fact_rows = "\n".join(f"| {k} | {v} |" for k, v in facts)
    images = "\n\n".join(f"![{p}]({p})" for p in plots)
    return f"""# {summary['run_id']}

Held-out metrics ({summary['data']['subjects']['held_out']} subjects never seen in training or tuning;
95% bootstrap intervals over subjects):

{header}
{rule}
{rows}

| | |
|---|---|
{fact_rows}

{images}

## Model card

- **Data**: {summary['data']['description']}. Splits are by patient; the vocabulary is built from the
  training split only.
- **Task**: {summary['task']}.
- **Intended use**: research comparison of EHR sequence models; not for clinical decisions.
- **Limitations**: synthetic or de-identified cohorts differ from any real population; metrics carry the
  uncertainty shown above and should be compared with paired tests across runs on the same held-out set.
"""
