"""Which codes count: `data.codes` include / exclude patterns, applied to every model's input alike.

Hospital data is mostly labs; a model with a fixed window may see a few days of them and nothing else. The
filter runs on the token cache's shards, before numeric bins, vocabulary, tokens and whole histories, so every
model reads the same events. A pattern is a shell-style glob (`*`, `?`, `[...]`); one without a wildcard is a
prefix (`LAB//` means `LAB//*`). With `include`, only matching codes are kept; `exclude` then drops what matches.
`MEDS_BIRTH` always stays: ages come from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING, Any

import meds
import numpy as np

if TYPE_CHECKING:
    from ehrseq.data.stream import Shard


def matching(patterns: tuple[str, ...], names: list[str]) -> np.ndarray:
    """(len(names),) bool: which names match any of the patterns (globs, or prefixes without a wildcard)."""
    if not patterns:
        return np.zeros(len(names), bool)
    globs = [p if any(c in p for c in "*?[") else f"{p}*" for p in patterns]
    regex = re.compile("|".join(f"(?:{translate(g)})" for g in globs))
    return np.array([regex.match(n) is not None for n in names], bool)


@dataclass(frozen=True)
class CodeFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def identity(self) -> dict[str, list[str]]:
        return {"include": list(self.include), "exclude": list(self.exclude)}

    def allows(self, names: list[str]) -> np.ndarray:
        """(len(names),) bool: which codes are kept."""
        keep = matching(self.include, names) if self.include else np.ones(len(names), bool)
        return (keep & ~matching(self.exclude, names)) | np.array([n == meds.birth_code for n in names], bool)

    def apply(self, shard: Shard) -> Shard:
        """The shard's rows whose code is kept."""
        return shard.rows(self.allows(shard.names)[shard.code] if len(shard.names) else np.ones(0, bool))

    def describe(self, dropped: int, events: int) -> dict[str, Any]:
        """For the summary: the patterns and the events they dropped."""
        return {**self.identity(), "events_dropped": dropped, "events": events}
