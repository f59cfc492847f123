"""CPU threads sized to the cores this process may use, not the host's.

torch and pyarrow size their pools by the host's core count. In a container with a CPU quota, or pinned to a
few cores, or sharing them with other processes, that oversubscribes: on a 2-core machine with one other busy
process, two torch threads trained BEHRT-small at 400-700 tokens/s, one thread at 10-15k. The budget is the
smaller of the CPU affinity mask and the cgroup v2 quota (`cpu.max`), shared by training (torch's intra-op
pool) and data loading (pyarrow's CPU pool), and split between the processes `ehrseq run --nproc N` starts
(through OMP_NUM_THREADS, which torch and pyarrow both read). A user's OMP_NUM_THREADS wins.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_budget(affinity: int | None = None, cpu_max: str | None = None) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota ("QUOTA PERIOD", or "max").

    Arguments default to the running process's (`os.sched_getaffinity`, /sys/fs/cgroup/cpu.max when present)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpu_max is None:
        try:
            cpu_max = CGROUP_CPU_MAX.read_text()
        except OSError:
            cpu_max = "max"
    budget = affinity
    quota, _, period = cpu_max.strip().partition(" ")
    if quota != "max":
        with contextlib.suppress(ValueError, ZeroDivisionError):  # an unreadable quota limits nothing
            budget = min(budget, math.ceil(int(quota) / int(period or 100000)))
    return max(1, budget)


def thread_count(env: Mapping[str, str] | None = None, budget: int | None = None, processes: int = 1) -> int | None:
    """Threads for each of `processes` processes sharing the budget; None when the user set OMP_NUM_THREADS
    (torch and pyarrow then already follow it)."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, (cpu_budget() if budget is None else budget) // max(1, processes))


def configure_threads() -> int:
    """Sets torch's intra-op threads and pyarrow's CPU pool to `thread_count()`; returns torch's thread count."""
    import pyarrow as pa
    import torch

    threads = thread_count()
    if threads is not None:
        torch.set_num_threads(threads)
        pa.set_cpu_count(threads)
    return torch.get_num_threads()
