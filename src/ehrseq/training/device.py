"""Device choice: `auto` prefers CUDA, then Apple MPS, then CPU -- but never the CPU on a host whose GPU torch
cannot use: a paid GPU pod running an image built for a newer CUDA than its driver would otherwise train for hours
on its CPU without a word. The host is asked directly (`nvidia-smi`, /dev/nvidia0, Apple silicon), not torch."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from ehrseq.errors import InputError, one_line

NVIDIA_DEVICE = Path("/dev/nvidia0")


@dataclass(frozen=True)
class NvidiaHost:
    """What the host's NVIDIA driver reports: GPU names, driver version and the newest CUDA that driver runs."""

    gpus: tuple[str, ...]
    driver: str | None
    cuda: str | None  # "CUDA Version" in nvidia-smi's header: the newest CUDA runtime the driver supports
    problem: str | None = None  # why nvidia-smi said nothing, when /dev/nvidia0 shows a GPU anyway

    def describe(self) -> str:
        names = ", ".join(f"{n} x {name}" if n > 1 else name for name, n in _counted(self.gpus)) or "an NVIDIA GPU"
        driver = f"driver {self.driver}" if self.driver else "driver version unknown"
        runs = f", CUDA Version {self.cuda}" if self.cuda else ""
        return f"{names} ({driver}{runs})" + (f" [{self.problem}]" if self.problem else "")


def probe_nvidia(device_node: Path = NVIDIA_DEVICE) -> NvidiaHost | None:
    """The host's NVIDIA GPUs: `nvidia-smi -L` for their names, `nvidia-smi`'s header for the driver version and
    the CUDA it runs; None when nvidia-smi shows no GPU and `device_node` is absent."""
    try:
        listing = _nvidia_smi("-L")  # GPU 0: NVIDIA A40 (UUID: GPU-...)
        header = _nvidia_smi()  # | NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |
    except (OSError, subprocess.SubprocessError) as e:
        if device_node.exists():
            return NvidiaHost((), None, None, problem=f"{device_node} exists but nvidia-smi failed: {one_line(e, 120)}")
        return None
    gpus = tuple(m.group(1) for m in re.finditer(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?\s*$", listing, re.MULTILINE))
    driver = re.search(r"Driver Version:\s*([0-9.]+)", header)
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    if not gpus and not driver and not device_node.exists():
        return None
    return NvidiaHost(gpus, driver.group(1) if driver else None, cuda.group(1) if cuda else None,
                      problem=None if gpus or driver else "nvidia-smi lists no GPU")


def _nvidia_smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def _counted(names: tuple[str, ...]) -> list[tuple[str, int]]:
    return [(name, names.count(name)) for name in dict.fromkeys(names)]


def torch_build() -> str:
    """torch's version and the CUDA it was built for, as the refusal names them."""
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return f"torch {torch.__version__} ({built})"


def unusable_gpu_message(host: NvidiaHost, requested: str) -> str:
    """One line: the GPU torch cannot use, why it most likely cannot, and the fixes (an image or pod that match,
    or the CPU on purpose). A driver runs every CUDA release of its own major version and older (minor-version
    compatibility: CUDA 12.x needs a driver >= 525, 13.x >= 580), so majors are compared."""
    built, runs = torch.version.cuda, host.cuda
    image = "Dockerfile TORCH_SPEC; its default torch==2.10.* is CUDA 12.8, for drivers >= 525"
    if built is None:
        fix = f"install torch built for CUDA {_major(runs)}.x" if runs else "install a CUDA build of torch"
        fix = f"fix: {fix}, as the CUDA image does ({image})"
    elif runs is None or _major(built) > _major(runs):
        fix = (f"fix: an image built for CUDA {_major(runs)}.x" if runs else "fix: an image built for an older CUDA")
        fix += f" ({image}) or a pod filtered to CUDA version >= {built}"
    else:
        fix = ("fix: check that the container was started with the GPU (docker run --gpus all) and that "
               "CUDA_VISIBLE_DEVICES names it")
    return (f"train.device={requested}: this host has {host.describe()} but {torch_build()} cannot use it; "
            f"{fix}; or --set train.device=cpu to train on the CPU on purpose")


def _major(version: str) -> int:
    return int(version.split(".")[0])


def apple_silicon(system: str | None = None, machine: str | None = None) -> bool:
    """A Mac with an Apple GPU (arm64; `machine` is x86_64 under Rosetta, where MPS is out of reach anyway)."""
    return (system or platform.system()) == "Darwin" and (machine or platform.machine()) == "arm64"


def unusable_mps_message(requested: str) -> str:
    why = "built without MPS" if not torch.backends.mps.is_built() else "MPS needs macOS 12.3 or later"
    return (f"train.device={requested}: this Mac has an Apple GPU but torch {torch.__version__} cannot use MPS "
            f"({why}); install torch's macOS arm64 wheel in an arm64 Python, or --set train.device=cpu to train on "
            "the CPU on purpose")


def check_accelerator(requested: str, host: NvidiaHost | None, mac_gpu: bool, cuda_ok: bool, mps_ok: bool) -> None:
    """Refuses (InputError) `auto`/`cuda` on a host with an NVIDIA GPU torch cannot use, and `auto`/`mps` on
    Apple silicon without MPS: falling back to the CPU there would bill a GPU for CPU work."""
    if requested in ("auto", "cuda") and not cuda_ok and host is not None:
        raise InputError(unusable_gpu_message(host, requested))
    if requested in ("auto", "mps") and not mps_ok and not cuda_ok and mac_gpu:
        raise InputError(unusable_mps_message(requested))


def resolve_device(name: str = "auto") -> torch.device:
    """The device `train.device` names; InputError when the host has a GPU torch cannot use (see module doc)."""
    cuda_ok = torch.cuda.is_available()
    mps_ok = torch.backends.mps.is_available()
    if name != "cpu":
        host = probe_nvidia() if name in ("auto", "cuda") and not cuda_ok else None
        check_accelerator(name, host, apple_silicon(), cuda_ok, mps_ok)
    if name == "auto":
        if cuda_ok:
            return _cuda()
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not cuda_ok:
        raise InputError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "mps" and not mps_ok:
        raise InputError("train.device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return _cuda() if name == "cuda" else torch.device(name)


def _cuda() -> torch.device:
    """Under torchrun each process drives the GPU of its LOCAL_RANK."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
