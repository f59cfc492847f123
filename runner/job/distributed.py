"""`ehrseq run SPEC --nproc N`: DistributedDataParallel training, launched through torchrun.

The launcher runs `python -m torch.distributed.run --standalone --nproc-per-node N -m ehrseq_runner run SPEC ...`;
each process trains on its share of every batch (see ehrseq.training.trainer). Rank 0 is the run exactly as a
single process runs it: status, metrics, checkpoints and the bundle. The other ranks (`run_worker`) read the same
inputs and checkpoint through the same functions (job/inputs.py) and write nothing to storage. A stop request on
any rank stops every rank at the same step (the flag is reduced across ranks each step); rank 0 commits its
checkpoint within checkpoint.grace_seconds while the others wait for it at a barrier, and all exit 75.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from ehrseq.errors import InputError
from ehrseq.training import distributed
from ehrseq.training.device import resolve_device
from ehrseq.training.threads import thread_count
from ehrseq_runner.checkpoints.store import CheckpointStore
from ehrseq_runner.job.inputs import read_inputs
from ehrseq_runner.job.preemption import EXIT_PREEMPTED, StopRequest
from ehrseq_runner.job.prepare import make_trainer
from ehrseq_runner.job.resume import restore, resume_snapshot
from ehrseq_runner.spec.job_spec import BASELINES, JobSpec
from ehrseq_runner.storage.local import LocalStorage
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage


def launch(spec: JobSpec, argv: list[str], nproc: int) -> int:
    """Runs `ehrseq run argv...` in `nproc` processes under torchrun; the exit code follows single-process runs.

    torchrun runs in its own session, so a Ctrl-C reaches it once, from here, as SIGTERM: each rank then gets
    one stop request (a second SIGINT would make a rank exit at once). torchrun gives ranks 30 s after
    forwarding the signal before killing them.
    """
    if spec.model.kind in BASELINES:
        raise InputError(f"--nproc: model.kind {spec.model.kind} is fitted in one go, not trained in steps")
    parts = nproc * spec.train.grad_accum_steps
    if spec.train.batch_size % parts:
        raise InputError(f"train.batch_size: {spec.train.batch_size} does not split into {nproc} processes x "
                         f"{spec.train.grad_accum_steps} micro-batches")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ehrseq_runner", "run", *argv]
    threads = thread_count(processes=nproc)  # the CPU budget split between the ranks (torchrun's default: 1 each)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads is not None else {})}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    forward = {s: signal.signal(s, lambda signum, frame: proc.send_signal(signal.SIGTERM))
               for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for signum, handler in forward.items():
            signal.signal(signum, handler)
    run = RunFolder(open_storage(spec.storage.uri, spec.storage.endpoint_url), spec.resolved_run_id)
    if code != 0 and (run.read_status() or {}).get("state") == "preempted":
        return EXIT_PREEMPTED  # torchrun reports a rank's exit 75 as its own failure (1)
    return code


def run_worker(spec: JobSpec, run: RunFolder, stop: StopRequest, console: Console) -> int:
    """A rank other than 0: the same inputs, model, checkpoint and steps as rank 0 (job/inputs.py); no storage
    writes (the dataset cache rank 0 filled is reused, never uploaded)."""
    base = Path(spec.runtime.work_dir or Path(tempfile.gettempdir()) / "ehrseq")
    work = base / spec.resolved_run_id / f"rank-{distributed.rank()}"
    device = resolve_device(spec.train.device)
    pretrained, data = read_inputs(spec, base / "datasets")
    if distributed.any_rank(stop()):
        return EXIT_PREEMPTED
    trainer = make_trainer(spec, data, device, should_stop=stop, pretrained=pretrained)
    local_dir = spec.checkpoint.local_dir
    tiers = [CheckpointStore(RunFolder(LocalStorage(Path(local_dir)), run.run_id))] if local_dir else []
    resumed = resume_snapshot([*tiers, CheckpointStore(run)], work / "resume", device, warn=lambda message: None)
    if resumed is not None:  # exactly the step rank 0 resumes from (no rank writes one before training)
        restore(trainer, resumed[2])
        console.print(f"rank {distributed.rank()}: resumed from step {resumed[0]['step']}", highlight=False)
    finished = trainer.fit()
    distributed.barrier()  # rank 0 has committed its checkpoint
    if finished:
        return 0
    console.print(f"rank {distributed.rank()}: stopped at step {trainer.state.step}", highlight=False)
    return EXIT_PREEMPTED
