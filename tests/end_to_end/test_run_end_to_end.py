import json

import pytest
import yaml
from safetensors.torch import load_file

from support.helpers import SMALL_SPEC


@pytest.mark.slow
def test_small_job_runs_end_to_end_and_leaves_a_complete_run_folder(cli, tmp_path):
    args = ["run", str(SMALL_SPEC), "--set", "train.max_steps=60", "--set", "train.log_every=1",
            "--set", "data.num_patients=400", "--set", "train.eval_every=20"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "behrt-small-mlm"
    for name in ["spec.yaml", "status.json", "metrics.jsonl", "summary.json", "SUMMARY.md", "vocab.json",
                 "model.safetensors", "plots/loss.png", "plots/lr_throughput.png"]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name

    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["durable_step"] == 60
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["max_steps"] == 60

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 61))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3  # clearly falling
    assert [r["step"] for r in records if r["split"] == "tuning"] == [20, 40, 60]

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) == {"mlm_loss", "mlm_accuracy", "perplexity", "mlm_unigram_loss",
                                       "mlm_unigram_accuracy", "mlm_unigram_perplexity"}
    for name, (low, high) in summary["metrics_ci"].items():
        assert low <= summary["metrics"][name] <= high
    assert summary["params_total"] == summary["params_trainable"] > 100_000
    weights = load_file(run / "model.safetensors")
    assert sum(t.numel() for t in weights.values()) >= summary["params_total"] - 1  # tied decoder stored once
    assert "![plots/loss.png](plots/loss.png)" in (run / "SUMMARY.md").read_text()

    status_cmd = cli("status", "--json", f"file://{run}")
    assert status_cmd.returncode == 0 and json.loads(status_cmd.stdout)["state"] == "completed"
    assert "behrt-small-mlm" in cli("list", "file://./runs").stdout
    again = cli(*args)
    assert again.returncode == 0 and "already completed" in again.stderr
    missing = cli("status", "file://./runs/nope")
    assert missing.returncode == 2 and "no such run" in missing.stderr
