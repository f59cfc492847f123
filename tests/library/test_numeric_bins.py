"""data.numeric_bins: numeric values as quantile-binned tokens, fitted on the training split, the same on the object
path and the token cache, saved with the vocabulary, and a control where only the values carry the outcome."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrseq.data import token_cache as tc
from ehrseq.data.cohort import synthetic_dataset
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.numeric import BinFitter, NumericBins
from ehrseq.data.synthetic import PRESETS
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.spec.job_spec import load_spec

from support.reference_batches import rows
from support.reference_histories import bin_table, build_vocabulary, encode_patient, fit_table
from support.reference_splits import patients_by_split

REPO = Path(__file__).resolve().parents[2]
LAB = "LOINC//2160-0"  # one of the synthetic cohort's labs (creatinine)


def test_values_go_to_their_quantile_bin():
    bins = NumericBins(4, {"LAB": (1.0, 2.0, 3.0)})
    names = ["LAB", "DX", "LAB2"]
    code = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    value = np.array([0.5, 1.0, 2.5, 9.0, np.nan, 7.0, np.nan, 4.0])
    new_names, new_code = bins.apply(names, code, value)
    got = [new_names[i] for i in new_code]
    # a value on a cut point goes up; no value, or a code without bins, keeps the plain code
    assert got == ["LAB//Q1", "LAB//Q2", "LAB//Q3", "LAB//Q4", "LAB", "DX", "DX", "LAB2"]
    assert sorted(new_names) == sorted(set(got))  # only what occurs


def test_the_fit_places_cut_points_at_training_quantiles_whatever_the_order():
    rng = np.random.default_rng(0)
    value = rng.normal(size=4000)
    code = rng.integers(0, 2, 4000)
    subject = rng.integers(0, 500, 4000)
    value[code == 1] = np.round(value[code == 1])  # few distinct values: repeated cut points merge
    whole = BinFitter(10)
    whole.add(["A", "B"], code, value, subject)
    bins = whole.result()
    assert bins.edges["A"] == tuple(np.quantile(value[code == 0], np.arange(1, 10) / 10).tolist())
    assert bins.edges["B"] == tuple(np.unique(np.quantile(value[code == 1], np.arange(1, 10) / 10)).tolist())
    assert len(bins.edges["B"]) < 9

    with_inf = BinFitter(10)  # an infinite value takes no part in the fit
    with_inf.add(["A", "B"], np.r_[code, 0], np.r_[value, np.inf], np.r_[subject, 1])
    assert with_inf.result() == bins

    parts = BinFitter(10)  # shards in another order, with the names in another order: the same bins
    perm = rng.permutation(4000)
    for chunk in np.array_split(perm, 3):
        parts.add(["B", "A"], 1 - code[chunk], value[chunk], subject[chunk])
    assert parts.result() == bins


def test_the_sample_stays_bounded_and_its_cut_points_close():
    rng = np.random.default_rng(1)
    fitter = BinFitter(4, sample_size=2000)
    every = []
    for _ in range(10):  # ten shards of 5,000 values
        value = rng.exponential(size=5000)
        every.append(value)
        fitter.add(["A"], np.zeros(5000, np.int64), value, rng.integers(0, 10**9, 5000))
        assert len(fitter.value) <= 2000
    exact = np.quantile(np.concatenate(every), [0.25, 0.5, 0.75])
    assert np.allclose(fitter.result().edges["A"], exact, rtol=0.1)


def test_the_vocabulary_carries_its_bins():
    bins = NumericBins(5, {"LAB": (1.0, 2.5)})
    vocab = Vocabulary({"LAB//Q1": 3, "DX": 2}, bins)
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.bins == bins and again.numeric_bins == 5
    assert again != Vocabulary({"LAB//Q1": 3, "DX": 2})
    plain = Vocabulary({"DX": 2})
    assert "numeric_bins" not in json.loads(plain.to_json()) and plain.numeric_bins == 0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return synthetic_dataset(300, 3, tmp_path_factory.mktemp("meds"), PRESETS["order"])


def object_path(ds: Path, num_bins: int, max_len: int):
    """read_meds_dataset -> bins fitted on the training split -> binned codes -> patients -> vocabulary -> tokens."""
    data = read_meds_dataset(ds)
    train = np.array([s for s, split in data.splits.items() if split == "train"], np.int64)
    bins = fit_table(data.data, train, num_bins)
    patients = patients_by_split(replace(data, data=bin_table(data.data, bins)))
    vocab = Vocabulary(build_vocabulary(patients["train"]).counts, bins)
    return vocab, {s: [encode_patient(p, vocab, max_len) for p in ps] for s, ps in patients.items()}


def test_the_token_cache_bins_as_the_object_path_does(cohort, tmp_path):
    data = pq.read_table(sorted((cohort / "data").glob("*.parquet"))[0])
    many = tmp_path / "many"  # 15 shards: the streamed fit sees the values a shard at a time
    write_meds_dataset(data, pq.read_table(cohort / "metadata" / "subject_splits.parquet"), many, "many",
                       shard_size=20)
    manifest = tc.build_token_cache(many, tmp_path / "cache", 64, 1, numeric_bins=5)
    want_vocab, want = object_path(many, 5, 64)
    got_vocab, got = tc.load_token_cache(tmp_path / "cache")
    assert got_vocab == want_vocab and got_vocab.itos == want_vocab.itos
    assert any(code.startswith(f"{LAB}//Q") for code in got_vocab.itos) and LAB not in got_vocab.stoi
    for split, encoded in want.items():
        assert rows(got[split]) == encoded, split
    assert manifest["settings"]["numeric_bins"] == 5 and "numeric_bins" in manifest["seconds"]
    # the key: bins change it; 0 is the key of before bins existed; a given vocabulary brings its own bins
    assert len({tc.cache_key(many, 64, 1), tc.cache_key(many, 64, 1, numeric_bins=5),
                tc.cache_key(many, 64, 1, numeric_bins=10)}) == 3
    tc.build_token_cache(many, tmp_path / "given", 64, 1, vocab=got_vocab)
    assert tc.load_token_cache(tmp_path / "given")[0].bins == got_vocab.bins


def test_a_fine_tune_must_bin_as_its_pretraining_did(cohort, tmp_path):
    spec = load_spec(REPO / "jobs" / "gbm_binary.yaml", [f"data.path={cohort}", "data.source=meds"])
    vocab = Vocabulary({"DX": 2}, NumericBins(10, {"LAB": (1.0,)}))
    with pytest.raises(InputError, match=r"data.numeric_bins: 0, but the vocabulary of model.init_from was built "
                                         r"with 10.*set data.numeric_bins: 10"):
        prepare_data(spec, tmp_path, vocab=vocab)


def test_one_bin_is_refused(cli):
    result = cli("validate", str(REPO / "jobs" / "behrt_small.yaml"), "--set", "data.numeric_bins=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.numeric_bins" in result.stderr and "use 0 (off) or 2 or more" in result.stderr


def lab_labels(ds: Path, dest: Path) -> int:
    """Labels whose answer is in a lab's values alone: is the mean creatinine before the prediction time high?
    (Patients without one are left out.) Returns the number of labelled patients."""
    data = read_meds_dataset(ds).data
    lab = data.filter(pc.equal(data.column("code"), LAB)).sort_by([("subject_id", "ascending")])
    lab_subject, lab_time = lab.column("subject_id").to_numpy(), lab.column("time").cast(pa.int64()).to_numpy()
    lab_value = lab.column("numeric_value").to_numpy()
    labels = pq.read_table(ds / "labels" / "outcome_within_365d.parquet")
    subject, when = labels.column("subject_id").to_numpy(), labels.column("prediction_time").cast(pa.int64())
    mean = np.full(len(subject), np.nan)
    for i, (a, b) in enumerate(zip(np.searchsorted(lab_subject, subject, "left"),
                                   np.searchsorted(lab_subject, subject, "right"), strict=True)):
        before = lab_time[a:b] < when[i].as_py()
        if before.any():
            mean[i] = lab_value[a:b][before].mean()
    keep = ~np.isnan(mean)
    z = (mean[keep] - np.median(mean[keep])) / mean[keep].std()
    outcome = z + 0.3 * np.random.default_rng(0).normal(size=len(z)) > 0
    pq.write_table(pa.table({"subject_id": pa.array(subject[keep]),
                             "prediction_time": labels.column("prediction_time").filter(pa.array(keep)),
                             "boolean_value": pa.array(outcome)}), dest)
    return int(keep.sum())


@pytest.mark.slow
def test_control_values_drive_the_outcome_and_only_binned_values_see_it(cli, tmp_path):
    """The known answer: the count baseline without values cannot beat chance by much; with the values binned
    into tokens it must, with intervals that do not overlap. Both runs see the same patients."""
    ds = synthetic_dataset(5000, 0, tmp_path / "meds")
    assert lab_labels(ds, tmp_path / "lab_high.parquet") > 800
    summaries = {}
    for bins in (0, 10):
        result = cli("run", str(REPO / "jobs" / "gbm_binary.yaml"), "--set", f"name=lab-{bins}", "--set",
                     "data.source=meds", "--set", f"data.path={ds}", "--set",
                     f"task.labels_path={tmp_path / 'lab_high.parquet'}", "--set", f"data.numeric_bins={bins}",
                     "--set", f"storage.uri=file://{tmp_path}/runs")
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[bins] = json.loads((tmp_path / "runs" / f"lab-{bins}" / "summary.json").read_text())
    off, on = summaries[0], summaries[10]
    assert off["data"]["subjects"] == on["data"]["subjects"]
    assert on["metrics"]["auroc"] > 0.85 and off["metrics"]["auroc"] < 0.7
    assert on["metrics_ci"]["auroc"][0] > off["metrics_ci"]["auroc"][1]
    assert on["data"]["numeric_bins"]["bins"] == 10 and "numeric_bins" not in off["data"]
    assert "quantile bins" in (tmp_path / "runs" / "lab-10" / "SUMMARY.md").read_text()
    stored = Vocabulary.from_json((tmp_path / "runs" / "lab-10" / "vocab.json").read_text())
    assert stored.numeric_bins == 10 and LAB in stored.bins.edges
