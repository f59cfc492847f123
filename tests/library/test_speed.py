"""Mixed precision, gradient accumulation and the speed benchmarks (no timed assertions: the machine is noisy)."""

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from ehrseq.data.batching import Batch
from ehrseq.data.token_arrays import TokenArrays
from ehrseq.errors import InputError
from ehrseq.models import BEHRT, BEHRTConfig
from ehrseq.training.precision import resolve_precision
from ehrseq.training.state import capture, load_snapshot
from ehrseq.training.trainer import TrainConfig, Trainer
from ehrseq.training.verify import verify_resume
from ehrseq_runner.commands.bench import _bench_trainer, data_throughput, hf_comparison
from ehrseq_runner.spec.job_spec import load_spec

from support.helpers import SMALL_SPEC
from support.reference_batches import token_arrays
from support.reference_histories import EncodedPatient

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize("requested,device,bf16,expected", [
    ("auto", CPU, False, "fp32"), ("auto", MPS, False, "fp32"),
    ("auto", CUDA, True, "bf16"), ("auto", CUDA, False, "fp16"),
    ("fp32", CUDA, True, "fp32"), ("fp16", CUDA, True, "fp16"), ("bf16", CPU, False, "bf16"),
    ("fp16", MPS, False, "fp16"),
])
def test_precision_resolution(requested, device, bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_precision(requested, device) == expected


def test_precision_refuses_what_the_device_cannot_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(InputError, match="bf16"):
        resolve_precision("bf16", CUDA)
    with pytest.raises(InputError, match="train.precision"):
        resolve_precision("fp8", CPU)


def test_precision_and_accumulation_change_the_fingerprint_compile_does_not():
    base = load_spec(SMALL_SPEC).fingerprint()
    assert load_spec(SMALL_SPEC, ["train.compile=true"]).fingerprint() == base
    assert load_spec(SMALL_SPEC, ["train.precision=bf16"]).fingerprint() != base
    assert load_spec(SMALL_SPEC, ["train.grad_accum_steps=2"]).fingerprint() != base


class FirstTokenTask:
    """A per-patient loss (mean over patients of a function of the [CLS] state): accumulation is exact."""

    name = "first_token"

    def training_loss(self, model, batch: Batch, generator, device):
        b = batch.to(device)
        h = model(b.codes, b.ages, b.segments, b.positions, b.attention_mask)
        return (h[:, 0] ** 2).sum(-1).mean()

    def evaluate(self, model, batches, device, seed, should_stop):
        return SimpleNamespace(metrics=dict)


def tiny_config(vocab_size: int, **kw) -> BEHRTConfig:
    return BEHRTConfig(vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, **kw)


def patients(n: int, vocab: int = 40, seed: int = 0) -> TokenArrays:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(4, 20, (1,), generator=g))
        codes = [1, *torch.randint(5, vocab, (length - 1,), generator=g).tolist()]
        out.append(EncodedPatient(i, codes, [300 + j for j in range(length)], [j % 2 for j in range(length)],
                                  [j // 3 for j in range(length)]))
    return token_arrays(out)


def one_step_gradients(grad_accum_steps: int, batch_size: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BEHRT(tiny_config(40, dropout=0.0))
    train = patients(32)
    trainer = Trainer(model, FirstTokenTask(), train, train, TrainConfig(
        max_steps=1, batch_size=batch_size, grad_accum_steps=grad_accum_steps, eval_every=0, grad_clip=1e9), CPU)
    trainer.fit()  # gradients of the step stay in .grad (they are cleared at the start of the next)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_two_micro_batches_give_the_gradient_of_the_whole_batch():
    whole, accumulated = one_step_gradients(1), one_step_gradients(2)
    assert whole.keys() == accumulated.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batches_split_the_step_batch_in_order():
    train = patients(16)
    trainer = Trainer(BEHRT(tiny_config(40)), FirstTokenTask(), train, train,
                      TrainConfig(batch_size=8, grad_accum_steps=4), CPU)
    parts = trainer.micro_batches(7, list(range(8)))
    assert [p for _, p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert len({seed for seed, _ in parts}) == 4  # each micro-batch has its own masks and dropout
    one = Trainer(BEHRT(tiny_config(40)), FirstTokenTask(), train, train,
                  TrainConfig(batch_size=8), CPU)
    assert one.micro_batches(7, list(range(8)))[0][1] == list(range(8))


def mlm_trainer(precision: str, max_steps: int = 6) -> Trainer:
    from ehrseq.data.vocab import Vocabulary
    from ehrseq.models import BEHRTForMLM
    from ehrseq.tasks.mlm import MLMTask

    vocab = Vocabulary({f"c{i}": 10 for i in range(35)})
    torch.manual_seed(0)
    model = BEHRTForMLM(tiny_config(len(vocab)))
    train = patients(32)
    return Trainer(model, MLMTask(vocab), train, train.select(slice(0, 8)), TrainConfig(
        max_steps=max_steps, batch_size=8, log_every=1, eval_every=0, precision=precision), CPU)


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    trainer = mlm_trainer("fp16", max_steps=3)
    trainer.fit()
    saved = trainer.scaler.state_dict()
    assert trainer.scaler.is_enabled() and saved != torch.amp.GradScaler("cpu").state_dict()  # it moved
    capture(trainer.state_dict(), 3, {}, {}).write(tmp_path)
    restored = mlm_trainer("fp16")
    restored.load_state_dict(load_snapshot(tmp_path, CPU))
    assert restored.scaler.state_dict() == saved


def test_fp16_with_its_scaler_resumes_exactly_on_cpu():
    result = verify_resume(lambda: mlm_trainer("fp16"))
    assert result.losses_match and result.parameters_match


def test_bench_hf_returns_finite_ratios_on_a_tiny_shape():
    row = hf_comparison("small", vocab_size=50, batch_size=4, seq_len=16, steps=1, rounds=2,
                        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    assert math.isfinite(row["behrt/hf"]) and row["behrt/hf"] > 0 and math.isfinite(row["full_vocab/hf"])
    assert 0.05 < row["masked"] < 0.3 and row["precision"] == "fp32"


def test_bench_data_reports_every_stage_consistently(cli, tmp_path):
    out = tmp_path / "bench-data.json"
    result = cli("bench", "data", "--num-patients", "300", "--repeats", "1", "--batch-size", "8", "--out", str(out),
                 timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["stage"] for row in report["stages"]] == [
        "write synthetic MEDS (untimed)", "MEDS -> token cache: build", "token cache: reuse (lookup hits)",
        "batches: TokenArrays.collate (1 epoch)", "binary examples -> token cache: build",
        "gbm count features from the examples cache"]
    build, reuse, new, examples, features = report["stages"][1:]
    counts = report["counts"]
    assert counts["events"] > 0 and 0 < counts["train_tokens_batched"] <= counts["tokens"]
    assert build["events_per_s"] == pytest.approx(counts["events"] / build["seconds"])
    assert 0 < reuse["seconds"] < build["seconds"] and reuse["speedup"] == pytest.approx(build["seconds"]
                                                                                         / reuse["seconds"])
    assert new["tokens_per_s"] == pytest.approx(counts["train_tokens_batched"] / new["seconds"])
    assert 0 < build["peak_rss_mb"] <= report["raw"]["build"]["peak_rss_mb_all_runs"]
    assert 0 < counts["examples"]["patients"] <= counts["examples"]["label_rows"]
    assert examples["events_per_s"] > 0 and features["peak_rss_mb"] > 0 and features["events_per_s"] > 0
    assert "TokenArrays.collate" in result.stdout and "token cache" in result.stdout  # the table


def test_bench_memory_trains_on_the_token_cache():
    trainer, tmp = _bench_trainer("small", max_steps=2)
    try:
        assert isinstance(trainer.train_set, TokenArrays) and len(trainer.tuning_set) == 64
        assert trainer.fit() and trainer.state.step == 2
    finally:
        shutil.rmtree(tmp)


def test_bench_data_reuses_its_dataset(tmp_path):
    report = data_throughput(num_patients=120, batch_size=8, repeats=1, work=tmp_path)
    assert report["stages"][-1]["stage"] == "gbm count features from the examples cache"
    again = data_throughput(num_patients=120, batch_size=8, repeats=1, work=tmp_path)
    assert report["stages"][0]["seconds"] > 0 and again["stages"][0]["seconds"] == 0  # the dataset reused
    assert again["counts"] == report["counts"]
