"""task.kind next_visit: labels derived from the visits without leakage, metrics against brute force and
scikit-learn, an end-to-end fine-tuning run whose summary the predictions file reproduces, and refusals."""

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, roc_auc_score
from test_supervised_runs import make_spec, run, spec_dir

from ehrseq.data.cohort import SPLITS
from ehrseq.data.meds_io import MedsDataset
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.evaluation.next_visit import NextVisitPredictions, recall_at_k
from ehrseq.evaluation.predictions import predictions_from_table
from ehrseq_runner.spec.job_spec import JobSpec, SpecError, check_supported, load_spec

from support.helpers import assert_summary_matches_predictions
from support.reference_batches import rows
from support.reference_histories import (
    Visit,
    assert_equal_histories,
    bin_table,
    build_vocabulary,
    encode_patient,
    fit_table,
)
from support.reference_splits import load_dataset, next_visit_splits


def meds(rows):
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "code": pa.array([r[2] for r in rows], pa.string()),
                     "numeric_value": pa.array([None] * len(rows), pa.float32())})


def t(day, hour, minute=0):
    return datetime(2020, 1, day, hour, minute)


ROWS = [
    (1, datetime(1980, 1, 1), "MEDS_BIRTH"), (1, None, "STATIC//X"),
    (1, t(2, 10), "A"), (1, t(2, 15), "B"), (1, t(2, 15), "A"),  # visit 1 (one day): A, B
    (1, t(9, 8), "C"),  # visit 2
    (1, t(20, 9), "D"), (1, t(20, 9), "A"), (1, t(20, 23, 59), "E"), (1, t(20, 23, 59), "D"),  # last: D, A, E
    (2, t(3, 9), "A"),  # a single visit: nothing to predict from
    (3, t(4, 9), "B"), (3, t(5, 0, 1), "C"), (3, t(5, 7), "B"),  # last: C, B (from one minute past midnight)
    (4, t(6, 9), "A"), (4, t(7, 9), "E"),
]


def test_labels_are_the_last_visits_codes_and_that_day_never_reaches_the_input():
    dataset = MedsDataset(meds(ROWS), {1: "train", 2: "tuning", 3: "tuning", 4: "held_out"})
    splits = next_visit_splits(dataset, SPLITS)
    assert [s.subject_ids.tolist() for s in splits.values()] == [[1], [3], [4]]  # subject 2 has one visit
    train = splits["train"]
    assert train.next_codes == [("D", "A", "E")]
    assert train.prediction_times.tolist() == [t(20, 9)]
    patient = train.patients[0]
    assert patient.birth == datetime(1980, 1, 1)
    assert patient.visits == (Visit(t(2, 10), ("A", "B")), Visit(t(9, 8), ("C",)))  # nothing of day 20
    tuning = splits["tuning"]
    assert tuning.next_codes == [("C", "B")] and tuning.prediction_times.tolist() == [t(5, 0, 1)]
    assert tuning.patients[0].visits == (Visit(t(4, 9), ("B",)),)
    assert splits["held_out"].next_codes == [("E",)]

    no_tuning = MedsDataset(meds(ROWS), {1: "train", 2: "tuning", 4: "held_out"})
    with pytest.raises(InputError, match="'tuning' split has no subjects with two or more visits"):
        next_visit_splits(no_tuning, SPLITS)


def predictions(targets, scores, codes=None):
    S, V = np.shape(targets)
    return NextVisitPredictions(np.arange(S), np.zeros(S, "datetime64[us]"), codes or [f"c{j}" for j in range(V)],
                                np.asarray(targets, bool), np.asarray(scores, np.float32))


def test_metrics_hand_computed():
    targets = [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    scores = [[0.9, 0.2, 0.1], [0.25, 0.8, 0.25], [0.25, 0.1, 0.4]]
    m = predictions(targets, scores).metrics()
    # micro: 3 positives x 6 negatives; 0.9 and 0.8 beat all 6; 0.25 beats 0.2, 0.1, 0.1, ties two 0.25s: 4
    assert m["auroc_micro"] == pytest.approx(16 / 18)
    # per code: a 1.0 (0.9 vs 0.25, 0.25), b 1.0 (0.8 vs 0.2, 0.1), c 0.5 (0.25 vs 0.1 win, vs 0.4 loss)
    assert m["auroc_macro"] == pytest.approx(2.5 / 3)
    # ranked: P, P (precision 1, 1), N at 0.4, then {P, N, N} at 0.25: precision 3/6 -> AP = (1 + 1 + 1/2) / 3
    assert m["ap_micro"] == pytest.approx(2.5 / 3)
    assert m["recall_at_10"] == m["recall_at_20"] == 1.0  # 3 codes: all are in the top 10
    p = np.asarray(scores, np.float32).astype(float)
    y = np.asarray(targets, float)
    expected_bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert m["bce"] == pytest.approx(expected_bce, rel=1e-6)
    # top 1: subject 0 finds a (1/1), subject 1 finds b (1/2), subject 2 has no true code (left out)
    assert recall_at_k(np.asarray(targets, bool), np.asarray(scores), 1)[:2].tolist() == [1.0, 0.5]
    assert np.isnan(recall_at_k(np.asarray(targets, bool), np.asarray(scores), 1)[2])
    # top 2 of subject 1: b, then a and c tie at 0.25 and the lower column (a, not true) wins: still 1/2
    assert recall_at_k(np.asarray(targets, bool), np.asarray(scores), 2)[1] == 0.5


def brute_auroc(y, s):
    pos, neg = s[y], s[~y]
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg])


def brute_ap(y, s):
    ap, seen = 0.0, 0
    for threshold in sorted(set(s.tolist()), reverse=True):
        at_or_above = s >= threshold
        tp = int((y & at_or_above).sum())
        ap += (tp - seen) / y.sum() * tp / at_or_above.sum()
        seen = tp
    return ap


def brute_metrics(targets, scores):
    y, s = targets, scores.astype(float)
    per_code = [brute_auroc(y[:, j], s[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    out = {"auroc_micro": brute_auroc(y.ravel(), s.ravel()), "auroc_macro": np.mean(per_code),
           "ap_micro": brute_ap(y.ravel(), s.ravel())}
    for k in (10, 20):
        recalls = [sum(y[i, j] for j in sorted(range(y.shape[1]), key=lambda j, i=i: (-s[i, j], j))[:k]) / y[i].sum()
                   for i in range(len(y)) if y[i].any()]
        out[f"recall_at_{k}"] = np.mean(recalls)
    return out


def test_metrics_match_brute_force_and_sklearn_on_tied_scores_and_resamples():
    rng = np.random.default_rng(0)
    for trial in range(12):
        S, V = 30, 25
        targets = rng.random((S, V)) < rng.uniform(0.05, 0.3)
        targets[:, 0] = False  # a code never recorded: no macro AUROC for it, negatives for micro
        scores = np.round(rng.random((S, V)) + targets * 0.3, 1).astype(np.float32)  # coarse: many ties
        p = predictions(targets, scores)
        rows = None if trial % 2 == 0 else rng.integers(0, S, S)  # a bootstrap resample, with repeats
        y, s = (targets, scores) if rows is None else (targets[rows], scores[rows])
        got = p.metrics(rows)
        assert {k: got[k] for k in brute_metrics(y, s)} == pytest.approx(brute_metrics(y, s))
        both = y.any(axis=0) & ~y.all(axis=0)
        assert got["auroc_micro"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
        assert got["auroc_macro"] == pytest.approx(roc_auc_score(y[:, both], s[:, both], average="macro"))
        assert got["ap_micro"] == pytest.approx(average_precision_score(y.ravel(), s.ravel()))
        assert got["bce"] == pytest.approx(predictions(y, s).metrics()["bce"])


def test_predictions_file_round_trip_and_bad_files():
    rng = np.random.default_rng(1)
    p = predictions(rng.random((5, 4)) < 0.4, rng.random((5, 4)), codes=["ICD10//I21", "A", "B", "C"])
    table = p.to_table()
    assert table.schema.field("predicted_probabilities").type == pa.list_(pa.float32())
    again = predictions_from_table(table)
    assert isinstance(again, NextVisitPredictions) and again.codes == p.codes
    assert again.metrics() == p.metrics()
    assert table["codes"].to_pylist()[0] == [c for c, hit in zip(p.codes, p.targets[0], strict=True) if hit]
    with pytest.raises(InputError, match="schema metadata 'codes'"):
        NextVisitPredictions.from_table(table.replace_schema_metadata({}))
    short = table.set_column(3, "predicted_probabilities", pa.array([[0.5]] * 5, pa.list_(pa.float32())))
    with pytest.raises(InputError, match="needs 4 values"):
        NextVisitPredictions.from_table(short)


def test_fine_tuned_next_visit_run_summary_equals_what_the_predictions_give(tmp_path):
    pretrain = make_spec(tmp_path, "pre", "behrt", "mlm").model_copy(update={"train": JobSpec.model_fields[
        "train"].default.model_copy(update={"max_steps": 2, "batch_size": 16, "device": "cpu", "eval_every": 0})})
    run(pretrain)
    source = f"file://{tmp_path}/runs/pre"
    spec = make_spec(tmp_path, "nv", "behrt", "next_visit", init_from=source)
    summary = run(spec)
    folder = spec_dir(spec)
    assert json.loads((folder / "status.json").read_text())["state"] == "completed"
    assert set(summary["metrics"]) == {"auroc_micro", "auroc_macro", "ap_micro", "recall_at_10", "recall_at_20",
                                       "bce"}
    assert summary["init_from"]["uri"] == source

    vocab = Vocabulary.load(folder / "vocab.json")
    assert vocab == Vocabulary.load(spec_dir(pretrain) / "vocab.json")  # the pretrained run's vocabulary
    codes = vocab.itos[vocab.num_special:]
    assert load_file(folder / "model.safetensors")["head.weight"].shape[0] == len(codes)

    table = pq.read_table(folder / "predictions" / "held_out.parquet")
    assert table.column_names == ["subject_id", "prediction_time", "codes", "predicted_probabilities"]
    assert json.loads(table.schema.metadata[b"codes"]) == codes
    assert_summary_matches_predictions(table, summary, spec.seed)

    # the file's true codes are each held-out subject's last visit, as far as the vocabulary knows its codes
    dataset = load_dataset("synthetic", None, spec.data.num_patients, spec.seed, tmp_path / "work" / "datasets")
    held_out = next_visit_splits(dataset, SPLITS)["held_out"]
    truth = {int(s): (t, [c for c in codes if c in set(nc)])
             for s, t, nc in zip(held_out.subject_ids, held_out.prediction_times, held_out.next_codes, strict=True)}
    for s, when, true_codes in zip(*(table[c].to_pylist() for c in ("subject_id", "prediction_time", "codes")),
                                   strict=True):
        assert (np.datetime64(when, "us"), true_codes) == truth[s]
    probabilities = np.array(table["predicted_probabilities"].to_pylist())
    assert ((probabilities > 0) & (probabilities < 1)).all()  # also: no NaN


@pytest.mark.parametrize("model", ["bag_of_codes", "cox"])
def test_baselines_refuse_next_visit(tmp_path, model, cli):
    spec = make_spec(tmp_path, "x", "behrt", "next_visit").model_copy(
        update={"model": JobSpec.model_fields["model"].default.model_copy(update={"kind": model})})
    with pytest.raises(InputError, match=f"model.kind: {model} cannot predict a next visit's codes"):
        check_supported(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    with pytest.raises(SpecError, match="cannot predict a next visit"):
        load_spec(path)
    result = cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"model.kind: {model} cannot predict a next visit's codes" in result.stdout + result.stderr


def test_next_visit_takes_no_label_file(tmp_path):
    spec = make_spec(tmp_path, "x", "behrt", "next_visit")
    spec.task.labels = "outcome_within_365d"
    with pytest.raises(InputError, match="task.labels: 'outcome_within_365d' is not used by next_visit"):
        check_supported(spec)


@pytest.mark.parametrize(("max_len", "min_count", "numeric_bins"), [(32, 2, 0), (8, 1, 4)])
def test_the_token_cache_gives_the_object_paths_next_visit_examples(tmp_path, max_len, min_count, numeric_bins):
    """next_visit from the token cache equals the object path (next_visit_splits -> Vocabulary.build ->
    encode_patient): the same subjects, prediction times, target codes, vocabulary, tokens and whole histories."""
    from dataclasses import replace

    from ehrseq.data.cohort import synthetic_dataset
    from ehrseq.data.meds_io import read_meds_dataset
    from ehrseq.data.prepared import DataSettings, prepare
    from ehrseq.data.synthetic import PRESETS
    from ehrseq.data.token_cache import load_histories

    dataset = read_meds_dataset(synthetic_dataset(300, 2, tmp_path / "data", PRESETS["order"]))
    data = prepare(DataSettings(num_patients=300, seed=2, synthetic=PRESETS["order"], task="next_visit",
                                max_seq_len=max_len, min_code_count=min_count, numeric_bins=numeric_bins),
                   tmp_path / "data")
    if numeric_bins:  # fitted on the whole training split, as the vocabulary: no target is a label
        train = np.array([s for s, split in dataset.splits.items() if split == "train"], np.int64)
        assert data.vocab.bins == fit_table(dataset.data, train, numeric_bins)
        dataset = replace(dataset, data=bin_table(dataset.data, data.vocab.bins))
    want = next_visit_splits(dataset, SPLITS)
    vocab = Vocabulary({c: n for c, n in build_vocabulary(want["train"].patients).counts.items() if n >= min_count},
                       data.vocab.bins)
    assert data.vocab == vocab and data.vocab.itos == vocab.itos
    histories = load_histories(tmp_path / "data" / data.token_cache["name"], vocab)
    for split in SPLITS:
        got, w = data.labelled[split], want[split]
        assert np.array_equal(got.subject_ids, w.subject_ids) and np.array_equal(got.prediction_times,
                                                                                 w.prediction_times)
        assert got.next_codes == [tuple(c if c in vocab.stoi else "[UNK]" for c in codes) for codes in w.next_codes]
        assert rows(data.encoded[split]) == [encode_patient(p, vocab, max_len) for p in w.patients]
        assert_equal_histories(histories[split], w.patients, vocab)
