"""The data-preparation benchmark script runs end to end on a tiny cohort (the real figures come from larger N)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_benchmark_script_runs(tmp_path):
    out = tmp_path / "prep.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_prep.py"
    subprocess.run([sys.executable, str(script), "--num-patients", "300", "--old-num-patients", "300", "--chunk", "120",
                    "--examples", "--work", str(tmp_path), "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    cache, objects = report["token_cache"], report["objects"]
    assert cache["counts"]["events"] > 300 * 10 and cache["counts"]["patients"] == 300
    assert {k: objects["counts"][k] for k in ("events", "patients", "tokens")} == \
        {k: cache["counts"][k] for k in ("events", "patients", "tokens")}
    assert cache["peak_rss_mb"] > 0 and cache["events_per_s"] > 0
    # the examples cache holds what the object path makes of the binary task: same examples and tokens
    examples, labelled = report["examples_cache"], report["objects_examples"]
    assert {k: labelled["counts"][k] for k in ("events", "patients", "tokens")} == \
        {k: examples["counts"][k] for k in ("events", "patients", "tokens")}
    assert 0 < examples["counts"]["patients"] <= examples["counts"]["label_rows"] and labelled["peak_rss_mb"] > 0
