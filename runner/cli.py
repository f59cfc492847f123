"""The `ehrseq` command: run and validate job specs, inspect runs in storage."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ehrseq.errors import InputError
from runner.run_folder import RunFolder
from runner.spec import load_spec
from runner.storage import open_storage, split_run_uri

EXIT_BAD_INPUT = 2

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
) -> None:
    """Run a job, or resume it from its latest committed checkpoint in storage.

    Exit codes: 0 completed; 2 bad input; 75 preempted (SIGTERM/SIGINT: a checkpoint was committed
    within checkpoint.grace_seconds where possible -- run the same command again to resume);
    130 on a second Ctrl-C.
    """
    from runner.job import run_job  # imports torch: keep `--help` and `validate` fast

    job = load_spec(spec, set_ or [])
    raise typer.Exit(run_job(job, console, fresh=fresh))


@app.command()
def validate(
    spec: Annotated[str, typer.Argument(help="Job spec YAML.")],
    set_: SetOption = None,
) -> None:
    """Check a spec and print it fully resolved (defaults filled in). Exit 2 if invalid."""
    job = load_spec(spec, set_ or [])
    sys.stdout.write(job.to_yaml())


@app.command()
def status(run_uri: Annotated[str, typer.Argument(help="A run, e.g. file://./runs/behrt-small-mlm.")]) -> None:
    """Show a run's state and last durable step. Exit 2 if there is no such run."""
    base, run_id = split_run_uri(run_uri)
    state = RunFolder(open_storage(base), run_id).read_status()
    if state is None:
        raise InputError(f"{run_uri}: no such run (no status.json)")
    sys.stdout.write(json.dumps(state, indent=2) + "\n")


@app.command("list")
def list_runs(storage_uri: Annotated[str, typer.Argument(help="A storage prefix, e.g. file://./runs.")]) -> None:
    """List the runs under a storage prefix with their state."""
    storage = open_storage(storage_uri)
    table = Table("run", "state", "durable step", "updated")
    for key in storage.list():
        run_id, _, name = key.partition("/")
        if name == "status.json":
            s = RunFolder(storage, run_id).read_status() or {}
            table.add_row(run_id, s.get("state", "?"), str(s.get("durable_step", "?")), s.get("updated_at", ""))
    Console().print(table)


def main() -> None:
    try:
        app()
    except InputError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
