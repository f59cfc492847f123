"""From a spec to what training needs: the dataset tokenised, the vocabulary, the freshly initialised trainer.

Shared by the job (rank 0), every other torchrun rank (job/distributed.py) and the checks that build a trainer
outside a run (`ehrseq verify-resume`, `ehrseq bench`): the same spec always gives the same data and weights.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ehrseq.data.budget import num_patients, subsample_rows, take
from ehrseq.data.codes import CodeFilter
from ehrseq.data.cohort import SPLITS, dataset_folder, patients_by_split
from ehrseq.data.labels import LabelReport
from ehrseq.data.meds_io import MedsDataset, read_meds_dataset
from ehrseq.data.numeric import NumericBins, bin_table, fit_table
from ehrseq.data.patients import Patient
from ehrseq.data.pretrain_cut import PretrainCut
from ehrseq.data.stream import training_vocabulary
from ehrseq.data.supervised import (
    LabelledSplit,
    NextVisitSplit,
    encode_examples,
    label_arrays,
    labelled_splits,
    next_visit_splits,
    read_task_labels,
    task_label_files,
)
from ehrseq.data.token_arrays import TokenArrays
from ehrseq.data.token_cache import (
    CacheRemote,
    LabelledTask,
    load_examples,
    load_token_cache,
    read_manifest,
    token_cache,
)
from ehrseq.data.tokenize import EncodedPatient, encode_patient
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq.models.lora import LoraSettings, apply_lora
from ehrseq.models.med2vec import Med2VecConfig, Med2VecForPrediction, Med2VecForPretraining
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.reports.provenance import data_fingerprint, dataset_identity, dataset_name, identity_of, read_splits_mapping
from ehrseq.seeding import LABEL_BUDGET, REPLICATE, TUNING_BUDGET, derive_seed
from ehrseq.tasks.med2vec import Med2VecTask
from ehrseq.tasks.mlm import MLMTask
from ehrseq.tasks.next_visit import NextVisitTask
from ehrseq.tasks.supervised import SupervisedTask
from ehrseq.training.length import run_length
from ehrseq.training.trainer import TrainConfig, Trainer
from ehrseq_runner.job.pretrained import Pretrained, load_encoder
from ehrseq_runner.spec.job_spec import SUPERVISED, JobSpec

EXAMPLE_TASKS = ("binary", "survival")  # one example per label row: batches carry example ids
PRETRAINING = ("mlm", "med2vec")  # self-supervised tasks: they read labelled patients as task.pretrain_data says
SEQUENCE_MODELS = ("behrt", "med2vec")  # models that read tokens (the count baselines read whole histories)
# the tuning metric that picks the best evaluation (early stopping, the kept checkpoint, and for supervised
# tasks the weights held-out is scored with), and whether higher is better
MONITOR = {"mlm": ("mlm_loss", False), "med2vec": ("med2vec_loss", False), "binary": ("auroc", True),
           "survival": ("c_index", True), "next_visit": ("bce", False)}


def training_seed(spec: JobSpec) -> int:
    """Initialisation, batch order, dropout: `seed` itself for replicate 0, else one derived per replicate
    (the cohort and its splits always come from `seed`)."""
    return spec.seed if spec.train.replicate == 0 else derive_seed(spec.seed, REPLICATE, spec.train.replicate)


@dataclass
class PreparedData:
    vocab: Vocabulary
    encoded: dict[str, list[EncodedPatient]] | dict[str, TokenArrays]  # split -> encoded patients
    identity: str  # the dataset's name and event count (provenance.dataset_identity)
    name: str  # metadata/dataset.json's dataset_name
    splits: dict[int, str]  # every subject of the splits file -> its split (the data fingerprint hashes them)
    # supervised tasks: labels (next_visit: the last visit's codes), histories cut before them
    labelled: dict[str, LabelledSplit] | dict[str, NextVisitSplit] | None = None
    folder: Path | None = None  # the MEDS dataset's folder (labels/ and oracle/ live there)
    label_report: LabelReport | None = None  # binary/survival: what happened to each label row
    token_cache: dict[str, object] | None = None  # {"key", "name", "how": reused|downloaded|built, "seconds", ...}
    # the whole training split's histories (cut), before any label budget: codes are not labels, so the count
    # baselines' columns come from all of them (object path only)
    train_histories: list[Patient] | None = None
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


def prepare_data(spec: JobSpec, cache_dir: Path, vocab: Vocabulary | None = None, remote: CacheRemote | None = None,
                 warn: Callable[[str], None] | None = None) -> PreparedData:
    """The dataset, the vocabulary (training split only, unless given) and every split tokenised.

    MLM pretraining, and the binary and survival tasks of the sequence models (BEHRT, Med2Vec), stream the
    dataset into a token cache under `cache_dir` (reused by every later run on the same data, labels and
    settings: every fine-tune, label budget, replicate and ladder rung; kept in `remote` so a fresh machine
    downloads it); the count baselines, next_visit and Med2Vec pretraining build patient objects. Supervised
    tasks keep only labelled subjects, with histories cut strictly before the prediction time. With
    `train.label_budget` k, the training and the tuning split are each a seeded, stratified k patients (every
    model kind gets the same ones; ehrseq.data.budget); the vocabulary and the count features' code columns,
    which use no labels, still come from the whole training split. Pretraining (mlm, med2vec) reads labelled
    patients as task.pretrain_data says (cut before their prediction times by default), bins, vocabulary and
    tokens alike; numeric bins of a supervised task are fitted on values before the prediction times.
    """
    if vocab is not None and vocab.numeric_bins != spec.data.numeric_bins:
        raise InputError(f"data.numeric_bins: {spec.data.numeric_bins}, but the vocabulary of model.init_from was "
                         f"built with {vocab.numeric_bins} (a fine-tuned model reads its pretraining's tokens): set "
                         f"data.numeric_bins: {vocab.numeric_bins}")
    folder = dataset_folder(spec.data.source, spec.data.path, spec.data.num_patients, spec.seed, cache_dir,
                            spec.data.synthetic.params())
    cut = PretrainCut.of(spec.task.pretrain_data, folder, spec.task.labels_path, spec.task.labels) \
        if spec.task.kind in PRETRAINING else None
    codes = code_filter(spec)
    if spec.task.kind == "mlm" or (spec.task.kind in EXAMPLE_TASKS and spec.model.kind in SEQUENCE_MODELS):
        return _from_token_cache(spec, folder, cache_dir, vocab, remote, warn, cut, codes)
    visits = spec.data.visit_rule()
    dataset = read_meds_dataset(folder)
    identity = dataset_identity(dataset)  # the dataset's, whatever data.codes or a pretraining cut keep of it
    codes_facts = None
    if codes:
        kept = codes.apply_table(dataset.data)
        codes_facts = codes.describe(dataset.data.num_rows - kept.num_rows, dataset.data.num_rows)
        dataset = replace(dataset, data=kept)
    if cut:
        dataset = replace(dataset, data=cut.apply_table(dataset.data))
    bins = vocab.bins if vocab is not None else _fit_bins(dataset, spec.data.numeric_bins, spec)
    if bins:
        dataset = replace(dataset, data=bin_table(dataset.data, bins))
    report = None
    if spec.task.kind == "next_visit":  # labels from the data: the last visit's codes
        labelled = next_visit_splits(dataset, SPLITS, visits)
    elif spec.task.kind in SUPERVISED:
        labelled, report = labelled_splits(dataset, spec.task.label_task, SPLITS, spec.task.kind,
                                           spec.task.labels_path, visits)
    else:
        labelled = None
    patients = {s: labelled[s].patients for s in SPLITS} if labelled else patients_by_split(dataset, visits)
    vocab = vocab or _training_vocabulary(spec, patients["train"], bins)
    train_histories = patients["train"]
    for split, rows in budget_rows(spec, labelled).items():
        labelled[split] = take(labelled[split], rows)
        patients[split] = labelled[split].patients
    max_len = spec.data.max_seq_len
    examples = spec.task.kind in EXAMPLE_TASKS
    encoded = {s: encode_examples(labelled[s], vocab, max_len) if examples
               else [encode_patient(p, vocab, max_len) for p in patients[s]] for s in SPLITS}
    return PreparedData(vocab, encoded, identity, dataset_name(folder), dataset.splits, labelled,
                        folder, report, train_histories=train_histories, pretrain_cut=cut, codes=codes_facts)


def budget_rows(spec: JobSpec, labelled: dict | None) -> dict[str, np.ndarray]:
    """At train.label_budget k: the rows of the k training and the k tuning patients this replicate keeps (each
    its own seeded, stratified sample); {} without a budget."""
    k = spec.train.label_budget
    if not labelled or k is None:
        return {}
    seeds = {"train": LABEL_BUDGET, "tuning": TUNING_BUDGET}
    return {s: subsample_rows(labelled[s], k, derive_seed(spec.seed, purpose, spec.train.replicate), s)
            for s, purpose in seeds.items()}


def _from_token_cache(spec: JobSpec, folder: Path, cache_dir: Path, vocab: Vocabulary | None,
                      remote: CacheRemote | None, warn: Callable[[str], None] | None,
                      cut: PretrainCut | None, codes: CodeFilter) -> PreparedData:
    start = time.perf_counter()
    task = None
    if spec.task.kind != "mlm":  # the label rows are read each time: their files are part of the key
        t = spec.task
        labels, report = read_task_labels(folder, t.label_task, t.kind, t.labels_path)
        task = LabelledTask(t.kind, labels, report, task_label_files(folder, t.label_task, t.labels_path))
    cache, how = token_cache(folder, cache_dir, spec.data.max_seq_len, spec.data.min_code_count, vocab,
                             source=spec.data.path or spec.data.source, warn=warn, remote=remote,
                             numeric_bins=spec.data.numeric_bins, task=task, cut=cut, codes=codes or None,
                             visits=spec.data.visit_rule())
    manifest = read_manifest(cache, verify=False)  # (token_cache verified it)
    vocab, encoded = load_token_cache(cache, verify=False)
    labelled, report = load_examples(cache, encoded) if task else (None, None)
    for split, rows in budget_rows(spec, labelled).items():
        labelled[split], encoded[split] = labelled[split].take(rows), encoded[split].select(rows)
    name = dataset_name(folder)
    facts = {"key": manifest["key"], "name": cache.name, "how": how, "seconds": round(time.perf_counter() - start, 3),
             "events": manifest["counts"]["events"], "tokens": manifest["counts"]["tokens"]}
    return PreparedData(vocab, encoded, identity_of(name, manifest["counts"]["events"]), name,
                        read_splits_mapping(folder), labelled, folder, report, token_cache=facts, pretrain_cut=cut,
                        coverage=manifest["coverage"], codes=manifest.get("codes"))


def code_filter(spec: JobSpec) -> CodeFilter:
    """data.codes as the filter every data path applies (empty: every code)."""
    return CodeFilter(tuple(spec.data.codes.include), tuple(spec.data.codes.exclude))


def held_out_histories(spec: JobSpec, data: PreparedData) -> LabelledSplit:
    """The held-out examples with their histories as Patient objects (what the order probe edits): as prepared,
    or rebuilt by the object path (codes filtered and binned alike) where they came from the token cache as tokens
    only."""
    held_out = data.labelled["held_out"]
    if held_out.patients is not None:
        return held_out
    dataset = read_meds_dataset(data.folder)
    if codes := code_filter(spec):
        dataset = replace(dataset, data=codes.apply_table(dataset.data))
    if data.vocab.bins:
        dataset = replace(dataset, data=bin_table(dataset.data, data.vocab.bins))
    rebuilt = labelled_splits(dataset, spec.task.label_task, ("held_out",), spec.task.kind,
                              spec.task.labels_path, spec.data.visit_rule())[0]["held_out"]
    if not np.array_equal(rebuilt.example_ids, held_out.example_ids):
        raise RuntimeError("the held-out examples rebuilt as objects differ from the token cache's")
    return rebuilt


def describe_token_cache(facts: dict[str, object]) -> str:
    """One log line: was the dataset tokenised again, or were the tokens reused?"""
    how = {"reused": "reused (no re-tokenising)", "downloaded": "downloaded from storage (no re-tokenising)",
           "built": "built and stored for later runs"}[str(facts["how"])]
    return (f"token cache {facts['name']}: {how}; {facts['tokens']:,} tokens from {facts['events']:,} events "
            f"in {facts['seconds']:.1f} s")


def _fit_bins(dataset: MedsDataset, num_bins: int, spec: JobSpec) -> NumericBins | None:
    """Numeric value bins from the whole training split (as the vocabulary: no labels used), on the values
    before each labelled patient's earliest prediction time for a supervised task; None when off."""
    if not num_bins:
        return None
    train = np.array([s for s, split in dataset.splits.items() if split == "train"], np.int64)
    data = dataset.data
    if spec.task.kind in SUPERVISED and spec.task.kind != "next_visit":
        labels, _ = read_task_labels(dataset.path, spec.task.label_task, spec.task.kind, spec.task.labels_path)
        _, times, _ = label_arrays(labels)
        data = PretrainCut.of_rows("cut", labels.column("subject_id").to_numpy(), times.astype(np.int64)) \
            .apply_table(data)
    return fit_table(data, train, num_bins)


def _training_vocabulary(spec: JobSpec, train: list[Patient], bins: NumericBins | None) -> Vocabulary:
    """The training split's codes seen at least data.min_code_count times (InputError if none is)."""
    return training_vocabulary(Counter(Vocabulary.build(train).counts), spec.data.min_code_count,
                               spec.data.path or spec.data.source, bins)


def make_trainer(spec: JobSpec, data: PreparedData, device: torch.device,
                 should_stop: Callable[[], bool] = lambda: False, pretrained: Pretrained | None = None) -> Trainer:
    """A freshly initialised model and its trainer; the same spec always gives the same weights."""
    med2vec = spec.model.kind == "med2vec"
    config = Med2VecConfig.preset(spec.model.size, vocab_size=len(data.vocab), dropout=spec.model.dropout) \
        if med2vec else BEHRTConfig.preset(spec.model.size, vocab_size=len(data.vocab), dropout=spec.model.dropout,
                                           positions=spec.model.positions, max_seq_len=spec.data.max_seq_len)
    seed = training_seed(spec)
    torch.manual_seed(seed)  # weight initialisation
    if spec.task.kind == "mlm":
        model, task = BEHRTForMLM(config), MLMTask(data.vocab, mask_prob=spec.task.mask_prob)
    elif spec.task.kind == "med2vec":  # Med2Vec's own self-supervised objective
        model, task = Med2VecForPretraining(config), Med2VecTask(data.vocab, config.num_negatives)
    else:
        task = NextVisitTask(data.vocab, data.labelled.values()) if spec.task.kind == "next_visit" \
            else SupervisedTask(spec.task.kind, data.labelled.values(), spec.task.horizon_days)
        model = (Med2VecForPrediction if med2vec else BEHRTForPrediction)(config, num_outputs=task.num_outputs)
        if pretrained is not None:
            load_encoder(model.med2vec if med2vec else model.behrt, pretrained)
        if spec.lora:
            model = apply_lora(model, LoraSettings(**spec.lora.model_dump()))
    t = spec.train
    length = run_length(len(data.encoded["train"]), t.batch_size, t.max_steps, epochs=t.epochs,
                        min_steps=t.min_steps, evals_per_epoch=t.evals_per_epoch, eval_every=t.eval_every,
                        patience=t.patience, patience_epochs=t.patience_epochs, warmup_steps=t.warmup_steps)
    monitor, higher_is_better = MONITOR[spec.task.kind]
    train_config = TrainConfig(
        max_steps=length.steps, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        warmup_steps=length.warmup_steps, grad_clip=t.grad_clip, log_every=t.log_every,
        eval_every=length.eval_every, eval_batch_size=t.eval_batch_size, seed=seed, precision=t.precision,
        grad_accum_steps=t.grad_accum_steps, compile=t.compile, monitor=monitor,
        higher_is_better=higher_is_better, patience=length.patience, min_steps=length.min_steps)
    return Trainer(model, task, data.encoded["train"], data.encoded["tuning"], train_config, device,
                   should_stop=should_stop)
