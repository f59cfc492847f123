"""The result bundle at the end of a run: weights, held-out metrics with CIs, plots, summaries."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from safetensors.torch import save_model
from torch import nn

from ehrseq.evaluation.binary import calibration_curve
from ehrseq.evaluation.bootstrap import bootstrap_ci
from ehrseq.evaluation.meds_dev import meds_dev_result
from ehrseq.evaluation.next_visit import NextVisitPredictions
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions
from ehrseq.reports.compare import PREDICTIONS
from ehrseq.reports.plots import (
    plot_calibration,
    plot_km_risk_groups,
    plot_loss,
    plot_lr_throughput,
    plot_roc_pr,
    plot_tuning_metrics,
)
from ehrseq.reports.summary import render_summary_md
from ehrseq.tasks.mlm import MLMEvaluation
from ehrseq_runner.spec.job_spec import JobSpec
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.sync import retry_transient

ADAPTER = "adapter.safetensors"  # LoRA runs: adapters and head, in place of model.safetensors
MEDS_DEV_RESULT = "meds_dev_result.json"  # binary and survival runs: the MEDS-DEV result record


def write_bundle(run: RunFolder, work: Path, spec: JobSpec, model: nn.Module | None,
                 held_out: MLMEvaluation | BinaryPredictions | SurvivalPredictions,
                 records: list[dict[str, Any]], facts: dict[str, Any],
                 warn: Callable[[str], None] = lambda message: None, extra_files: Sequence[str] = (),
                 summary_md_extra: str = "", stop: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Writes the bundle locally, then copies it to the run folder; returns summary.json's content.

    `model` None (the non-neural baselines) writes no weights; no training records, no plots. Supervised
    tasks also write their held-out predictions, from which every figure in summary.json can be recomputed,
    and binary and survival tasks the MEDS-DEV result record of them (meds_dev_result.json). `stop` raises at a
    stop request (StopRequest.check): called between the phases and before each upload, summary.json last.
    """
    stop()
    files = []
    if model is not None:
        save_model(model, str(work / "model.safetensors"))
        files.append("model.safetensors")
    label = f"{spec.model.kind}-{spec.model.size}" if spec.model.kind == "behrt" else spec.model.kind
    title = f"{spec.resolved_run_id}: {label}, {spec.task.kind}"
    plot_names = [p.relative_to(work).as_posix() for p in bundle_plots(work / "plots", title, spec.task.kind,
                                                                        records, held_out)]
    if isinstance(held_out, (BinaryPredictions, SurvivalPredictions, NextVisitPredictions)):
        (work / "predictions").mkdir(parents=True, exist_ok=True)
        pq.write_table(held_out.to_table(), work / PREDICTIONS)
        files.append(PREDICTIONS)
    if isinstance(held_out, (BinaryPredictions, SurvivalPredictions)):  # survival: its labels at the horizon
        record = meds_dev_result(held_out.to_table(), facts["data"]["dataset_name"], spec.task.label_name,
                                 f"ehrseq/{label}", facts["versions"]["ehrseq"])
        (work / MEDS_DEV_RESULT).write_text(json.dumps(record, indent=2))
        files.append(MEDS_DEV_RESULT)
    files += [f for f in extra_files if not f.startswith("plots/")]  # written under `work` by the caller
    plot_names += [f for f in extra_files if f.startswith("plots/")]
    stop()
    summary = {
        "run_id": spec.resolved_run_id, "model": label, "task": spec.task.kind,
        "metrics": held_out.metrics(),
        "metrics_ci": bootstrap_ci(held_out.metrics, len(held_out.subject_ids), seed=spec.seed,
                                   groups=held_out.subject_ids),
        **facts, "plots": plot_names,
    }
    if isinstance(held_out, BinaryPredictions):  # observed vs predicted rate in 10 probability bins
        summary["calibration"] = calibration_curve(held_out.labels, held_out.probabilities)
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    (work / "SUMMARY.md").write_text(render_summary_md(summary, plot_names) + summary_md_extra)
    for name in [*files, *plot_names, "SUMMARY.md", "summary.json"]:
        stop()
        retry_transient(lambda name=name: run.put_file(name, work / name),
                        on_retry=lambda e, wait: warn(f"uploading the bundle: {e}; retrying in {wait:.0f} s"))
    return summary


LOSS_LABELS = {"mlm": "masked-token cross-entropy (nats)", "binary": "binary cross-entropy (nats)",
               "survival": "Cox partial negative log-likelihood (nats)"}


def bundle_plots(folder: Path, title: str, task: str, records: list[dict[str, Any]],
                 held_out: MLMEvaluation | BinaryPredictions | SurvivalPredictions) -> list[Path]:
    """Training curves (runs with steps), then what the held-out predictions show for the task."""
    plots = [plot_loss(records, folder / "loss.png", title, loss_label=LOSS_LABELS.get(task, "training loss")),
             plot_lr_throughput(records, folder / "lr_throughput.png", title),
             plot_tuning_metrics(records, folder / "tuning_metrics.png", title)] if records else []
    if isinstance(held_out, BinaryPredictions):
        plots += [plot_roc_pr(held_out.labels, held_out.probabilities, folder / "roc_pr.png", title),
                  plot_calibration(held_out.labels, held_out.probabilities, folder / "calibration.png", title)]
    elif isinstance(held_out, SurvivalPredictions):
        plots.append(plot_km_risk_groups(held_out.times, held_out.events, held_out.risks,
                                         folder / "km_risk_groups.png", title, horizon=held_out.horizon))
    return [p for p in plots if p is not None]
