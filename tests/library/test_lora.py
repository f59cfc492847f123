"""LoRA fine-tuning that provably trains: gradients reach the adapters, the base never moves, adapters reload
exactly, merging changes nothing, checkpoints hold only what trained, and resume is exact and checks its base.
A linear probe (frozen encoder, head on the mean token state) likewise trains its head only."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from ehrseq.errors import InputError
from ehrseq.models import BEHRTConfig
from ehrseq.models.lora import LoraSettings, apply_lora, merge_lora
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq.tasks.supervised import SupervisedTask
from ehrseq.training.device import resolve_device
from ehrseq.training.state import load_trainable_state_dict, trainable_state_dict
from ehrseq_runner.commands.export import export_run
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.job.prepare import make_trainer, prepare_data
from ehrseq_runner.job.pretrained import fetch_pretrained
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec, ModelSpec, validate_job
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage

DATA = {"num_patients": 300, "max_seq_len": 32}
TRAIN = {"batch_size": 16, "device": "cpu", "log_every": 1, "eval_every": 4}


def make_spec(root: Path, name: str, task: str = "binary", max_steps: int = 8, lora: dict | None = None,
              **sections) -> JobSpec:
    raw = {"name": name, "data": DATA, "model": {"kind": "behrt"}, "task": {"kind": task},
           "train": {**TRAIN, "max_steps": max_steps}, "storage": {"uri": f"file://{root}/runs"},
           "runtime": {"work_dir": str(root / "work")}, **sections}
    if lora is not None:
        raw["model"]["init_from"] = f"file://{root}/runs/pre"
        raw["lora"] = lora
    return JobSpec.model_validate(raw)


def run(spec: JobSpec) -> int:
    return run_job(spec, Console(quiet=True))


def run_dir(spec: JobSpec) -> Path:
    return Path(spec.storage.uri.removeprefix("file://")) / spec.resolved_run_id


@pytest.fixture(scope="module")
def pretrained_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    assert run(make_spec(root, "pre", task="mlm", max_steps=6)) == 0
    return root


def lora_trainer(root: Path, settings: dict):
    spec = make_spec(root, "unit", lora=settings)
    pretrained = fetch_pretrained(spec.model.init_from)
    data = prepare_data(spec, root / "work" / "datasets", vocab=pretrained.vocab)
    return make_trainer(spec, data, resolve_device("cpu"), pretrained=pretrained), data, pretrained


def logits(model, patients):
    model.eval()
    b = patients.collate(range(len(patients)))
    with torch.no_grad():
        return model(b.codes, b.ages, b.segments, b.positions, b.attention_mask)


def test_adapters_get_gradients_and_train_while_the_base_stays_bit_identical(pretrained_root):
    trainer, data, pretrained = lora_trainer(pretrained_root, {"rank": 4, "targets": ["query", "value", "up"]})
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".head." in n for n in trainable)
    # one backward: every adapter matrix gets a gradient (B starts at zero, so A's first gradient is zero: check B)
    task: SupervisedTask = trainer.task
    loss = task.training_loss(model, data.encoded["train"].collate(range(16)), torch.Generator(), torch.device("cpu"))
    loss.backward()
    lora_b = [n for n in trainable if "lora_B" in n]
    assert len(lora_b) == 3 * BEHRTConfig.small(vocab_size=1).num_layers  # 3 targets in every layer
    for name, p in model.named_parameters():
        if "lora_B" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)

    assert trainer.fit()
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    for key, value in pretrained.encoder.items():  # the base is still exactly the pretraining run's weights
        layer = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        peft_key = next(n for n in (f"base_model.model.behrt.{layer}", f"base_model.model.behrt.{key}")
                        if n in dict(model.named_parameters()))
        assert torch.equal(dict(model.named_parameters())[peft_key], value), key

    # the adapters reloaded onto a fresh base give exactly the same outputs
    patients = data.encoded["held_out"].select(slice(0, 20))
    trained_out = logits(model, patients)
    fresh, _, _ = lora_trainer(pretrained_root, {"rank": 4, "targets": ["query", "value", "up"]})
    assert not torch.equal(logits(fresh.model, patients), trained_out)
    load_trainable_state_dict(fresh.model, trainable_state_dict(model))
    assert torch.equal(logits(fresh.model, patients), trained_out)

    # merged and unmerged agree
    merged = merge_lora(fresh.model)
    assert type(merged) is BEHRTForPrediction
    assert torch.allclose(logits(merged, patients), trained_out, atol=1e-5)


def test_lora_run_keeps_only_what_trained_and_exports_merged_weights(pretrained_root, tmp_path):
    spec = make_spec(pretrained_root, "lora", lora={"rank": 4})
    assert run(spec) == 0
    folder = run_dir(spec)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["params_trainable"] / summary["params_total"] < 0.05
    assert summary["lora"]["rank"] == 4 and summary["init_from"]["uri"].endswith("/runs/pre")
    assert (folder / "adapter.safetensors").is_file() and not (folder / "model.safetensors").exists()
    adapter = load_file(folder / "adapter.safetensors")
    assert all("lora_" in k or ".head." in k for k in adapter)
    assert sum(v.numel() for v in adapter.values()) == summary["params_trainable"]

    def newest_checkpoint_bytes(run_folder: Path) -> int:
        newest = sorted((run_folder / "checkpoints").iterdir())[-1]
        return sum(f.stat().st_size for f in newest.iterdir() if f.name in ("model.safetensors", "optimizer.pt"))

    full = make_spec(pretrained_root, "full", **{"model": {"kind": "behrt",
                                                           "init_from": f"file://{pretrained_root}/runs/pre"}})
    assert run(full) == 0
    ratio = newest_checkpoint_bytes(folder) / newest_checkpoint_bytes(run_dir(full))
    assert ratio < 0.1, ratio
    assert summary["checkpoint_bytes"] < json.loads((run_dir(full) / "summary.json").read_text())["checkpoint_bytes"]

    run_folder = RunFolder(open_storage(f"file://{pretrained_root}/runs"), "lora")
    assert export_run(run_folder, tmp_path / "merged", merge=True)[0] == "model.safetensors"
    plain = BEHRTForPrediction(BEHRTConfig(**summary["model_config"]))
    plain.load_state_dict(load_file(tmp_path / "merged" / "model.safetensors"))  # strict: a plain model loads them
    trainer, data, _ = lora_trainer(pretrained_root, {"rank": 4})
    load_trainable_state_dict(trainer.model, adapter)
    patients = data.encoded["held_out"].select(slice(0, 20))
    assert torch.allclose(logits(plain, patients), logits(trainer.model, patients), atol=1e-5)
    assert export_run(run_folder, tmp_path / "adapter", merge=False)[0] == "adapter.safetensors"


def test_lora_resume_is_exact_and_refuses_a_different_base(pretrained_root, monkeypatch):
    straight = make_spec(pretrained_root, "lora-straight", lora={"rank": 4, "dropout": 0.1})
    assert run(straight) == 0
    spec = make_spec(pretrained_root, "lora-resumed", lora={"rank": 4, "dropout": 0.1},
                     checkpoint={"interval_seconds": 1e-6})
    original, calls = SupervisedTask.training_loss, {"n": 0}

    def training_loss(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    with monkeypatch.context() as mp:
        mp.setattr(SupervisedTask, "training_loss", training_loss)
        assert run(spec) == EXIT_PREEMPTED
    assert run(spec) == 0

    def losses(s: JobSpec) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in (run_dir(s) / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]

    assert losses(spec) == losses(straight) and len(losses(spec)) == 8

    weights = run_dir(make_spec(pretrained_root, "pre")) / "model.safetensors"
    original_bytes = weights.read_bytes()
    try:
        tensors = load_file(weights)
        tensors["behrt.embeddings.norm.bias"] += 0.01  # someone re-trained the base in place
        save_file(tensors, weights)
        with pytest.raises(InputError, match="was trained on base"):
            run(make_spec(pretrained_root, "lora-resumed", max_steps=10, lora={"rank": 4, "dropout": 0.1},
                          checkpoint={"interval_seconds": 1e-6}))
    finally:
        weights.write_bytes(original_bytes)


def test_fine_tuning_on_other_splits_of_the_same_cohort_is_refused(pretrained_root):
    spec = make_spec(pretrained_root, "leaky", lora={"rank": 4}, data={**DATA, "num_patients": 400})
    with pytest.raises(InputError, match="num_patients: 300 there, 400 here"):
        run(spec)


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="not BEHRT Linear layers"):
        LoraSettings(targets=["out_proj"])
    model = apply_lora(BEHRTForPrediction(BEHRTConfig.small(vocab_size=50)), LoraSettings(targets=["output", "down"]))
    adapted = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"output", "down"}


def test_a_next_visit_lora_run_exports_merged_weights_with_one_output_per_code(pretrained_root, tmp_path):
    spec = make_spec(pretrained_root, "lora-next", task="next_visit", max_steps=3, lora={"rank": 2})
    assert run(spec) == 0
    export_run(RunFolder(open_storage(f"file://{pretrained_root}/runs"), "lora-next"), tmp_path, merge=True)
    weights = load_file(tmp_path / "model.safetensors")
    summary = json.loads((run_dir(spec) / "summary.json").read_text())
    plain = BEHRTForPrediction(BEHRTConfig(**summary["model_config"]), num_outputs=weights["head.weight"].shape[0])
    plain.load_state_dict(weights)
    assert plain.num_outputs > 100  # a logit per vocabulary code


def test_a_linear_probe_trains_only_its_head_on_the_mean_of_a_frozen_encoder(pretrained_root):
    base = f"file://{pretrained_root}/runs/pre"
    spec = make_spec(pretrained_root, "probe", model={"kind": "behrt", "init_from": base, "freeze_encoder": True})
    assert run(spec) == 0
    summary = json.loads((run_dir(spec) / "summary.json").read_text())
    assert summary["model_config"]["pooling"] == "mean"
    assert summary["params_trainable"] == summary["model_config"]["hidden_size"] + 1  # the head: weights and bias
    weights = load_file(run_dir(spec) / "model.safetensors")
    pretrained = fetch_pretrained(base)
    assert all(torch.equal(weights[f"behrt.{k}"], v) for k, v in pretrained.encoder.items())  # never moved

    model = BEHRTForPrediction(BEHRTConfig(**summary["model_config"]))
    model.load_state_dict(weights)
    _, data, _ = lora_trainer(pretrained_root, {"rank": 4})
    patients = data.encoded["held_out"].select(slice(0, 20))
    b = patients.collate(range(len(patients)))
    model.eval()
    with torch.no_grad():
        h = model.behrt(b.codes, b.ages, b.segments, b.positions, b.attention_mask)  # (B, T, C)
        mean = (h * b.attention_mask[..., None]).sum(1) / b.attention_mask.sum(1, keepdim=True)
        assert torch.allclose(logits(model, patients), model.head(mean).squeeze(-1), atol=1e-6)


@pytest.mark.parametrize("model, message", [
    ({"kind": "behrt", "freeze_encoder": True}, "set model.init_from"),
    ({"kind": "behrt", "freeze_encoder": True, "init_from": "file:///x/pre"}, "remove lora"),
])
def test_a_linear_probe_needs_a_pretrained_encoder_and_no_adapters(tmp_path, model, message):
    raw = {"name": "p", "model": model, "task": {"kind": "binary"}, "storage": {"uri": f"file://{tmp_path}"}}
    if "init_from" in model:
        raw["lora"] = {"rank": 4}
    with pytest.raises(InputError, match=message):
        validate_job(raw, "spec")


@pytest.mark.parametrize("model, positions", [({}, "rope"), ({"size": "large"}, "rope"), ({"size": "paper"}, "learned"),
                                              ({"kind": "gbm"}, "learned"), ({"positions": "time"}, "time")])
def test_behrt_presets_default_to_rotary_positions_and_the_paper_keeps_its_table(model, positions):
    assert ModelSpec.model_validate(model).positions == positions
