"""A training run's complete state as a folder of plain files, loadable without unpickling objects.

`capture` snapshots everything on the training thread (tensors copied to CPU), so `write` can
run on another thread while training goes on. Files:

- `model.safetensors`   weights (safetensors)
- `optimizer.pt`        optimizer, LR-scheduler, fp16 grad-scaler state (tensors, plain values: `weights_only` load)
- `rng.pt`              Python, NumPy, torch CPU/CUDA/MPS generator states
- `trainer.json`        step, epoch, offset in the epoch, loss window, extras (spec hash, versions)
- any extra files the caller adds (vocabulary, metrics so far)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def frozen_parameter_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without frozen parameters: a LoRA run's base comes from its base checkpoint instead."""
    frozen = frozen_parameter_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The inverse of `trainable_state_dict`: only frozen parameters may be absent from `state`."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - frozen_parameter_names(model):
        raise ValueError(f"weights do not fit the model: missing {sorted(set(missing))[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                    has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


@dataclass
class TrainingSnapshot:
    step: int
    model: dict[str, torch.Tensor]
    optim: dict[str, Any]  # {"optimizer": ..., "scheduler": ..., "scaler": ...}
    rng: dict[str, Any]
    trainer: dict[str, Any]  # JSON-able: train state, spec hash, versions, ...
    extra_files: dict[str, bytes] = field(default_factory=dict)

    def write(self, folder: Path) -> list[Path]:
        """Writes the files into `folder`; returns them (the caller commits them with a manifest)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.model, str(folder / "model.safetensors"))
        torch.save(self.optim, folder / "optimizer.pt")
        torch.save(self.rng, folder / "rng.pt")
        (folder / "trainer.json").write_text(json.dumps(self.trainer, indent=2))
        for name, data in self.extra_files.items():
            (folder / name).write_bytes(data)
        return [folder / n for n in ["model.safetensors", "optimizer.pt", "rng.pt", "trainer.json",
                                     *self.extra_files]]


def capture(trainer_state: dict[str, Any], step: int, extra_json: dict[str, Any],
            extra_files: dict[str, bytes], copy: bool = True) -> TrainingSnapshot:
    """Snapshot of `Trainer.state_dict()`.

    `copy=True` takes detached CPU copies so training may continue at once; a final save after
    training has stopped skips the copies (about a second for the large preset on CPU).
    Tied weights (the MLM decoder shares the code embedding) are stored once, with an alias.
    """
    model, aliases, seen = {}, {}, {}
    for name, tensor in trainer_state["model"].items():
        key = (tensor.data_ptr(), tensor.shape, tensor.device)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = tensor.detach()
        model[name] = t.to("cpu", copy=True) if copy else t.cpu().contiguous()
    optim = {"optimizer": trainer_state["optimizer"], "scheduler": trainer_state["scheduler"],
             "scaler": trainer_state.get("scaler", {})}
    return TrainingSnapshot(
        step=step, model=model, optim=_to_cpu(optim) if copy else optim, rng=rng_state(),
        trainer={"train_state": trainer_state["train_state"], "aliases": aliases, **extra_json},
        extra_files=extra_files)


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that does not load as plain data. A `.pt` file is only ever loaded with
    weights_only=True: anything else would run whatever code its writer pickled into it."""


def load_tensors(path: Path) -> Any:
    """A `.pt` file of tensors and plain values; UnreadableCheckpoint (torch's text left out) otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (objects, code), RuntimeError / EOFError (damaged)
        raise UnreadableCheckpoint(f"{path.name} does not load as plain tensors ({type(e).__name__}); "
                                   "it is never unpickled") from None


def check_readable(path: Path) -> None:
    """Parses a downloaded checkpoint file by its kind (`.pt`, `.safetensors`, `.json`; others pass), so a
    file that matches its checksum but cannot be loaded is found before a resume relies on it."""
    if path.suffix == ".pt":
        load_tensors(path)
        return
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                f.keys()
        elif path.suffix == ".json":
            json.loads(path.read_bytes())
    except Exception as e:  # a safetensors header or JSON that does not parse
        raise UnreadableCheckpoint(f"{path.name} does not parse ({type(e).__name__})") from None


def load_model_weights(folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A snapshot's model state (tied weights restored from their aliases), e.g. the best checkpoint's."""
    trainer = json.loads((folder / "trainer.json").read_text())
    model = load_file(folder / "model.safetensors", device=str(device))
    model.update({alias: model[name] for alias, name in trainer.get("aliases", {}).items()})
    return model


def load_snapshot(folder: Path, device: torch.device) -> dict[str, Any]:
    """The inverse of `write`, as a `Trainer.load_state_dict` input plus `trainer.json` contents."""
    optim = load_tensors(folder / "optimizer.pt")
    trainer = json.loads((folder / "trainer.json").read_text())
    return {"model": load_model_weights(folder, device),
            "optimizer": optim["optimizer"], "scheduler": optim["scheduler"], "scaler": optim.get("scaler", {}),
            "train_state": trainer["train_state"], "trainer": trainer,
            "rng": load_tensors(folder / "rng.pt")}
