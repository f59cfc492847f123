"""From a spec to what training needs: the dataset tokenised, the vocabulary, the freshly initialised trainer.

Shared by the job (rank 0), every other torchrun rank (job/distributed.py) and the checks that build a trainer
outside a run (`ehrseq verify-resume`, `ehrseq bench`): the same spec always gives the same data and weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ehrseq.data.budget import subsample
from ehrseq.data.cohort import SPLITS, load_dataset, patients_by_split
from ehrseq.data.labels import LabelReport
from ehrseq.data.meds_io import MedsDataset
from ehrseq.data.patients import Patient
from ehrseq.data.supervised import LabelledSplit, NextVisitSplit, labelled_splits, next_visit_splits
from ehrseq.data.tokenize import EncodedPatient, encode_patient
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq.models.lora import LoraSettings, apply_lora
from ehrseq.models.med2vec import Med2VecConfig, Med2VecForPrediction, Med2VecForPretraining
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.seeding import LABEL_BUDGET, REPLICATE, derive_seed
from ehrseq.tasks.med2vec import Med2VecTask
from ehrseq.tasks.mlm import MLMTask
from ehrseq.tasks.next_visit import NextVisitTask
from ehrseq.tasks.supervised import SupervisedTask
from ehrseq.training.length import epoch_steps, eval_interval
from ehrseq.training.trainer import TrainConfig, Trainer
from ehrseq_runner.job.pretrained import Pretrained, load_encoder
from ehrseq_runner.spec.job_spec import SUPERVISED, JobSpec

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
    encoded: dict[str, list[EncodedPatient]]  # split -> encoded patients
    # supervised tasks: labels (next_visit: the last visit's codes), histories cut before them
    labelled: dict[str, LabelledSplit] | dict[str, NextVisitSplit] | None = None
    dataset: MedsDataset | None = None
    label_report: LabelReport | None = None  # binary/survival: what happened to each label row


def prepare_data(spec: JobSpec, cache_dir: Path, vocab: Vocabulary | None = None) -> PreparedData:
    """The dataset, the vocabulary (training split only, unless given) and every split tokenised.

    Supervised tasks keep only labelled subjects, with histories cut strictly before the prediction time.
    With `train.label_budget` k, the training split is a seeded, stratified k of them (every model kind gets
    the same k); the vocabulary, which uses no labels, still comes from the whole training split.
    """
    dataset = load_dataset(spec.data.source, spec.data.path, spec.data.num_patients, spec.seed, cache_dir,
                           spec.data.synthetic.params())
    report = None
    if spec.task.kind == "next_visit":  # labels from the data: the last visit's codes
        labelled = next_visit_splits(dataset, SPLITS)
    elif spec.task.kind in SUPERVISED:
        labelled, report = labelled_splits(dataset, spec.task.label_task, SPLITS, spec.task.kind,
                                           spec.task.labels_path)
    else:
        labelled = None
    patients = {s: labelled[s].patients for s in SPLITS} if labelled else patients_by_split(dataset)
    vocab = vocab or _training_vocabulary(spec, patients["train"])
    if labelled and spec.train.label_budget is not None:
        labelled["train"] = subsample(labelled["train"], spec.train.label_budget,
                                      derive_seed(spec.seed, LABEL_BUDGET, spec.train.replicate))
        patients["train"] = labelled["train"].patients
    return PreparedData(vocab, {s: [encode_patient(p, vocab, spec.data.max_seq_len) for p in patients[s]]
                                for s in SPLITS}, labelled, dataset, report)


def _training_vocabulary(spec: JobSpec, train: list[Patient]) -> Vocabulary:
    """The training split's codes seen at least data.min_code_count times; none at all would leave models
    nothing but [UNK] to learn (and MLM nothing to sample replacements from), so that is bad input."""
    vocab = Vocabulary.build(train, min_count=spec.data.min_code_count)
    if len(vocab) == vocab.num_special:
        counts = Vocabulary.build(train).counts
        raise InputError(f"data.min_code_count: no code occurs {spec.data.min_code_count:,} times in the 'train' "
                         f"split of {spec.data.path or spec.data.source} ({len(counts):,} distinct codes, the most "
                         f"frequent {max(counts.values(), default=0):,} times); lower it or use more data")
    return vocab


def make_trainer(spec: JobSpec, data: PreparedData, device: torch.device,
                 should_stop: Callable[[], bool] = lambda: False, pretrained: Pretrained | None = None) -> Trainer:
    """A freshly initialised model and its trainer; the same spec always gives the same weights."""
    med2vec = spec.model.kind == "med2vec"
    config = (Med2VecConfig if med2vec else BEHRTConfig).preset(spec.model.size, vocab_size=len(data.vocab),
                                                                 dropout=spec.model.dropout)
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
    t, n = spec.train, len(data.encoded["train"])
    steps = min(t.max_steps, epoch_steps(t.epochs, n, t.batch_size)) if t.epochs else t.max_steps
    monitor, higher_is_better = MONITOR[spec.task.kind]
    train_config = TrainConfig(
        max_steps=steps, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else max(1, steps // 10),
        grad_clip=t.grad_clip, log_every=t.log_every,
        eval_every=eval_interval(t.evals_per_epoch, n, t.batch_size) if t.evals_per_epoch else t.eval_every,
        eval_batch_size=t.eval_batch_size, seed=seed, precision=t.precision,
        grad_accum_steps=t.grad_accum_steps, compile=t.compile,
        monitor=monitor, higher_is_better=higher_is_better, patience=t.patience)
    return Trainer(model, task, data.encoded["train"], data.encoded["tuning"], train_config, device,
                   should_stop=should_stop)
