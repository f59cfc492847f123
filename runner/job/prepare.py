"""From a spec to what training needs: the dataset tokenised, the vocabulary, the freshly initialised trainer.

Shared by the job (rank 0), every other torchrun rank (job/distributed.py) and the checks that build a trainer
outside a run (`ehrseq verify-resume`, `ehrseq bench`): the same spec always gives the same data and weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ehrseq.data.codes import CodeFilter
from ehrseq.data.prepared import DataSettings, PreparedData, prepare
from ehrseq.data.token_cache import CacheRemote
from ehrseq.data.vocab import Vocabulary
from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq.models.lora import LoraSettings, apply_lora
from ehrseq.models.med2vec import Med2VecConfig, Med2VecForPrediction, Med2VecForPretraining
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.seeding import REPLICATE, derive_seed
from ehrseq.tasks.med2vec import Med2VecTask
from ehrseq.tasks.mlm import MLMTask
from ehrseq.tasks.next_visit import NextVisitTask
from ehrseq.tasks.supervised import SupervisedTask
from ehrseq.training.length import run_length
from ehrseq.training.trainer import TrainConfig, Trainer
from ehrseq_runner.job.pretrained import Pretrained, load_encoder
from ehrseq_runner.spec.job_spec import JobSpec

# the tuning metric that picks the best evaluation (early stopping, the kept checkpoint, and for supervised
# tasks the weights held-out is scored with), and whether higher is better
MONITOR = {"mlm": ("mlm_loss", False), "med2vec": ("med2vec_loss", False), "binary": ("auroc", True),
           "survival": ("c_index", True), "next_visit": ("bce", False)}


def training_seed(spec: JobSpec) -> int:
    """Initialisation, batch order, dropout: `seed` itself for replicate 0, else one derived per replicate
    (the cohort and its splits always come from `seed`)."""
    return spec.seed if spec.train.replicate == 0 else derive_seed(spec.seed, REPLICATE, spec.train.replicate)


def data_settings(spec: JobSpec) -> DataSettings:
    """The spec's data, task labels and label budget as the library's DataSettings."""
    d, t = spec.data, spec.task
    return DataSettings(
        source=d.source, path=d.path, num_patients=d.num_patients, seed=spec.seed, synthetic=d.synthetic.params(),
        max_seq_len=d.max_seq_len, min_code_count=d.min_code_count, numeric_bins=d.numeric_bins,
        codes=CodeFilter(tuple(d.codes.include), tuple(d.codes.exclude)), task=t.kind, labels=t.label_task,
        labels_path=t.labels_path, pretrain_data=t.pretrain_data, label_budget=spec.train.label_budget,
        replicate=spec.train.replicate, visits=d.visit_rule())


def prepare_data(spec: JobSpec, cache_dir: Path, vocab: Vocabulary | None = None, remote: CacheRemote | None = None,
                 warn: Callable[[str], None] | None = None) -> PreparedData:
    """`ehrseq.data.prepare` on the spec's data settings (see there)."""
    return prepare(data_settings(spec), cache_dir, vocab, remote, warn)


def make_trainer(spec: JobSpec, data: PreparedData, device: torch.device,
                 should_stop: Callable[[], bool] = lambda: False, pretrained: Pretrained | None = None) -> Trainer:
    """A freshly initialised model and its trainer; the same spec always gives the same weights."""
    med2vec = spec.model.kind == "med2vec"
    frozen = spec.model.freeze_encoder  # a linear probe: a head on the mean of the frozen encoder's states
    config = Med2VecConfig.preset(spec.model.size, vocab_size=len(data.vocab), dropout=spec.model.dropout) \
        if med2vec else BEHRTConfig.preset(spec.model.size, vocab_size=len(data.vocab), dropout=spec.model.dropout,
                                           positions=spec.model.positions, pooling="mean" if frozen else "cls",
                                           max_seq_len=spec.data.max_seq_len)
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
            encoder = model.med2vec if med2vec else model.behrt
            load_encoder(encoder, pretrained)
            encoder.requires_grad_(not frozen)
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
