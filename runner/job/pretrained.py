"""`model.init_from`: the encoder weights and vocabulary of a finished run, fetched from its storage.

The fine-tuned model must read codes exactly as the pretrained one did, so the run's own vocab.json replaces
the one a fresh run would build. The weights' sha256 goes into the summary, naming what was fine-tuned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load
from torch import nn

from ehrseq.data.meds_io import sha256_of
from ehrseq.data.supervised import task_label_files
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq_runner.spec import safe_yaml
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage, split_run_uri

if TYPE_CHECKING:
    from ehrseq_runner.spec.job_spec import JobSpec


@dataclass
class Pretrained:
    uri: str
    sha256: str
    vocab: Vocabulary
    encoder: dict[str, torch.Tensor]  # encoder weights, without their `behrt.` / `med2vec.` prefix
    cohort: dict[str, Any]  # the pretraining spec's seed and data section: which patients it trained on
    data: dict[str, Any] | None = None  # its summary's pretraining_data: fingerprint, cut mode, label files
    checked: bool = True  # False: model.init_from_data other (pretrained elsewhere on purpose, not checked)
    positions: str = "learned"  # the pretraining's model.positions (runs from before that field: learned)

    def provenance(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "pretraining_data": self.data, "checked": self.checked}


def fetch_pretrained(run_uri: str, endpoint_url: str | None = None, kind: str = "behrt") -> Pretrained:
    """Reads `model.safetensors` and `vocab.json` of the run at `run_uri`; the encoder is the weights under
    `kind.` (model.kind: `behrt.*` of BEHRTForMLM, `med2vec.*` of Med2VecForPretraining)."""
    base, run_id = split_run_uri(run_uri)
    run = RunFolder(open_storage(base, endpoint_url), run_id)
    try:
        weights = run.storage.get_bytes(run.key("model.safetensors"))
        vocab = Vocabulary.from_json(run.storage.get_bytes(run.key("vocab.json")).decode())
        spec = safe_yaml.load(run.storage.get_bytes(run.key("spec.yaml")), f"{run_uri}/spec.yaml")
        summary = json.loads(run.storage.get_bytes(run.key("summary.json")))
    except FileNotFoundError as e:
        raise InputError(f"model.init_from: {run_uri} has no finished model ({e}); "
                         "pretrain it to completion first") from None
    encoder = {k.removeprefix(f"{kind}."): v for k, v in load(weights).items() if k.startswith(f"{kind}.")}
    if not encoder:
        raise InputError(f"model.init_from: {run_uri}/model.safetensors holds no {kind} encoder (keys {kind}.*)")
    return Pretrained(run_uri, hashlib.sha256(weights).hexdigest(), vocab, encoder,
                      {"seed": spec["seed"], **spec["data"]}, data=summary.get("pretraining_data"),
                      positions=spec["model"].get("positions", "learned"))


def check_no_leakage(pretrained: Pretrained, seed: int, data: dict[str, Any]) -> None:
    """Pretraining on the same dataset must have used the same splits, or its training patients could be
    this run's held-out patients: splits depend on the seed and, for a synthetic cohort, its size."""
    ours = {"seed": seed, **data}
    if (ours["source"], ours["path"]) != (pretrained.cohort["source"], pretrained.cohort["path"]):
        return  # another dataset: its subjects are not ours
    diffs = [f"{k}: {pretrained.cohort.get(k)!r} there, {ours[k]!r} here" for k in ("seed", "num_patients")
             if pretrained.cohort.get(k) != ours[k]]
    if diffs:
        raise InputError(f"model.init_from: {pretrained.uri} was pretrained on the same dataset with other splits "
                         f"({'; '.join(diffs)}), so its training patients may be held out here; "
                         "use the pretraining run's seed and data.num_patients")


def check_pretraining_data(pretrained: Pretrained, spec: JobSpec, fingerprint: str, identity: str,
                           folder: Path | None) -> None:
    """A base must have been pretrained on this dataset and splits (`fingerprint` of the data without held-out
    subjects, as its summary records it), reading of this task's labelled patients nothing at or after their
    prediction times (cut, or an unlabelled pool), unless `model.init_from_data: other` says it was pretrained
    elsewhere on purpose. InputError (exit 2) otherwise."""
    fix = "or set model.init_from_data: other to fine-tune from it knowingly (the summary records it)"
    if spec.model.init_from_data == "other":
        pretrained.checked = False
        return
    recorded = pretrained.data
    if recorded is None:
        raise InputError(f"model.init_from: {pretrained.uri} records no pretraining data (an older run, or not a "
                         f"pretraining); pretrain again on this dataset, {fix}")
    if recorded["fingerprint"] != fingerprint:
        raise InputError(f"model.init_from: {pretrained.uri} was pretrained on other data or splits (data fingerprint "
                         f"{recorded['fingerprint']}, this run's {fingerprint}: {identity}); pretrain on this dataset "
                         f"with this seed, {fix}")
    if spec.task.kind not in ("binary", "survival"):
        return
    label = spec.task.labels_path or spec.task.label_task
    if recorded["mode"] == "all":
        raise InputError(f"model.init_from: {pretrained.uri} was pretrained on whole timelines (task.pretrain_data: "
                         f"all), so it read the events after this task's prediction times, outcomes included; "
                         f"pretrain with task.pretrain_data: cut (the default) or pool, {fix}")
    files = task_label_files(folder, spec.task.label_task, spec.task.labels_path)
    cut = {sha for _, _, sha in recorded["labels"]}
    missing = [f.name for f in files if sha256_of(f) not in cut]
    if missing:
        raise InputError(f"model.init_from: {pretrained.uri} was pretrained cut at other labels than this task's "
                         f"({label}: {', '.join(missing)} not among its {len(cut)} label files), so it may have read "
                         f"these patients' futures; pretrain with task.labels_path: {label} (or these labels under "
                         f"the dataset's labels/), {fix}")


def check_positions(pretrained: Pretrained, positions: str) -> None:
    """A fine-tune reads visit positions as its pretraining did: the encoder's attention was trained on them (and
    learned positions have a table that rope and time lack)."""
    if positions != pretrained.positions:
        raise InputError(f"model.positions: {positions!r}, but {pretrained.uri} was pretrained with "
                         f"{pretrained.positions!r}: set model.positions: {pretrained.positions}")


def check_visit(pretrained: Pretrained, visit: str, admission: dict[str, Any]) -> None:
    """A fine-tune groups events into visits as its pretraining did (data.visit, data.admission): its segments and
    positions count the same visits (runs from before those fields: day)."""
    theirs = pretrained.cohort.get("visit", "day")
    if visit != theirs or (visit == "admission" and admission != pretrained.cohort.get("admission")):
        raise InputError(f"data.visit: {visit!r}, but {pretrained.uri} was pretrained with {theirs!r}"
                         + (f" (admission codes {pretrained.cohort.get('admission')})" if theirs == "admission" else "")
                         + ": a fine-tune reads the visits its pretraining read")


def load_encoder(encoder: nn.Module, pretrained: Pretrained) -> None:
    """Copies the pretrained weights into `encoder`; a different size or vocabulary is an InputError."""
    try:
        encoder.load_state_dict(pretrained.encoder, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputError(f"model.init_from: {pretrained.uri} does not fit model.size / vocabulary / "
                         "data.max_seq_len (its visit position table): "
                         f"{' '.join(first[:2])}") from None
