"""`ehrseq data ...`: prepare datasets. Registered in runner/cli.py as `app.add_typer(data_app, name="data")`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

data_app = typer.Typer(help="Prepare datasets: convert Synthea output (FHIR R4 or CSV) to MEDS, or write a "
                            "synthetic control cohort as MEDS.",
                       no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


class Source(str, Enum):
    fhir = "fhir"
    synthea_csv = "synthea-csv"


@data_app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Folder of FHIR Bundle JSON files (fhir), or of Synthea CSVs.")],
    dest: Annotated[Path, typer.Argument(help="MEDS dataset folder to write (replaced if it is one already).")],
    from_: Annotated[Source, typer.Option("--from", help="The source format.")],
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count malformed files and entries "
                                                              "instead of stopping at the first.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the train/tuning/held_out patient split.")] = 0,
) -> None:
    """Convert Synthea output to a MEDS dataset and print a summary. Exit 2 on bad input."""
    from ehrseq.data.convert import convert as run_conversion  # pyarrow/meds: keep --help fast

    console = Console(stderr=True)
    progress = Progress(  # a live bar on a terminal only: piped stderr keeps just the error line, if any
        TextColumn(f"converting {from_.value}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("convert", total=None)
        summary = run_conversion(
            from_.value, src, dest, seed=seed, skip_bad=skip_bad,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    sys.stdout.write("\n".join(summary.lines()) + "\n")


class Preset(str, Enum):
    default = "default"
    order = "order"
    presence = "presence"
    icu = "icu"


@data_app.command()
def synthetic(
    dest: Annotated[Path, typer.Argument(help="MEDS dataset folder to write (must not exist yet).")],
    preset: Annotated[Preset, typer.Option(help="The planted outcome: order (positive control), presence "
                                                "(negative control) or default; icu: hospital stays in "
                                                "MIMIC-IV's MEDS layout with a readmission task.")] = Preset.default,
    num_patients: Annotated[int, typer.Option(min=10, max=10_000_000, help="Patients to generate.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seeds the cohort and its train/tuning/held_out split.")] = 0,
) -> None:
    """Write a synthetic cohort as a MEDS dataset with labels (labels/outcome_within_365d.parquet,
    labels/outcome_survival.parquet; icu: labels/readmission_or_death_30d.parquet): the same data
    `data.source: synthetic` generates, for `data.source: meds` runs, ACES or other tools. Exit 2 if DEST exists."""
    from ehrseq.data.cohort import write_synthetic_dataset  # numpy/pyarrow: keep --help fast
    from ehrseq.data.synthetic import PRESETS

    if dest.exists():
        Console(stderr=True).print(f"Error: {escape(str(dest))} exists; choose a new folder")
        raise typer.Exit(2)
    write_synthetic_dataset(dest, num_patients, seed, PRESETS[preset.value])
    sys.stdout.write(f"wrote {dest}: {num_patients:,} synthetic patients, preset {preset.value}, seed {seed}\n")
