"""From data settings to what a model trains on: `prepare(DataSettings) -> PreparedData`.

The one entry point to a job's data, for the runner and a notebook alike: the dataset folder (synthetic cohorts
and Synthea conversions written once under `cache_dir`), the numeric value bins, the vocabulary, every split
tokenised, a supervised task's labels with each history cut before its prediction time, the label budget, and
the dataset's identity (its name and event count, hashed with the splits into the data fingerprint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrseq.data.budget import num_patients, subsample_rows, take
from ehrseq.data.codes import CodeFilter
from ehrseq.data.cohort import dataset_folder
from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.labels import LabelReport
from ehrseq.data.pretrain_cut import PretrainCut
from ehrseq.data.stream import SPLITS
from ehrseq.data.supervised import (
    LabelledSplit,
    NextVisitSplit,
    read_task_labels,
    task_label_files,
)
from ehrseq.data.synthetic import PRESETS, SyntheticParams
from ehrseq.data.token_cache import (
    CacheRemote,
    LabelledTask,
    describe_passed_over,
    load_examples,
    load_histories,
    load_next_visit,
    load_token_cache,
    passed_over_counts,
    read_manifest,
    token_cache,
)
from ehrseq.data.visits import DAY_VISITS, VisitRule
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.reports.provenance import data_fingerprint, dataset_name, identity_of, read_splits_mapping
from ehrseq.seeding import LABEL_BUDGET, TUNING_BUDGET, derive_seed

if TYPE_CHECKING:
    from ehrseq.data.token_arrays import TokenArrays

TASKS = ("mlm", "med2vec", "next_visit", "binary", "survival")
PRETRAINING = ("mlm", "med2vec")  # self-supervised: they read labelled patients as `pretrain_data` says
EXAMPLE_TASKS = ("binary", "survival")  # one example per label row: batches carry example ids


@dataclass(frozen=True)
class DataSettings:
    """What a job's data depends on (a job spec's `data` block, its task's labels and its label budget)."""

    source: str = "synthetic"  # synthetic | meds | synthea-csv | fhir
    path: str | None = None  # the dataset (meds) or Synthea output (fhir, synthea-csv) folder
    num_patients: int = 2000  # synthetic only
    seed: int = 0  # the synthetic cohort, its splits and the label budget's sample
    synthetic: SyntheticParams = PRESETS["default"]
    max_seq_len: int = 128
    min_code_count: int = 5
    numeric_bins: int = 0
    codes: CodeFilter = field(default_factory=CodeFilter)
    task: str = "mlm"  # one of TASKS
    labels: str | None = None  # binary/survival: the label task's name (under the dataset, or inside labels_path)
    labels_path: str | None = None  # binary/survival: MEDS label parquet anywhere
    pretrain_data: str = "cut"  # mlm/med2vec: cut | pool | all (ehrseq.data.pretrain_cut)
    label_budget: int | None = None  # k labelled patients in the training and the tuning split
    replicate: int = 0  # picks the label budget's sample
    visits: VisitRule = DAY_VISITS  # what a visit is (ehrseq.data.visits), for every model alike

    @property
    def source_name(self) -> str:
        """How messages name the data: its path, else its source."""
        return self.path or self.source


@dataclass
class PreparedData:
    vocab: Vocabulary
    encoded: dict[str, TokenArrays]  # split -> its patients' (examples') tokens, from the token cache
    identity: str  # the dataset's name and event count (provenance.dataset_identity)
    name: str  # metadata/dataset.json's dataset_name
    splits: dict[int, str]  # every subject of the splits file -> its split (the data fingerprint hashes them)
    # supervised tasks: labels (next_visit: the last visit's codes), row-aligned with `encoded`
    labelled: dict[str, LabelledSplit] | dict[str, NextVisitSplit] | None = None
    folder: Path | None = None  # the MEDS dataset's folder (labels/ and oracle/ live there)
    label_report: LabelReport | None = None  # binary/survival: what happened to each label row
    token_cache: dict[str, object] | None = None  # {"key", "name", "how": reused|downloaded|built, "seconds", ...}
    # the whole training split's histories (cut), before any label budget: codes are not labels, so the count
    # baselines' columns come from all of them
    train_histories: HistoryArrays | None = None
    # pretraining (mlm, med2vec): what it read of labelled patients (ehrseq.data.pretrain_cut), recorded in the
    # summary with the data fingerprint so a fine-tune can check it
    pretrain_cut: PretrainCut | None = None
    # token-cache runs: per split, the median and 10th percentile share of each example's days and (day, code)
    # events before its prediction time that the max_seq_len window keeps (ehrseq.data.stream.coverage)
    coverage: dict[str, Any] | None = None
    codes: dict[str, Any] | None = None  # data.codes: its patterns and the events they dropped (None: all codes)

    def fingerprint(self, held_out_ids: np.ndarray) -> str:
        return data_fingerprint(self.identity, self.splits, held_out_ids)

    def patients(self) -> dict[str, int]:
        """Distinct patients per split (a patient may be several examples: one per prediction time)."""
        return {s: num_patients(self.labelled[s]) if self.labelled else len(self.encoded[s]) for s in SPLITS}

    def labels_used(self) -> dict[str, dict[str, int]]:
        """Labelled examples and patients each fitting split used: at a label budget k, at most k patients each."""
        return {s: {"examples": len(self.labelled[s]), "patients": num_patients(self.labelled[s])}
                for s in ("train", "tuning")} if self.labelled else {}

    def describe_token_cache(self) -> str:
        """One log line: was the dataset tokenised again, or were the tokens reused?"""
        facts = self.token_cache
        how = {"reused": "reused (no re-tokenising)", "downloaded": "downloaded from storage (no re-tokenising)",
               "built": "built and stored for later runs"}[str(facts["how"])]
        return (f"token cache {facts['name']}: {how}; {facts['tokens']:,} tokens from {facts['events']:,} events "
                f"in {facts['seconds']:.1f} s")


def prepare(settings: DataSettings, cache_dir: Path, vocab: Vocabulary | None = None,
            remote: CacheRemote | None = None, warn: Callable[[str], None] | None = None) -> PreparedData:
    """The dataset, the vocabulary (training split only, unless given) and every split tokenised.

    Every task but next_visit streams the dataset into a token cache under `cache_dir` (reused by every later run
    on the same data, labels and settings: every fine-tune, label budget, replicate and ladder rung; kept in
    `remote` so a fresh machine downloads it): pretraining (mlm, med2vec) whole patients, binary and survival one
    example per label row; sequence models read its tokens, the count baselines the whole histories stored beside
    them; next_visit its own examples (each patient's history before its last visit, that visit's codes the
    target). Supervised tasks keep only labelled subjects, with histories cut strictly before the prediction
    time. With a label budget k, the training and the tuning split are each a
    seeded, stratified k patients (every model kind gets the same ones; ehrseq.data.budget); the vocabulary and
    the count features' code columns, which use no labels, still come from the whole training split.
    Pretraining reads labelled patients as `pretrain_data` says (cut before their prediction times by default),
    bins, vocabulary and tokens alike; numeric bins of a supervised task are fitted on values before the
    prediction times.
    """
    s = settings
    if vocab is not None and vocab.numeric_bins != s.numeric_bins:
        raise InputError(f"data.numeric_bins: {s.numeric_bins}, but the vocabulary of model.init_from was "
                         f"built with {vocab.numeric_bins} (a fine-tuned model reads its pretraining's tokens): set "
                         f"data.numeric_bins: {vocab.numeric_bins}")
    folder = dataset_folder(s.source, s.path, s.num_patients, s.seed, cache_dir, s.synthetic)
    cut = PretrainCut.of(s.pretrain_data, folder, s.labels_path, s.labels) if s.task in PRETRAINING else None
    return _from_token_cache(s, folder, cache_dir, vocab, remote, warn, cut)


def budget_sample(settings: DataSettings, labelled: dict | None) -> dict[str, np.ndarray]:
    """At label budget k: the rows of the k training and the k tuning patients this replicate keeps (each its
    own seeded, stratified sample); {} without a budget."""
    k = settings.label_budget
    if not labelled or k is None:
        return {}
    seeds = {"train": LABEL_BUDGET, "tuning": TUNING_BUDGET}
    return {s: subsample_rows(labelled[s], k, derive_seed(settings.seed, purpose, settings.replicate), s)
            for s, purpose in seeds.items()}


def _from_token_cache(s: DataSettings, folder: Path, cache_dir: Path, vocab: Vocabulary | None,
                      remote: CacheRemote | None, warn: Callable[[str], None] | None,
                      cut: PretrainCut | None) -> PreparedData:
    start = time.perf_counter()
    task = None
    if s.task in EXAMPLE_TASKS:  # the label rows are read each time: their files are part of the key
        labels, report = read_task_labels(folder, s.labels, s.task, s.labels_path)
        task = LabelledTask(s.task, labels, report, task_label_files(folder, s.labels, s.labels_path))
    cache, how = token_cache(folder, cache_dir, s.max_seq_len, s.min_code_count, vocab, source=s.source_name,
                             warn=warn, remote=remote, numeric_bins=s.numeric_bins, task=task, cut=cut,
                             codes=s.codes or None, next_visit=s.task == "next_visit", visits=s.visits)
    manifest = read_manifest(cache, verify=False)  # (token_cache verified it)
    vocab, encoded = load_token_cache(cache, verify=False)
    labelled, report = load_examples(cache, encoded, load_histories(cache, vocab)) if task else (None, None)
    train_histories = labelled["train"].histories if task else None
    if s.task == "next_visit":
        labelled = load_next_visit(cache, vocab, encoded)
    for split, rows in budget_sample(s, labelled).items():
        labelled[split], encoded[split] = take(labelled[split], rows), encoded[split].select(rows)
    name = dataset_name(folder)
    passed_over = passed_over_counts(manifest)  # what tokenising left out or changed, said once per run
    if warn and (message := describe_passed_over(passed_over)):
        warn(message)
    facts = {"key": manifest["key"], "name": cache.name, "how": how, "seconds": round(time.perf_counter() - start, 3),
             "events": manifest["counts"]["events"], "tokens": manifest["counts"]["tokens"], **passed_over}
    return PreparedData(vocab, encoded, identity_of(name, manifest["counts"]["events"]), name,
                        read_splits_mapping(folder), labelled, folder, report, token_cache=facts,
                        train_histories=train_histories, pretrain_cut=cut,
                        coverage=manifest["coverage"], codes=manifest.get("codes"))
