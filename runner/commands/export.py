"""`ehrseq export`: a finished run's weights as files a plain model loads, LoRA adapters merged on request.

A LoRA run's bundle holds only what trained (adapters and head). `--merge` fetches its base from
`model.init_from`, checks it is byte for byte the base the run trained on (sha256), folds each adapter
into its base weight and writes full `BEHRTForPrediction` weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load, save_model

from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig
from ehrseq.models.lora import LoraSettings, apply_lora, merge_lora
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.training.state import load_trainable_state_dict
from ehrseq_runner.job.bundle import ADAPTER
from ehrseq_runner.job.pretrained import fetch_pretrained, load_encoder
from ehrseq_runner.storage.run_folder import RunFolder

WEIGHTS = "model.safetensors"


def export_run(run: RunFolder, dest: Path, merge: bool, endpoint_url: str | None = None) -> list[str]:
    """Writes the run's weights, `vocab.json` and `config.json` into `dest`; returns the file names."""
    summary = _read_json(run, "summary.json")
    if "model_config" not in summary:
        raise InputError(f"{run.uri} is a {summary.get('model')} run: it has no neural weights to export")
    lora = summary.get("lora")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_bytes(run.storage.get_bytes(run.key("vocab.json")))
    config = {key: summary.get(key) for key in ("model", "task", "model_config", "init_from", "lora")}
    if lora and merge:
        save_model(_merged(run, summary, endpoint_url), str(dest / WEIGHTS))
        config["lora"], config["merged_from"] = None, {"run": run.uri, "lora": lora}
        written = WEIGHTS
    else:  # as stored: full weights, or a LoRA run's adapters and head
        written = ADAPTER if lora else WEIGHTS
        (dest / written).write_bytes(_get(run, written))
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return [written, "vocab.json", "config.json"]


def _merged(run: RunFolder, summary: dict[str, Any], endpoint_url: str | None) -> BEHRTForPrediction:
    base = summary["init_from"]
    pretrained = fetch_pretrained(base["uri"], endpoint_url)
    if pretrained.sha256 != base["sha256"]:
        raise InputError(f"{run.uri} was trained on {base['uri']} with sha256 {base['sha256'][:12]}..., which now "
                         f"holds {pretrained.sha256[:12]}...: the base changed, so the adapters cannot be merged")
    adapter = load(_get(run, ADAPTER))
    head = next(v for k, v in adapter.items() if k.endswith("head.modules_to_save.default.weight"))
    model = BEHRTForPrediction(BEHRTConfig(**summary["model_config"]), num_outputs=head.shape[0])
    load_encoder(model.behrt, pretrained)
    adapted = apply_lora(model, LoraSettings(**summary["lora"]))
    load_trainable_state_dict(adapted, adapter)
    return merge_lora(adapted)


def _get(run: RunFolder, name: str) -> bytes:
    try:
        return run.storage.get_bytes(run.key(name))
    except FileNotFoundError:
        raise InputError(f"{run.uri} has no {name}: only a completed run can be exported") from None


def _read_json(run: RunFolder, name: str) -> dict[str, Any]:
    return json.loads(_get(run, name))
