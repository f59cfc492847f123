"""The `ehrseq` command: run and validate job specs, inspect runs in storage."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ehrseq.errors import InputError, no_space
from ehrseq_runner.job.preemption import EXIT_PREEMPTED
from ehrseq_runner.spec.job_spec import load_spec
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.uri import open_storage, redact_credentials, split_run_uri

EXIT_BAD_INPUT = 2

# Bit-exact resume across processes on CPU: without this MKL may pick different kernels by memory alignment,
# so a resumed process could differ from the uninterrupted one in the last bits. Set before torch loads.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

app = typer.Typer(
    help="Train EHR sequence models on ephemeral GPU pods; every run leaves a bundle in storage.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
console = Console(stderr=True)
SetOption = Annotated[list[str], typer.Option(
    "--set", help="Override a spec field with type checking, e.g. --set train.max_steps=100 (repeatable).")]


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Job spec YAML, e.g. jobs/behrt_small.yaml.")],
    set_: SetOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the run's stored results and start over.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help=(
        "Processes for DistributedDataParallel, one per GPU (CPU: gloo), launched through torchrun; "
        "each takes its share of every batch and rank 0 writes the run."))] = 1,
) -> None:
    """Run a job, or resume it from its latest committed checkpoint in storage.

    Exit codes: 0 completed; 2 bad input; 75 preempted (SIGTERM/SIGINT: a checkpoint was committed
    within checkpoint.grace_seconds where possible -- run the same command again to resume);
    130 on a second Ctrl-C.
    """
    job = load_spec(spec, set_ or [])  # first: a bad spec fails in milliseconds, before torch loads
    from ehrseq_runner.job.run import run_job  # imports torch: keep `--help` and `validate` fast

    if nproc > 1:
        from ehrseq.training.device import resolve_device
        from ehrseq_runner.job.distributed import launch

        resolve_device(job.train.device)  # a GPU torch cannot use: one line and exit 2 here, not from each rank
        argv = [spec, *(a for item in set_ or [] for a in ("--set", item)), *(["--fresh"] if fresh else [])]
        _exit(launch(job, argv, nproc))
    _exit(run_job(job, console, fresh=fresh))


def _exit(code: int) -> None:
    if code == EXIT_PREEMPTED:
        # Whatever could be committed is; don't let interpreter shutdown wait on (or abort in) a checkpoint
        # thread that missed the grace budget.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command("verify-resume")
def verify_resume(
    spec: Annotated[str, typer.Argument(help="Job spec YAML.")],
    steps: Annotated[int, typer.Option(help="Steps to train both ways.")] = 40,
    set_: SetOption = None,
) -> None:
    """Check that resuming is exact: N steps straight vs the same N through a save and restore.

    Writes nothing to storage. Exit 0 when losses and final parameters match bit for bit, 1 otherwise.
    """
    import tempfile

    from ehrseq.training.device import resolve_device
    from ehrseq.training.threads import configure_threads
    from ehrseq.training.verify import verify_resume as check
    from ehrseq_runner.job.prepare import make_trainer, prepare_data

    job = load_spec(spec, [*(set_ or []), f"train.max_steps={steps}"])
    device = resolve_device(job.train.device)
    configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(job, Path(tmp))
        result = check(lambda: make_trainer(job, data, device))
    table = Table("", "straight", f"resumed at step {result.split_at}")
    table.add_row("training records", str(len(result.straight_losses)), str(len(result.resumed_losses)))
    table.add_row("last loss", repr(result.straight_losses[-1][1]), repr(result.resumed_losses[-1][1]))
    table.add_row("parameter sha256", result.straight_hash[:16], result.resumed_hash[:16])
    Console().print(table)
    ok = result.losses_match and result.parameters_match
    console.print(f"[green]match[/]: resume is exact on {device}" if ok else
                  f"[red]MISMATCH[/]: losses {'match' if result.losses_match else 'differ'}, parameters "
                  f"{'match' if result.parameters_match else 'differ'} on {device}")
    raise typer.Exit(0 if ok else 1)


@app.command()
def validate(
    spec: Annotated[str, typer.Argument(help="Job spec YAML.")],
    set_: SetOption = None,
) -> None:
    """Check a spec and print it fully resolved (defaults filled in). Exit 2 if invalid."""
    job = load_spec(spec, set_ or [])
    sys.stdout.write(job.to_yaml())


EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL); credentials from the AWS chain.")]


def _run_folder(run_uri: str, endpoint_url: str | None) -> RunFolder:
    base, run_id = split_run_uri(run_uri)
    return RunFolder(open_storage(base, endpoint_url), run_id)


@app.command()
def status(
    run_uri: Annotated[str, typer.Argument(help="A run, e.g. file://./runs/behrt-small-mlm or s3://bucket/runs/x.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print status.json as it is stored.")] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Show a run's state and last durable step (the newest checkpoint committed in storage). Exit 2 if no such run."""
    state = _run_folder(run_uri, endpoint_url).read_status()
    if state is None:
        raise InputError(f"{run_uri}: no such run (no status.json)")
    if as_json:
        sys.stdout.write(json.dumps(state, indent=2) + "\n")
        return
    table = Table(show_header=False, box=None)
    for key, value in state.items():
        table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)


@app.command("list")
def list_runs(
    storage_uri: Annotated[str, typer.Argument(help="A storage prefix, e.g. file://./runs or s3://bucket/runs.")],
    endpoint_url: EndpointOption = None,
) -> None:
    """List the runs under a storage prefix with their state, durable step and last update."""
    storage = open_storage(storage_uri, endpoint_url)
    table = Table("run", "state", "durable step", "updated")
    for key in storage.list():
        run_id, _, name = key.partition("/")
        if name == "status.json":
            try:
                s = RunFolder(storage, run_id).read_status() or {}
            except InputError as e:  # one damaged run never hides the others
                console.print(f"[yellow]warning:[/] skipped {escape(redact_credentials(str(e)))}", highlight=False,
                              soft_wrap=True)
                continue
            table.add_row(run_id, s.get("state", "?"), str(s.get("durable_step", "?")), str(s.get("updated_at", "")))
    Console().print(table)


@app.command()
def pull(
    run_uri: Annotated[str, typer.Argument(help="The run to download.")],
    dest: Annotated[Path, typer.Argument(help="Local folder to write into.")],
    what: Annotated[str, typer.Option(help="all | final (bundle, no checkpoints) | best (+ best checkpoint) | plots")]
    = "final",
    endpoint_url: EndpointOption = None,
) -> None:
    """Download a run's result bundle."""
    from ehrseq_runner.commands.pull import pull as pull_run

    files = pull_run(_run_folder(run_uri, endpoint_url), dest, what)
    console.print(f"pulled {len(files)} files into {escape(str(dest))}")


@app.command()
def export(
    run_uri: Annotated[str, typer.Argument(help="A completed run.")],
    dest: Annotated[Path, typer.Argument(help="Local folder to write the weights, vocab.json and config.json into.")],
    merge: Annotated[bool, typer.Option(
        "--merge", help="LoRA runs: fold the adapters into the base (fetched from model.init_from and checked "
        "against its sha256) and write full weights a plain BEHRTForPrediction loads.")] = False,
    endpoint_url: EndpointOption = None,
) -> None:
    """Export a run's weights: as stored (full weights, or a LoRA run's adapters and head), or merged."""
    from ehrseq_runner.commands.export import export_run

    files = export_run(_run_folder(run_uri, endpoint_url), dest, merge, endpoint_url)
    console.print(f"exported {', '.join(files)} into {escape(str(dest))}")


@app.command()
def compare(
    run_uris: Annotated[list[str], typer.Argument(help="Two or more runs; the first is the baseline of the tests.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, comparison.csv and plots/.")],
    force: Annotated[bool, typer.Option("--force", help="Compare runs on different data or tasks anyway.")] = False,
    resamples: Annotated[int, typer.Option(min=100, help="Paired bootstrap resamples of patients.")] = 1000,
    endpoint_url: EndpointOption = None,
) -> None:
    """Compare finished runs: metrics with CIs, size, time and cost, plots, paired bootstrap tests vs the first.

    Runs must share a data fingerprint (dataset, splits, held-out patients) and task; otherwise exit 2 with the
    reason, unless --force.
    """
    from ehrseq_runner.commands.compare import compare as compare_runs

    result = compare_runs(run_uris, out, force=force, endpoint_url=endpoint_url, num_resamples=resamples)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(escape(f"compared {len(result.runs)} runs: {result.report} and {result.table}"))


@app.command()
def ladder(
    spec: Annotated[str, typer.Argument(help="Ladder spec YAML, e.g. jobs/ladder_tiny.yaml.")],
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for report.md, ladder.csv and plots/ (default: ladder-<name>).")] = None,
    plan: Annotated[str | None, typer.Option(
        "--plan", help="Run nothing: print each rung's runs, steps, FLOPs and GPU-hours on this GPU (H100, A40, "
        "...) and the cost at runtime.price_per_hour. Prepares each cohort's data (the cache the runs reuse).")] = None,
    mfu: Annotated[float, typer.Option(
        "--mfu", min=0.001, max=1.0, help="--plan: the share of the GPU's bf16 peak training reaches (measure "
        "it with `ehrseq bench gpu`; small models reach little).")] = 0.1,
    overhead: Annotated[float, typer.Option(
        "--overhead", min=0.0, help="--plan: seconds per run beyond its FLOPs (data, held-out scoring, "
        "bundle upload).")] = 30.0,
) -> None:
    """Run a ladder: every rung x cohort x label budget x replicate as its own run, then one report.

    The report has learning curves, a rung x k table, paired bootstrap verdicts against the best count baseline
    at each k, compute per rung and, for synthetic controls, whether the verdict is the known one. Each run is
    ordinary: re-running the ladder skips completed runs and resumes an interrupted one. Exit 2 on a bad spec,
    75 after a preemption (run the same command again to continue).
    """
    from ehrseq_runner.commands.ladder import run_ladder  # imports torch: keep `--help` fast
    from ehrseq_runner.spec.ladder_spec import load_ladder

    study, runs = load_ladder(spec, set_ or [])
    if plan is not None:
        from ehrseq_runner.commands.ladder_plan import plan_ladder

        work = Path(study.runtime.work_dir or Path(tempfile.gettempdir()) / "ehrseq") / "datasets"
        with console.status("preparing each cohort's data"):
            text = plan_ladder(runs, work, plan, mfu, overhead, study.runtime.price_per_hour)
        console.print(escape(text), highlight=False, soft_wrap=True)
        return
    _exit(run_ladder(study, runs, out or Path(f"ladder-{study.name}"), console))


def _register_subcommands() -> None:
    from ehrseq_runner.commands.bench import bench_app
    from ehrseq_runner.commands.data_cli import data_app

    app.add_typer(bench_app, name="bench")
    app.add_typer(data_app, name="data")


_register_subcommands()


def main() -> None:
    try:
        app()
    except (InputError, OSError) as e:
        error = no_space(e, "a disk this command writes") if isinstance(e, OSError) else e
        if error is None:
            raise
        # user text: no markup; a secret typed into the wrong field is never echoed
        console.print(f"[red]error:[/] {escape(redact_credentials(str(error)))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
