"""The family probe in a real pretraining's bundle: MLM and Med2Vec on the family cohort report it (summary.json,
SUMMARY.md); a cohort without a planted family gets none."""

import json

import pytest
from rich.console import Console

from ehrseq.data.synthetic import FAMILY
from ehrseq.data.vocab import Vocabulary
from ehrseq.evaluation.family_probe import FamilyProbe
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec


def pretraining(tmp_path, kind: str, preset: str) -> dict:
    """A 2-step pretraining of `kind` on 3,000 patients of `preset`; its summary.json."""
    spec = JobSpec.model_validate({
        "name": f"{preset}-{kind}", "seed": 1,
        "data": {"num_patients": 3000, "min_code_count": 1, "synthetic": {"preset": preset}},
        "model": {"kind": "behrt" if kind == "mlm" else "med2vec"}, "task": {"kind": kind},
        "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "device": "cpu", "min_steps": 0},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})
    assert run_job(spec, Console(quiet=True)) == 0
    return json.loads((tmp_path / "runs" / f"{preset}-{kind}" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlm", "med2vec"])
def test_a_pretraining_on_the_family_cohort_reports_its_probe(tmp_path, kind):
    summary = pretraining(tmp_path, kind, "family")
    probe, counted = FamilyProbe(**summary["family_probe"]), FamilyProbe(**summary["family_probe_cooccurrence"])
    folder = tmp_path / "runs" / f"family-{kind}"
    vocab = Vocabulary.load(folder / "vocab.json")
    assert probe.chance == pytest.approx(sum(c in FAMILY for c in vocab.counts) / len(vocab.counts))
    assert 0.0 <= probe.family_share <= 1.0 and probe.neighbours == 5
    assert counted.chance == probe.chance and counted.found  # 2,400 training patients' counts reveal it
    assert probe.sentence(counted) in (folder / "SUMMARY.md").read_text()


@pytest.mark.slow
def test_no_probe_without_a_planted_family(tmp_path):
    summary = pretraining(tmp_path, "mlm", "order")
    assert "family_probe" not in summary
    assert "Family probe" not in (tmp_path / "runs" / "order-mlm" / "SUMMARY.md").read_text()
