"""MLM runs and the token cache: a second run reuses it, a fresh work dir downloads it from storage, a damaged
one is rebuilt, and the figures are those of the patient-object path."""

import json
from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

import ehrseq.data.token_cache as tc
from ehrseq.data.cohort import SPLITS, dataset_folder
from ehrseq.data.meds_io import read_meds_dataset
from ehrseq.data.pretrain_cut import PretrainCut
from ehrseq.reports.provenance import data_fingerprint, dataset_identity
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec
from ehrseq_runner.storage.token_caches import PREFIX

from support.helpers import SMALL_SPEC
from support.reference_batches import rows
from support.reference_histories import build_vocabulary, encode_patient, pretraining_rows
from support.reference_splits import patients_by_split

TINY = ["data.num_patients=300", "data.max_seq_len=48", "train.max_steps=12", "train.log_every=1",
        "train.eval_every=6"]


def spec_for(storage: str, work, name="r", *extra):
    return load_spec(SMALL_SPEC, [*TINY, f"name={name}", f"storage.uri={storage}", f"runtime.work_dir={work}",
                                  *extra])


def run(spec) -> dict:
    assert run_job(spec, Console(stderr=True, quiet=True)) == 0
    return spec


def summary(root, name) -> dict:
    return json.loads((root / name / "summary.json").read_text())


def losses(root, name) -> list[float]:
    lines = (root / name / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


def no_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the token cache was rebuilt")

    monkeypatch.setattr(tc, "build_token_cache", refuse)


def test_reused_then_downloaded_with_the_same_losses(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run(spec_for(f"file://{runs}", tmp_path / "pod1", "a"))
    first = summary(runs, "a")["data"]["token_cache"]
    assert first["how"] == "built" and (runs / PREFIX / f"tokens-{first['key']}" / "manifest.json").is_file()

    no_builds(monkeypatch)
    run(spec_for(f"file://{runs}", tmp_path / "pod1", "b"))  # same machine: the local cache
    run(spec_for(f"file://{runs}", tmp_path / "pod2", "c"))  # a fresh machine: from storage
    assert [summary(runs, n)["data"]["token_cache"]["how"] for n in "bc"] == ["reused", "downloaded"]
    assert {summary(runs, n)["data"]["token_cache"]["key"] for n in "abc"} == {first["key"]}
    assert losses(runs, "a") == losses(runs, "b") == losses(runs, "c") and len(losses(runs, "a")) == 12
    assert len({summary(runs, n)["data_fingerprint"] for n in "abc"}) == 1


def test_a_damaged_stored_cache_is_rebuilt_with_a_warning_and_stored_again(tmp_path, capsys):
    runs = tmp_path / "runs"
    run(spec_for(f"file://{runs}", tmp_path / "pod1", "a"))
    (stored,) = (runs / PREFIX).iterdir()
    codes = stored / "codes.npy"
    raw = bytearray(codes.read_bytes())
    raw[-1] ^= 0xFF
    codes.write_bytes(bytes(raw))

    spec = spec_for(f"file://{runs}", tmp_path / "pod2", "b")
    assert run_job(spec, Console(stderr=True, width=400)) == 0
    err = capsys.readouterr().err
    assert "could not be used" in err and "checksum" in err
    assert summary(runs, "b")["data"]["token_cache"]["how"] == "built"
    tc.read_manifest(stored)  # stored again, intact
    assert losses(runs, "a") == losses(runs, "b")


def test_the_token_cache_path_gives_the_object_paths_tokens_and_fingerprint(tmp_path):
    """The shard-wise cut and token cache equal the table cut and the object path, tokens and fingerprint."""
    spec = spec_for(f"file://{tmp_path}/runs", tmp_path / "w")
    data = prepare_data(spec, tmp_path / "datasets")
    folder = dataset_folder("synthetic", None, 300, spec.seed, tmp_path / "datasets", spec.data.synthetic.params())
    dataset = read_meds_dataset(folder)
    cut = PretrainCut.of("cut", folder)  # MLM reads labelled patients before their prediction times
    patients = patients_by_split(replace(dataset, data=pretraining_rows(dataset.data, cut)))
    vocab = build_vocabulary(patients["train"], min_count=spec.data.min_code_count)
    assert data.vocab == vocab
    for split in SPLITS:
        expected = [encode_patient(p, vocab, spec.data.max_seq_len) for p in patients[split]]
        assert rows(data.encoded[split]) == expected
    held_out = data.encoded["held_out"].subject_ids
    assert data.identity == dataset_identity(dataset)
    assert data.fingerprint(held_out) == data_fingerprint(dataset_identity(dataset), dataset.splits,
                                                          np.asarray(held_out))


@pytest.mark.slow
def test_a_fresh_pod_downloads_the_token_cache_from_s3(s3_env, tmp_path, monkeypatch):
    storage = "s3://ehrseq-test/token-cache"
    run(spec_for(storage, tmp_path / "pod1", "a"))
    no_builds(monkeypatch)
    run(spec_for(storage, tmp_path / "pod2", "b"))
    from ehrseq_runner.storage.uri import open_storage

    store = open_storage(storage)
    facts = json.loads(store.get_bytes("b/summary.json"))["data"]["token_cache"]
    assert facts["how"] == "downloaded"
    assert any(k.startswith(f"{PREFIX}/tokens-{facts['key']}/") for k in store.list(PREFIX))


def binary_spec(storage: str, work, name: str, *extra):
    return load_spec(SMALL_SPEC.parent / "behrt_binary.yaml",
                     [*TINY, "train.epochs=null", "train.evals_per_epoch=null", "train.patience=null", f"name={name}",
                      f"storage.uri={storage}", f"runtime.work_dir={work}", *extra])


def test_supervised_runs_share_one_examples_cache_across_budgets_replicates_and_pods(tmp_path, monkeypatch):
    """A ladder's rungs: the first builds the examples cache, every other budget and replicate reuses it, a fresh
    work dir downloads it; each run's examples are the cache's (the budget picks among them)."""
    runs = tmp_path / "runs"
    run(binary_spec(f"file://{runs}", tmp_path / "pod1", "all"))
    first = summary(runs, "all")["data"]["token_cache"]
    assert first["how"] == "built" and (runs / PREFIX / f"examples-{first['key']}" / "labels.parquet").is_file()

    no_builds(monkeypatch)
    run(binary_spec(f"file://{runs}", tmp_path / "pod1", "k40", "train.label_budget=40"))
    run(binary_spec(f"file://{runs}", tmp_path / "pod1", "k40r1", "train.label_budget=40", "train.replicate=1"))
    run(binary_spec(f"file://{runs}", tmp_path / "pod2", "k40-pod2", "train.label_budget=40"))
    facts = {n: summary(runs, n)["data"]["token_cache"] for n in ("k40", "k40r1", "k40-pod2")}
    assert [f["how"] for f in facts.values()] == ["reused", "reused", "downloaded"]
    assert {f["key"] for f in facts.values()} == {first["key"]}
    assert summary(runs, "k40")["data"]["subjects"]["train"] == 40
    assert summary(runs, "k40")["label_rows"] == summary(runs, "all")["label_rows"]
    assert losses(runs, "k40") == losses(runs, "k40-pod2") != losses(runs, "k40r1")
    held_out = {n: summary(runs, n)["data_fingerprint"] for n in ("all", "k40", "k40r1")}
    assert len(set(held_out.values())) == 1  # the same held-out examples for every rung
