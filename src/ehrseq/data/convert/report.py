"""What a conversion did (the summary the CLI prints) and how it treats malformed input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from ehrseq.errors import DataError


class Problems:
    """Malformed input either stops the conversion with a DataError naming the file and entry, or, with
    `skip_bad`, is skipped and counted (the first few messages are kept so the summary can show them)."""

    def __init__(self, skip_bad: bool, keep: int = 3) -> None:
        self.skip_bad = skip_bad
        self.keep = keep
        self.files = 0
        self.entries = 0
        self.examples: list[str] = []

    def _note(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        if len(self.examples) < self.keep:
            self.examples.append(message)

    def bad_file(self, path: Path | str, why: str) -> None:
        self._note(f"{path}: {why}")
        self.files += 1

    def bad_entries(self, where: str, why: str, count: int = 1) -> None:
        self._note(f"{where}: {why}")
        self.entries += count


@dataclass
class ConversionSummary:
    source: str
    dest: str
    files: int
    subjects: int
    events: int
    codes: int
    first_time: datetime | None
    last_time: datetime | None
    skipped_files: int = 0
    skipped_entries: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        span = "-"
        if self.first_time and self.last_time:
            span = f"{self.first_time:%Y-%m-%d} to {self.last_time:%Y-%m-%d}"
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"MEDS dataset: {self.dest}",
            f"subjects: {self.subjects:,}",
            f"events:   {self.events:,}",
            f"codes:    {self.codes:,} distinct",
            f"time span: {span}",
            f"read {self.files:,} files in {self.seconds:.1f} s ({rate:,.0f} events/s)",
        ]
        if self.skipped_files or self.skipped_entries:
            out.append(f"skipped (--skip-bad): {self.skipped_files:,} files, {self.skipped_entries:,} entries")
            out += [f"  e.g. {m}" for m in self.skipped_examples]
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["first_time"] = self.first_time.isoformat() if self.first_time else None
        d["last_time"] = self.last_time.isoformat() if self.last_time else None
        return d
