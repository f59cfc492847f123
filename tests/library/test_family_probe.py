"""The pretraining control's family probe: high when family vectors cluster, at chance when they do not, and
frequency-matched codes as the yardstick."""

import json

import numpy as np
import pytest
from rich.console import Console

from ehrseq.data.synthetic import FAMILY
from ehrseq.data.vocab import Vocabulary
from ehrseq.evaluation.family_probe import FamilyProbe, family_probe, probe_vocabulary
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec


def vocabulary(clustered: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = [f"F{i}" for i in range(10)] + [f"R{i}" for i in range(30)] + [f"C{i}" for i in range(60)]
    counts = {c: 600 if c[0] in "FR" else 50_000 for c in codes}
    vectors = rng.normal(size=(len(codes), 16))
    if clustered:
        vectors[:10] = rng.normal(size=16) * 3 + rng.normal(size=(10, 16)) * 0.3  # one direction for the family
    return vectors, codes, counts


def test_a_learned_family_is_found_and_an_unlearned_one_sits_at_chance():
    family = [f"F{i}" for i in range(10)]
    found = family_probe(*vocabulary(clustered=True), family)
    assert found.family_share == 1.0 and found.chance == 0.1
    blind = family_probe(*vocabulary(clustered=False), family)
    assert blind.family_share < 0.3 and blind.matched_share < 0.6  # R codes (same counts) are the yardstick
    assert family_probe(*vocabulary(clustered=True), ["F0", "missing"]) is None


def test_a_models_token_vectors_are_probed_without_the_special_tokens():
    vectors, codes, counts = vocabulary(clustered=True)
    family = {f"F{i}": FAMILY[i] for i in range(10)}  # the synthetic family's names
    vocab = Vocabulary({family.get(c, c): n for c, n in counts.items()})
    rows = {family.get(c, c): v for c, v in zip(codes, vectors, strict=True)}
    specials = np.random.default_rng(1).normal(size=(len(Vocabulary.SPECIALS), 16)) * 3  # far from everything
    token_vectors = np.vstack([specials, [rows[c] for c in vocab.itos[len(Vocabulary.SPECIALS):]]])  # (V, C)
    probe = probe_vocabulary(token_vectors, vocab)
    assert probe == family_probe(vectors, [family.get(c, c) for c in codes], vocab.counts, FAMILY)
    assert probe.family_share == 1.0 and probe.chance == 0.1


def test_the_sentence_says_found_only_above_both_yardsticks():
    assert FamilyProbe(5, 0.6, 0.2, 0.1).sentence().endswith(": found.")
    assert FamilyProbe(5, 0.095, 0.2, 0.108).sentence().endswith(": not found.")
    assert FamilyProbe(5, 0.3, 0.4, 0.1).sentence().endswith(": not found.")  # rare codes drifting together
    assert "no frequency-matched codes" in FamilyProbe(5, 0.6, None, 0.1).sentence()



def pretraining(tmp_path, kind: str, preset: str) -> dict:
    """A 2-step pretraining of `kind` on 400 patients of `preset`; its summary.json."""
    spec = JobSpec.model_validate({
        "name": f"{preset}-{kind}", "seed": 1,
        "data": {"num_patients": 400, "min_code_count": 1, "synthetic": {"preset": preset}},
        "model": {"kind": "behrt" if kind == "mlm" else "med2vec"}, "task": {"kind": kind},
        "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "device": "cpu", "min_steps": 0},
        "storage": {"uri": f"file://{tmp_path}/runs"}, "runtime": {"work_dir": str(tmp_path / "work")}})
    assert run_job(spec, Console(quiet=True)) == 0
    return json.loads((tmp_path / "runs" / f"{preset}-{kind}" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlm", "med2vec"])
def test_a_pretraining_on_the_family_cohort_reports_its_probe(tmp_path, kind):
    probe = FamilyProbe(**pretraining(tmp_path, kind, "family")["family_probe"])
    folder = tmp_path / "runs" / f"family-{kind}"
    vocab = Vocabulary.load(folder / "vocab.json")
    assert probe.chance == pytest.approx(sum(c in FAMILY for c in vocab.counts) / len(vocab.counts))
    assert 0.0 <= probe.family_share <= 1.0 and probe.neighbours == 5
    assert probe.sentence() in (folder / "SUMMARY.md").read_text()


@pytest.mark.slow
def test_no_probe_without_a_planted_family(tmp_path):
    summary = pretraining(tmp_path, "mlm", "order")
    assert "family_probe" not in summary
    assert "Family probe" not in (tmp_path / "runs" / "order-mlm" / "SUMMARY.md").read_text()
