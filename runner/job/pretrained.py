"""`model.init_from`: the encoder weights and vocabulary of a finished run, fetched from its storage.

The fine-tuned model must read codes exactly as the pretrained one did, so the run's own vocab.json replaces
the one a fresh run would build. The weights' sha256 goes into the summary, naming what was fine-tuned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load
from torch import nn

from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq_runner.spec import safe_yaml
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage, split_run_uri


@dataclass
class Pretrained:
    uri: str
    sha256: str
    vocab: Vocabulary
    encoder: dict[str, torch.Tensor]  # encoder weights, without their `behrt.` / `med2vec.` prefix
    cohort: dict[str, Any]  # the pretraining spec's seed and data section: which patients it trained on
    positions: str = "learned"  # the pretraining's model.positions (runs from before that field: learned)

    def provenance(self) -> dict[str, str]:
        return {"uri": self.uri, "sha256": self.sha256}


def fetch_pretrained(run_uri: str, endpoint_url: str | None = None, kind: str = "behrt") -> Pretrained:
    """Reads `model.safetensors` and `vocab.json` of the run at `run_uri`; the encoder is the weights under
    `kind.` (model.kind: `behrt.*` of BEHRTForMLM, `med2vec.*` of Med2VecForPretraining)."""
    base, run_id = split_run_uri(run_uri)
    run = RunFolder(open_storage(base, endpoint_url), run_id)
    try:
        weights = run.storage.get_bytes(run.key("model.safetensors"))
        vocab = Vocabulary.from_json(run.storage.get_bytes(run.key("vocab.json")).decode())
        spec = safe_yaml.load(run.storage.get_bytes(run.key("spec.yaml")), f"{run_uri}/spec.yaml")
    except FileNotFoundError as e:
        raise InputError(f"model.init_from: {run_uri} has no finished model ({e}); "
                         "pretrain it to completion first") from None
    encoder = {k.removeprefix(f"{kind}."): v for k, v in load(weights).items() if k.startswith(f"{kind}.")}
    if not encoder:
        raise InputError(f"model.init_from: {run_uri}/model.safetensors holds no {kind} encoder (keys {kind}.*)")
    return Pretrained(run_uri, hashlib.sha256(weights).hexdigest(), vocab, encoder,
                      {"seed": spec["seed"], **spec["data"]}, spec["model"].get("positions", "learned"))


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


def check_positions(pretrained: Pretrained, positions: str) -> None:
    """A fine-tune reads visit positions as its pretraining did: the encoder's attention was trained on them (and
    learned positions have a table that rope and time lack)."""
    if positions != pretrained.positions:
        raise InputError(f"model.positions: {positions!r}, but {pretrained.uri} was pretrained with "
                         f"{pretrained.positions!r}: set model.positions: {pretrained.positions}")


def load_encoder(encoder: nn.Module, pretrained: Pretrained) -> None:
    """Copies the pretrained weights into `encoder`; a different size or vocabulary is an InputError."""
    try:
        encoder.load_state_dict(pretrained.encoder, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputError(f"model.init_from: {pretrained.uri} does not fit model.size / vocabulary: "
                         f"{' '.join(first[:2])}") from None
