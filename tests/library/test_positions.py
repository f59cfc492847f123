"""model.positions: learned (BEHRT's table), rope (rotary over the visit index) and time (rotary over months since
the first visit): shapes, rope's relativity, LoRA's targets, what a run records, and the fine-tune refusal."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from ehrseq.errors import InputError
from ehrseq.models import BEHRT, BEHRTConfig
from ehrseq.models.behrt import ROPE_BASE, rotary_angles
from ehrseq.models.lora import LoraSettings, apply_lora
from ehrseq.models.prediction import BEHRTForPrediction
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import JobSpec, SpecError, validate_job

POSITIONS = ("learned", "rope", "time")


def history(B: int = 2) -> tuple[torch.Tensor, ...]:
    """(codes, ages, segments, positions, mask): [CLS] then five visits of two codes and a [SEP], one padded row."""
    T = 16
    torch.manual_seed(1)
    codes = torch.randint(5, 60, (B, T))
    codes[:, 0] = 1
    positions = torch.tensor([0] + [v for v in range(5) for _ in range(3)]).expand(B, T)
    ages = 500 + 7 * positions + torch.arange(B)[:, None]  # months: one visit every 7 months
    segments = positions % 2
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 10:] = False
    return codes, ages, segments, positions, mask


def encoder(positions: str, seed: int = 0) -> BEHRT:
    torch.manual_seed(seed)
    return BEHRT(BEHRTConfig.small(vocab_size=60, positions=positions)).eval()  # eval: dropout off


@pytest.mark.parametrize("positions", POSITIONS)
def test_every_kind_gives_hidden_states_of_the_documented_shape(positions):
    codes, ages, segments, pos, mask = history()
    model = encoder(positions)
    assert model(codes, ages, segments, pos, mask).shape == (2, 16, 96)
    has_table = any(name.startswith("embeddings.position.") for name in model.state_dict())
    assert has_table == (positions == "learned")  # rope and time keep no absolute position table


def test_the_paper_keeps_learned_positions_the_tiers_rotate_and_a_typo_is_refused():
    assert BEHRTConfig.paper(vocab_size=10).positions == BEHRTConfig(vocab_size=10).positions == "learned"
    assert {BEHRTConfig.preset(size, vocab_size=10).positions for size in ("small", "medium", "large")} == {"rope"}
    with pytest.raises(ValueError, match="unknown positions 'rotary'"):
        BEHRTConfig.small(vocab_size=10, positions="rotary")
    with pytest.raises(ValueError, match="must be even"):
        BEHRTConfig(vocab_size=10, hidden_size=36, num_heads=4, positions="rope")  # head size 9


def test_rope_sees_only_differences_of_visit_indices_learned_sees_the_indices():
    codes, ages, segments, pos, mask = history()
    shift = 9  # every visit index moved by the same amount: the same history, told from another origin
    for positions, relative in (("rope", True), ("learned", False)):
        model = encoder(positions)
        with torch.no_grad():
            same, moved = model(codes, ages, segments, pos, mask), model(codes, ages, segments, pos + shift, mask)
        difference = (same - moved)[mask].abs().max().item()
        assert (difference < 1e-4) == relative, (positions, difference)
    rope = encoder("rope")
    with torch.no_grad():  # but rope does see the order: the visits told in another spacing change the output
        spread = rope(codes, ages, segments, pos * 3, mask)
        assert (spread - rope(codes, ages, segments, pos, mask))[mask].abs().max() > 1e-3


def test_time_rotates_by_months_since_the_first_visit_not_by_the_visit_index():
    codes, ages, segments, pos, mask = history()
    config = BEHRTConfig.small(vocab_size=60, positions="time")
    angles = rotary_angles(config, ages, pos)  # (B, 1, T, D/2)
    D = config.hidden_size // config.num_heads
    months = (ages - ages[:, :1]).float()  # (B, T): 0, 0, 0, 0, 7, 7, 7, 14, ...
    assert angles.shape == (2, 1, 16, D // 2)
    torch.testing.assert_close(angles[:, 0, :, 1], months * ROPE_BASE ** (-2 / D))
    model = encoder("time")
    with torch.no_grad():  # the visit index no longer matters to it; the months between visits do
        base = model(codes, ages, segments, pos, mask)
        torch.testing.assert_close(model(codes, ages, segments, pos + 4, mask), base)
    assert rotary_angles(BEHRTConfig.small(vocab_size=60, positions="learned"), ages, pos) is None  # no rotation


def test_lora_wraps_the_attention_linears_of_a_rotary_model_and_they_train():
    model = apply_lora(BEHRTForPrediction(BEHRTConfig.small(vocab_size=60, positions="rope")), LoraSettings())
    adapted = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"query", "key", "value", "output"}
    codes, ages, segments, pos, mask = history()
    model(codes, ages, segments, pos, mask).sum().backward()
    grads = {n.split(".")[-4]: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), sorted(grads)


def test_a_non_behrt_model_cannot_set_positions():
    raw = {"name": "x", "model": {"kind": "gbm", "positions": "rope"}, "task": {"kind": "binary"}}
    with pytest.raises(SpecError, match="model.positions: 'rope' sets BEHRT's visit positions"):
        validate_job(raw, "spec")


def spec(root: Path, name: str, task: str, positions: str, **model) -> JobSpec:
    return JobSpec.model_validate({
        "name": name, "data": {"num_patients": 200, "max_seq_len": 32},
        "model": {"kind": "behrt", "positions": positions, **model}, "task": {"kind": task},
        "train": {"batch_size": 16, "device": "cpu", "max_steps": 2, "eval_every": 0},
        "storage": {"uri": f"file://{root}/runs"}, "runtime": {"work_dir": str(root / "work")}})


def test_runs_record_their_positions_and_a_fine_tune_must_match_its_pretraining(tmp_path):
    assert run_job(spec(tmp_path, "pre", "mlm", "rope"), Console(quiet=True)) == 0
    runs = tmp_path / "runs"
    assert json.loads((runs / "pre/summary.json").read_text())["model_config"]["positions"] == "rope"
    base = f"file://{runs}/pre"
    for other in ("learned", "time"):
        with pytest.raises(InputError, match=f"model.positions: '{other}', but .* pretrained with 'rope': set "
                                             "model.positions: rope"):
            run_job(spec(tmp_path, f"ft-{other}", "binary", other, init_from=base), Console(quiet=True))
        assert not list((runs / f"ft-{other}").rglob("*"))  # refused before anything was stored
    assert run_job(spec(tmp_path, "ft", "binary", "rope", init_from=base), Console(quiet=True)) == 0
    summary = json.loads((runs / "ft/summary.json").read_text())
    assert summary["model_config"]["positions"] == "rope"
    # the stored config rebuilds the model, and the stored weights load into it exactly
    model = BEHRTForPrediction(BEHRTConfig(**summary["model_config"]), num_outputs=1)
    model.load_state_dict(load_file(runs / "ft/model.safetensors"), strict=True)
    learned = BEHRTForPrediction(BEHRTConfig(**{**summary["model_config"], "positions": "learned"}), num_outputs=1)
    with pytest.raises(RuntimeError, match="embeddings.position.weight"):
        learned.load_state_dict(load_file(runs / "ft/model.safetensors"), strict=True)
