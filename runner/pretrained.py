"""`model.init_from`: the encoder weights and vocabulary of a finished run, fetched from its storage.

The fine-tuned model must read codes exactly as the pretrained one did, so the run's own vocab.json replaces
the one a fresh run would build. The weights' sha256 goes into the summary, naming what was fine-tuned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from safetensors.torch import load
from torch import nn

from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from runner.run_folder import RunFolder
from runner.storage import open_storage, split_run_uri


@dataclass
class Pretrained:
    uri: str
    sha256: str
    vocab: Vocabulary
    encoder: dict[str, torch.Tensor]  # BEHRT encoder weights, without the `behrt.` prefix

    def provenance(self) -> dict[str, str]:
        return {"uri": self.uri, "sha256": self.sha256}


def fetch_pretrained(run_uri: str, endpoint_url: str | None = None) -> Pretrained:
    """Reads `model.safetensors` (BEHRTForMLM, keys `behrt.*`) and `vocab.json` of the run at `run_uri`."""
    base, run_id = split_run_uri(run_uri)
    run = RunFolder(open_storage(base, endpoint_url), run_id)
    try:
        weights = run.storage.get_bytes(run.key("model.safetensors"))
        vocab = Vocabulary.from_json(run.storage.get_bytes(run.key("vocab.json")).decode())
    except FileNotFoundError as e:
        raise InputError(f"model.init_from: {run_uri} has no finished model ({e}); "
                         "pretrain it to completion first") from None
    encoder = {k.removeprefix("behrt."): v for k, v in load(weights).items() if k.startswith("behrt.")}
    if not encoder:
        raise InputError(f"model.init_from: {run_uri}/model.safetensors holds no BEHRT encoder (keys behrt.*)")
    return Pretrained(run_uri, hashlib.sha256(weights).hexdigest(), vocab, encoder)


def load_encoder(encoder: nn.Module, pretrained: Pretrained) -> None:
    """Copies the pretrained weights into `encoder`; a different size or vocabulary is an InputError."""
    try:
        encoder.load_state_dict(pretrained.encoder, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputError(f"model.init_from: {pretrained.uri} does not fit model.size / vocabulary: "
                         f"{' '.join(first[:2])}") from None
