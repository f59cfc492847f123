"""Reaching back further: each BEHRT size's window (data.max_seq_len), its position table, and `bench length`."""

import json

import pytest
import torch

from ehrseq.models import BEHRT, BEHRTConfig
from ehrseq.models.behrt import position_buckets
from ehrseq.windows import SEQ_LENS
from ehrseq_runner.spec.job_spec import SpecError, load_spec

from support.helpers import SMALL_SPEC


def test_the_position_table_holds_every_visit_a_window_can():
    assert [position_buckets(t) for t in (128, 512, 1024, 2048, 4096)] == [256, 256, 512, 1024, 2048]
    assert BEHRTConfig.preset("small", 50).max_position == 256  # as every model trained before
    assert BEHRTConfig.preset("large", 50, max_seq_len=4096).max_position == 2048
    with pytest.raises(ValueError, match="BEHRT medium is sized for up to 2,048 tokens, not 4,096"):
        BEHRTConfig.preset("medium", 50, max_seq_len=4096)


def test_a_2048_token_window_of_one_token_visits_trains_with_distinct_positions():
    T = 2048
    config = BEHRTConfig.preset("small", 40, max_seq_len=T, hidden_size=16, num_layers=1, num_heads=2,
                                intermediate_size=32, positions="learned")
    model = BEHRT(config)
    positions = torch.arange(T)[None, :] // 2  # [CLS] v0 [SEP] v1 [SEP] ...: the most visits T tokens hold
    codes = torch.randint(5, 40, (1, T))
    out = model(codes, torch.zeros_like(codes), positions % 2, positions, torch.ones_like(codes))
    assert out.shape == (1, T, 16) and positions.max() < config.max_position
    out.sum().backward()
    assert model.embeddings.position.weight.grad[: T // 2].abs().sum(1).gt(0).all()  # no index clamped together


@pytest.mark.parametrize("size, most", [(size, most) for size, (_, most) in SEQ_LENS.items()])
def test_the_spec_takes_each_size_up_to_its_window(size, most):
    assert load_spec(SMALL_SPEC, [f"model.size={size}", f"data.max_seq_len={most}"]).data.max_seq_len == most
    if most < 4096:
        with pytest.raises(SpecError, match=f"data.max_seq_len: 4,096 tokens is more than BEHRT {size} is sized "
                                            f"for \\({most:,}\\); model.size large takes up to 4,096"):
            load_spec(SMALL_SPEC, [f"model.size={size}", "data.max_seq_len=4096"])


def test_bench_length_reports_step_time_and_peak_memory(cli, tmp_path):
    out = tmp_path / "length.json"
    result = cli("bench", "length", "--seq-len", "64", "--seq-len", "128", "--batch-size", "2", "--steps", "1",
                 "--vocab-size", "50", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["preset"], r["seq_len"]) for r in rows] == [("small", 64), ("small", 128)]
    assert all(r["ms_per_step"] > 0 and r["peak_mb"] > 0 and r["tokens_per_s"] > 0 for r in rows)
