"""What a summary records so that runs can be trusted side by side: the code, the data, the compute.

The data fingerprint decides whether two runs may be compared at all: equal fingerprints mean the same
dataset, the same patient-level splits and the same held-out subjects.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import meds
import numpy as np
import pyarrow.parquet as pq

from ehrseq.data.meds_io import MedsDataset


def git_commit(repo: Path | None = None) -> str | None:
    """EHRSEQ_GIT_COMMIT (set it when building an image), else `git rev-parse HEAD` of the code; None otherwise."""
    if os.environ.get("EHRSEQ_GIT_COMMIT"):
        return os.environ["EHRSEQ_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    """torch, its CUDA build, Python and ehrseq ("unknown" when not installed as a package)."""
    import torch

    try:
        version = importlib.metadata.version("ehrseq")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "ehrseq": version}

def dataset_identity(dataset: MedsDataset) -> str:
    """The dataset's name (metadata/dataset.json) and event count: which data, without hashing every row."""
    return identity_of(dataset_name(dataset.path), dataset.data.num_rows)


def identity_of(name: str, num_events: int) -> str:
    """The identity string from its parts (the token-cache path has the count, not the table)."""
    return f"{name} ({num_events} events)"


def dataset_name(path: Path | None) -> str:
    """`dataset_name` from `path`/metadata/dataset.json, or "unnamed"."""
    name = "unnamed"
    if path is not None:
        with contextlib.suppress(OSError, ValueError):  # a dataset without metadata still has its events
            name = json.loads((path / "metadata" / "dataset.json").read_text()).get("dataset_name", name)
    return name


def read_splits_mapping(path: Path) -> dict[int, str]:
    """Subject -> split of the dataset at `path`, as `MedsDataset.splits` holds it (for the data fingerprint)."""
    table = pq.read_table(Path(path) / meds.subject_splits_filepath, columns=["subject_id", "split"])
    return dict(zip(table.column("subject_id").to_pylist(), table.column("split").to_pylist(), strict=True))


def data_fingerprint(identity: str, splits: Mapping[int, str], held_out_ids: Iterable[int]) -> str:
    """Hash of the dataset identity, every subject's split and the evaluated held-out subjects."""
    ids = np.sort(np.fromiter(splits.keys(), dtype=np.int64))
    h = hashlib.sha256(identity.encode() + b"\0")
    h.update(ids.tobytes())
    h.update("\n".join(splits[int(i)] for i in ids).encode() + b"\0")
    h.update(np.sort(np.fromiter(held_out_ids, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def compute_facts(wall_time_s: float, device: str, price_per_hour: float | None,
                  processes: int = 1) -> dict[str, Any]:
    """Wall time, GPU-hours (one GPU per process on cuda, none elsewhere) and cost at the pod's hourly price."""
    hours = wall_time_s / 3600
    gpus = processes if device.startswith("cuda") else 0
    facts: dict[str, Any] = {"wall_time_s": wall_time_s, "device": device, "gpus": gpus,
                             "gpu_hours": hours * gpus, "price_per_hour": price_per_hour,
                             "cost": None if price_per_hour is None else hours * price_per_hour}
    if gpus:
        import torch

        facts["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def hardware_facts(device: str, processes: int = 1) -> dict[str, Any]:
    """Where the run ran, so a reader tells a GPU run from a CPU one at a glance: the GPU model, count (one per
    process), memory, driver and the newest CUDA it runs; torch and its CUDA build; the CPU model, torch's
    threads and the CPUs the process could use (the host's CPU feeds the GPU, so it is recorded on GPU runs too)."""
    import torch

    from ehrseq.training.device import probe_nvidia
    from ehrseq.training.threads import cpu_budget

    facts: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cpu": {"model": cpu_model(), "threads": torch.get_num_threads(), "cpus_usable": cpu_budget(),
                "cpus_host": os.cpu_count()}}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        host = probe_nvidia()
        facts["gpu"] = {"model": props.name, "count": processes, "memory_gib": round(props.total_memory / 2**30, 1),
                        "driver": host.driver if host else None, "driver_cuda": host.cuda if host else None}
    elif device.startswith("mps"):
        facts["gpu"] = {"model": f"Apple GPU ({facts['cpu']['model']})", "count": 1}
    return facts


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, sysctl on macOS, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        if out:
            return out
    return platform.processor() or platform.machine() or "unknown"
