"""Med2Vec: visit pooling and targets by hand, planted clusters recovered, exact resume, fine-tuning."""

import itertools
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors import safe_open

from ehrseq.data.synthetic import code_clusters
from ehrseq.data.tokenize import STATIC_SEGMENT
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.models.med2vec import Med2VecConfig, Med2VecForPrediction, Med2VecForPretraining
from ehrseq.reports.embeddings import EMBEDDINGS, PLOT, cosine_similarity
from ehrseq.tasks.med2vec import Med2VecTask
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.job.pretrained import fetch_pretrained
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import check_supported, load_spec

from support.reference_batches import collate
from support.reference_histories import EncodedPatient

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "jobs" / "med2vec.yaml"
CLS, SEP, UNK = Vocabulary.CLS, Vocabulary.SEP, Vocabulary.UNK


def spec_for(tmp_path, name, *extra, path=SPEC):
    return load_spec(path, [f"name={name}", f"storage.uri=file://{tmp_path}/runs", f"runtime.work_dir={tmp_path}/work",
                            "train.device=cpu", "checkpoint.interval_seconds=1000", *extra])


def run(spec):
    return run_job(spec, Console(stderr=True, quiet=True))


def records(folder):
    volatile = {"time", "tokens_per_s", "seconds_per_step"}
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


# A static code (6), then three visits: [7, 8, UNK] at 600 months, [9] at 610, [10, 11, 12] at 620 (UNK is not a
# code).
PATIENT = EncodedPatient(1, codes=[CLS, 6, 7, 8, UNK, SEP, 9, SEP, 10, 11, 12, SEP],
                         ages=[600] * 6 + [610] * 2 + [620] * 4,
                         segments=[0, STATIC_SEGMENT] + [0] * 4 + [1] * 2 + [0] * 4,
                         positions=[0] * 6 + [1] * 2 + [2] * 4)


def test_visits_pool_their_codes_and_skip_special_tokens():
    model = Med2VecForPretraining(Med2VecConfig(vocab_size=13, code_size=4, visit_size=3, window=1)).med2vec
    b = collate([PATIENT, EncodedPatient(2, [CLS, 9, SEP], [300] * 3, [0] * 3, [0] * 3)])
    visits = model(b.codes, b.ages, b.segments, b.positions, b.attention_mask)
    assert visits.vectors.shape == (2, 3, 3)
    assert visits.mask.tolist() == [[True, True, True], [True, False, False]]
    assert visits.ages.tolist() == [[600, 610, 620], [300, 0, 0]]
    W, bias = model.code.weight, model.code_bias
    gaps = [0, 10, 10]  # months since the previous visit
    for t, codes in enumerate([[7, 8], [9], [10, 11, 12]]):  # u_t = ReLU(W_c x_t + b_c); v_t = ReLU(W_v [u_t; d_t])
        u = torch.relu(W[codes].sum(0) + bias)
        d_t = torch.tensor([visits.ages[0, t] / 1440.0, math.log1p(gaps[t])])
        torch.testing.assert_close(visits.vectors[0, t], torch.relu(model.visit(torch.cat([u, d_t]))))
    torch.testing.assert_close(visits.static[0], torch.relu(W[6] + bias))  # static code: u_s, not in a visit
    torch.testing.assert_close(visits.static[1], torch.relu(bias))


def test_code_pairs_and_visit_targets_are_counted_as_the_paper_defines_them():
    model = Med2VecForPretraining(Med2VecConfig(vocab_size=13, window=1, num_negatives=2))
    b = collate([PATIENT])
    code_sum, pairs, visit_sum, targets = model(b.codes, b.ages, b.segments, b.positions, b.attention_mask,
                                                torch.full((1, len(PATIENT.codes), 2), 9))
    assert pairs.tolist() == [2 * 1 + 0 + 3 * 2]  # ordered pairs of distinct codes within each visit
    assert targets.tolist() == [1 + (2 + 3) + 1]  # visit 0 -> visit 1; visit 1 -> visits 0, 2; visit 2 -> visit 1
    two = Med2VecForPretraining(Med2VecConfig(vocab_size=13, window=2, num_negatives=2))
    wide = two(b.codes, b.ages, b.segments, b.positions, b.attention_mask, torch.full((1, 12, 2), 9))[3]
    assert wide.tolist() == [(1 + 3) + (2 + 3) + (2 + 1)]
    assert code_sum.item() > 0 and visit_sum.item() > 0


def test_noise_codes_come_from_the_generator_and_are_never_special():
    vocab = Vocabulary({f"C{i}": 100 - i for i in range(20)})
    task = Med2VecTask(vocab, num_negatives=5)
    b = collate([PATIENT])
    draws = task._negatives(b, torch.Generator().manual_seed(1))
    assert torch.equal(draws, task._negatives(b, torch.Generator().manual_seed(1)))
    assert not torch.equal(draws, task._negatives(b, torch.Generator().manual_seed(2)))
    many = task._negatives(collate([PATIENT] * 50), torch.Generator().manual_seed(3))
    assert many.min() >= vocab.num_special and many.max() < len(vocab)


def test_med2vec_spec_combinations():
    for model, task, message in [("med2vec", "mlm", "task.kind med2vec"),
                                 ("behrt", "med2vec", "needs model.kind med2vec"),
                                 ("bag_of_codes", "med2vec", "needs model.kind med2vec")]:
        with pytest.raises(InputError, match=message):
            check_supported(load_spec(SPEC, ["name=x", f"model.kind={model}", f"task.kind={task}"]))


# -- end to end -------------------------------------------------------------------------------------------------
PRETRAIN = ["data.num_patients=600", "data.max_seq_len=64", "train.max_steps=80", "train.lr=1e-2",
            "train.eval_every=0", "train.log_every=50"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("med2vec")
    spec = spec_for(tmp, "m2v", *PRETRAIN)
    assert run(spec) == 0
    return tmp, tmp / "runs" / "m2v"


def test_codes_of_a_planted_cluster_are_nearer_each_other_than_random_pairs(pretrained):
    _, folder = pretrained
    with safe_open(folder / EMBEDDINGS, "pt") as f:
        vectors, codes = f.get_tensor("embeddings").numpy(), json.loads(f.metadata()["codes"])
    assert (vectors >= 0).all()  # ReLU code vectors
    sim = cosine_similarity(vectors)
    cluster = code_clusters()
    members = [[i for i, c in enumerate(codes) if cluster.get(c) == k] for k in range(12)]
    within = np.mean([sim[i, j] for m in members for i, j in itertools.combinations(m, 2)])
    pairs = np.random.default_rng(0).integers(0, len(codes), (5000, 2))
    random_pairs = np.mean([sim[i, j] for i, j in pairs if i != j])
    print(f"cluster coherence: within-cluster cosine {within:.3f}, random pairs {random_pairs:.3f}")
    assert within > random_pairs + 0.3, (within, random_pairs)
    summary = json.loads((folder / "summary.json").read_text())
    assert PLOT in summary["plots"] and (folder / PLOT).stat().st_size > 10_000
    top = next(c for c in codes if c in cluster)  # the most frequent cluster code (codes come by frequency)
    assert top in summary["code_neighbours"] and top in (folder / "SUMMARY.md").read_text()
    nearest = summary["code_neighbours"][top][0][0]
    assert cluster.get(nearest) == cluster[top]  # its nearest neighbour is from its own cluster


def test_binary_fine_tuning_from_a_med2vec_run(pretrained):
    tmp, folder = pretrained
    uri = f"file://{folder}"
    spec = spec_for(tmp, "tuned", *PRETRAIN[:2], f"model.init_from={uri}", "train.max_steps=20", "train.eval_every=0",
                    path=REPO / "jobs" / "med2vec_binary.yaml")
    assert run(spec) == 0
    summary = json.loads((tmp / "runs" / "tuned" / "summary.json").read_text())
    assert 0.0 <= summary["metrics"]["auroc"] <= 1.0 and "auroc" in summary["metrics_ci"]
    source = fetch_pretrained(uri, kind="med2vec")
    assert (summary["init_from"]["uri"], summary["init_from"]["sha256"]) == (uri, source.sha256)
    assert summary["init_from"]["pretraining_data"]["mode"] == "cut"  # Med2Vec pretraining is cut too
    model = Med2VecForPrediction(Med2VecConfig.preset("small", vocab_size=len(source.vocab)))
    model.med2vec.load_state_dict(source.encoder)  # the keys fit the downstream encoder exactly
    with pytest.raises(InputError, match="no behrt encoder"):
        fetch_pretrained(uri)


TINY = ["data.num_patients=300", "data.max_seq_len=32", "train.max_steps=12", "train.log_every=1",
        "train.eval_every=8", "train.batch_size=16"]


def test_sigterm_then_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert run(spec_for(straight, "r", *TINY)) == 0
    spec = spec_for(tmp_path, "r", *TINY)
    original, calls = Med2VecTask.training_loss, {"n": 0}

    def training_loss(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # honoured after this step
        return original(self, *args)

    with monkeypatch.context() as mp:
        mp.setattr(Med2VecTask, "training_loss", training_loss)
        assert run(spec) == EXIT_PREEMPTED
    assert json.loads((tmp_path / "runs/r/status.json").read_text())["durable_step"] == 5
    assert run(spec) == 0
    assert records(tmp_path / "runs/r") == records(straight / "runs/r")  # every loss and tuning metric
    for name in ("model.safetensors", EMBEDDINGS):
        assert (tmp_path / "runs/r" / name).read_bytes() == (straight / "runs/r" / name).read_bytes(), name
