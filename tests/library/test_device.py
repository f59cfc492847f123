"""Issue 27: a paid GPU never trains on the CPU. A host GPU that torch cannot use is refused in one line (exit 2,
nothing stored); the CPU runs only when asked for; every run records where it ran; threads fit the CPU budget.

The build machine has no GPU: a stand-in `nvidia-smi` first on PATH plays an A40 on driver 550 (CUDA 12.4).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ehrseq.errors import InputError
from ehrseq.reports.provenance import cpu_model, hardware_facts
from ehrseq.reports.summary import describe_hardware
from ehrseq.training import device as device_mod
from ehrseq.training.device import NvidiaHost, check_accelerator, probe_nvidia, unusable_gpu_message
from ehrseq.training.threads import cpu_budget, thread_count

from support.helpers import REPO, SMALL_SPEC

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA A40 (UUID: GPU-0f3b6c1e-5b2a-4c1d-9e8f-1a2b3c4d5e6f)" ;;
  *) echo "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |" ;;
esac
"""
A40 = NvidiaHost(("NVIDIA A40",), "550.54.15", "12.4")


@pytest.fixture
def a40_on_path(tmp_path, monkeypatch):
    """A stand-in nvidia-smi first on PATH (subprocesses inherit it)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(NVIDIA_SMI)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_the_probe_reads_gpu_driver_and_cuda_from_nvidia_smi(a40_on_path, tmp_path):
    assert probe_nvidia(device_node=tmp_path / "absent") == A40
    assert A40.describe() == "NVIDIA A40 (driver 550.54.15, CUDA Version 12.4)"
    two = NvidiaHost(("NVIDIA H100 80GB HBM3",) * 2, "570.86.15", "12.8")
    assert two.describe() == "2 x NVIDIA H100 80GB HBM3 (driver 570.86.15, CUDA Version 12.8)"


def test_no_nvidia_smi_means_no_gpu_unless_the_device_node_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert probe_nvidia(device_node=tmp_path / "nvidia0") is None
    (tmp_path / "nvidia0").touch()
    host = probe_nvidia(device_node=tmp_path / "nvidia0")
    assert host is not None and host.gpus == () and "nvidia-smi failed" in host.problem


@pytest.mark.parametrize(("build", "expected"), [
    (None, "CPU-only build) cannot use it; fix: install torch built for CUDA 12.x, as the CUDA image does"),
    ("13.0", "built for CUDA 13.0) cannot use it; fix: an image built for CUDA 12.x (Dockerfile TORCH_SPEC; "
             "its default torch==2.10.* is CUDA 12.8, for drivers >= 525) or a pod filtered to CUDA version >= 13.0"),
    ("12.8", "built for CUDA 12.8) cannot use it; fix: check that the container was started with the GPU"),
])
def test_the_refusal_names_the_gpu_the_builds_and_the_fix(build, expected, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", build)  # the build torch reports; the machine's own is CPU-only
    message = unusable_gpu_message(A40, "auto")
    assert message.startswith(f"train.device=auto: this host has NVIDIA A40 (driver 550.54.15, CUDA Version 12.4) "
                              f"but torch {torch.__version__} (")
    assert expected in message and message.endswith("or --set train.device=cpu to train on the CPU on purpose")
    assert "\n" not in message


def test_only_the_cpu_asked_for_or_a_usable_accelerator_passes():
    for requested in ("auto", "cuda"):
        with pytest.raises(InputError, match="NVIDIA A40"):
            check_accelerator(requested, A40, mac_gpu=False, cuda_ok=False, mps_ok=False)
    check_accelerator("auto", A40, mac_gpu=False, cuda_ok=True, mps_ok=False)
    check_accelerator("auto", None, mac_gpu=False, cuda_ok=False, mps_ok=False)  # a CPU host: the CPU, silently
    for requested in ("auto", "mps"):  # Apple silicon whose torch lacks MPS
        with pytest.raises(InputError, match="this Mac has an Apple GPU but torch .* cannot use MPS"):
            check_accelerator(requested, None, mac_gpu=True, cuda_ok=False, mps_ok=False)
    check_accelerator("auto", None, mac_gpu=True, cuda_ok=False, mps_ok=True)
    assert device_mod.apple_silicon("Darwin", "arm64") and not device_mod.apple_silicon("Darwin", "x86_64")
    assert not device_mod.apple_silicon("Linux", "arm64")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrseq_runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _one_refusal_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(r"error: train\.device=auto: this host has NVIDIA A40 \(driver 550\.54\.15, CUDA Version "
                        r"12\.4\) but torch \S+ \((CPU-only build|built for CUDA [0-9.]+)\) cannot use it; fix: .*; "
                        r"or --set train\.device=cpu to train on the CPU on purpose", lines[0]), lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the stand-in plays a GPU torch cannot use")
def test_run_ladder_and_verify_resume_refuse_before_storing_anything(a40_on_path, tmp_path):
    before = set(tmp_path.iterdir())
    _one_refusal_line(_cli("run", str(SMALL_SPEC), "--set", "storage.uri=file://./runs", cwd=tmp_path))
    _one_refusal_line(_cli("run", str(SMALL_SPEC), "--nproc", "2", "--set", "train.batch_size=8", cwd=tmp_path))
    _one_refusal_line(_cli("ladder", str(REPO / "jobs/ladder_tiny.yaml"), cwd=tmp_path))
    _one_refusal_line(_cli("verify-resume", str(SMALL_SPEC), "--steps", "2", cwd=tmp_path))
    assert set(tmp_path.iterdir()) == before  # no runs/ folder, no lease, no ladder report


@pytest.mark.slow
def test_the_cpu_on_purpose_runs_and_the_summary_says_where(a40_on_path, tmp_path):
    result = _cli("run", str(SMALL_SPEC), "--set", "train.device=cpu", "--set", "data.num_patients=60",
                  "--set", "train.max_steps=3", "--set", f"runtime.work_dir={tmp_path}/work", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs/behrt-small-mlm"
    hardware = json.loads((run / "summary.json").read_text())["hardware"]
    assert hardware["device"] == "cpu" and "gpu" not in hardware
    assert hardware["torch"] == torch.__version__ and hardware["cuda_build"] == torch.version.cuda
    assert hardware["cpu"]["model"] == cpu_model() and 1 <= hardware["cpu"]["threads"] <= hardware["cpu"]["cpus_usable"]
    assert f"| Hardware | {describe_hardware(hardware)} |" in (run / "SUMMARY.md").read_text()
    assert describe_hardware(hardware).startswith(f"**CPU**: {cpu_model()}, {hardware['cpu']['threads']} torch threads")


def test_a_gpu_summary_line_names_count_memory_driver_and_builds():
    hardware = {"device": "cuda:0", "torch": "2.10.0+cu128", "cuda_build": "12.8",
                "cpu": {"model": "AMD EPYC 7543", "threads": 8, "cpus_usable": 8, "cpus_host": 128},
                "gpu": {"model": "NVIDIA A40", "count": 2, "memory_gib": 44.4, "driver": "550.54.15",
                        "driver_cuda": "12.4"}}
    assert describe_hardware(hardware) == (
        "**GPU**: 2 x NVIDIA A40, 44.4 GiB each, driver 550.54.15 (CUDA Version 12.4); torch 2.10.0+cu128, CUDA 12.8 "
        "build; host CPU AMD EPYC 7543, 8 torch threads (8 of 128 CPUs usable)")


def test_hardware_facts_on_cuda_take_the_driver_from_nvidia_smi(a40_on_path, monkeypatch):
    """No GPU here: torch's device properties are stood in for; the driver comes from the stand-in nvidia-smi."""
    class Props:
        name, total_memory = "NVIDIA A40", 47_697_362_944

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    gpu = hardware_facts("cuda:0", processes=2)["gpu"]
    assert gpu == {"model": "NVIDIA A40", "count": 2, "memory_gib": 44.4, "driver": "550.54.15", "driver_cuda": "12.4"}


def test_hardware_facts_on_the_cpu_name_the_cpu_and_threads():
    facts = hardware_facts("cpu")
    assert facts["cpu"]["threads"] == torch.get_num_threads() and facts["cpu"]["cpus_host"] == os.cpu_count()
    models = [line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    assert facts["cpu"]["model"] == (models[0] if models else cpu_model()) and "gpu" not in facts


@pytest.mark.parametrize(("affinity", "cpu_max", "expected"), [
    (16, "max 100000", 16),          # no quota: the affinity mask
    (16, "200000 100000", 2),        # a 2-CPU container on a 16-core host
    (16, "150000 100000", 2),        # 1.5 CPUs: a second thread still gets half a core
    (4, "800000 100000", 4),         # pinned to 4 cores, quota of 8
    (16, "50000 100000", 1),         # half a CPU: one thread
    (8, "garbage", 8),               # an unreadable quota limits nothing
])
def test_the_cpu_budget_is_affinity_capped_by_the_cgroup_quota(affinity, cpu_max, expected):
    assert cpu_budget(affinity=affinity, cpu_max=cpu_max) == expected


def test_threads_follow_the_budget_unless_the_user_set_them():
    assert thread_count(env={}, budget=6) == 6
    assert thread_count(env={}, budget=6, processes=2) == 3  # `ehrseq run --nproc 2` on CPU: half each
    assert thread_count(env={}, budget=1, processes=2) == 1
    assert thread_count(env={"OMP_NUM_THREADS": "5"}, budget=6) is None  # the user's choice stands
    assert cpu_budget() == len(os.sched_getaffinity(0)) or Path("/sys/fs/cgroup/cpu.max").is_file()
