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
from typing import Any

import meds
import numpy as np

from ehrseq.data.stream import Shard


def _regex(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    globs = [p if any(c in p for c in "*?[") else f"{p}*" for p in patterns]
    return re.compile("|".join(f"(?:{translate(g)})" for g in globs))


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
        keep, drop = _regex(self.include), _regex(self.exclude)
        return np.array([n == meds.birth_code or ((keep is None or keep.match(n) is not None)
                                                  and (drop is None or drop.match(n) is None)) for n in names], bool)

    def apply(self, shard: Shard) -> Shard:
        """The shard's rows whose code is kept."""
        return shard.rows(self.allows(shard.names)[shard.code] if len(shard.names) else np.ones(0, bool))

    def describe(self, dropped: int, events: int) -> dict[str, Any]:
        """For the summary: the patterns and the events they dropped."""
        return {**self.identity(), "events_dropped": dropped, "events": events}
