"""`ehrseq bench gpu` on a machine without CUDA: exit 2 with one line, and every code path run on CPU."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq_runner.commands import gpu_check
from ehrseq_runner.job.prepare import prepare_data

from support.reference_batches import token_arrays
from support.reference_histories import EncodedPatient

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


@no_cuda
def test_exits_2_with_one_line_without_cuda(cli):
    result = cli("bench", "gpu", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_flops_per_token_counts_encoder_matrices_and_attention():
    model = BEHRTForMLM(BEHRTConfig.large(vocab_size=1000))  # 8 layers, width 384, feed-forward 1536
    weights = 8 * (4 * 384 * 384 + 2 * 384 * 1536)  # q, k, v, output + up, down: 14,155,776
    assert gpu_check.flops_per_token(model, 512) == 6 * weights + 12 * 8 * 384 * 512 == 103_809_024


@pytest.mark.parametrize("name,precision,peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 PCIe", "fp32", 51.0),
    ("NVIDIA A40", "bf16", 149.7), ("NVIDIA L40S", "bf16", 362.0), ("NVIDIA L4", "fp32", 30.3),
    ("NVIDIA H200", "bf16", 989.0), ("Tesla T4", "bf16", None),
])
def test_peak_of_known_gpus(name, precision, peak):
    assert gpu_check.peak_tflops(name, precision) == peak


def test_throughput_collation_and_resume_on_cpu(tmp_path):
    cpu = torch.device("cpu")
    job = gpu_check.large_job(200, 8, gpu_check.MODES[0], 5, "cpu", preset="small", seq_len=32)
    data = prepare_data(job, tmp_path / "data")
    row = gpu_check.training_throughput(job, data, gpu_check.MODES[0], cpu, warmup_steps=2, steps=3)
    assert row["mode"] == "fp32" and row["preset"] == "small" and row["seq_len"] == 32
    assert row["tokens_per_s"] > 0 and math.isfinite(row["loss"])
    assert row["achieved_tflops"] == pytest.approx(row["tokens_per_s"] * row["gflops_per_token"] / 1000)
    assert row["mfu"] is None and row["peak_memory_gb"] is None  # no peak or allocator on CPU
    lengths = sorted(data.encoded["train"].lengths.tolist())
    assert lengths[0] <= row["attended_len"] <= 32  # the padded length a token sees, at most max_seq_len
    patients = SimpleNamespace(lengths=np.array([2, 4, 6, 8]))  # length-grouped batches: (8, 6), (4, 2)
    assert gpu_check.attention_length(patients, 2) == pytest.approx(((8 + 6) * 8 + (4 + 2) * 4) / 20)

    assert gpu_check.collation_throughput(data.encoded["train"], 8, pin=False, seconds=0.2) > 0

    resume = gpu_check.resume_check(cpu, steps=6, num_patients=150)
    assert resume["exact"] and resume["max_rel_loss_diff"] == 0.0 and resume["within_tolerance"]
    assert not torch.are_deterministic_algorithms_enabled()  # switched back off for whatever runs next


@no_cuda
@pytest.mark.slow
def test_whole_command_on_cpu(cli, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "gpu", "--allow-cpu", "--preset", "small", "--num-patients", "200", "--batch-size", "8",
                 "--seq-len", "32", "--warmup-steps", "2", "--steps", "3", "--sigterm-warmup-s", "0.5",
                 "--sigterm-preset", "small", "--resume-patients", "150", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and [r["mode"] for r in figures["training"]] == ["fp32"]
    assert figures["collation"]["collate_tokens_per_s"] > 0
    sigterm = figures["sigterm"][0]
    assert (sigterm["exit_code"], sigterm["state"]) == (75, "preempted") and sigterm["durable_step"] > 0
    assert figures["verify_resume"]["exact"]
    ddp = figures["ddp"]
    assert (ddp["processes"], ddp["backend"], ddp["exit_code"], ddp["state"]) == (1, "gloo", 0, "completed")


def test_attention_length_and_collation_take_token_arrays_as_the_trainer_does():
    patients = [EncodedPatient(i, [5] * n, [0] * n, [0] * n, list(range(n))) for i, n in enumerate((2, 4, 6, 8))]
    arrays = token_arrays(patients)
    expected = ((8 + 6) * 8 + (4 + 2) * 4) / 20
    assert gpu_check.attention_length(arrays, 2) == pytest.approx(expected)
    assert gpu_check.collation_throughput(arrays, 2, pin=False, seconds=0.05) > 0
