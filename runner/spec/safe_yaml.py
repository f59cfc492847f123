"""YAML that cannot hang or crash the reader: specs typed by users and spec.yaml files read back from a bucket.

A job spec needs neither aliases nor deep nesting, and they are what makes YAML dangerous: a "billion laughs"
alias bomb expands to gigabytes, and thousands of nested brackets exhaust Python's recursion limit. Both are
refused while composing, before anything is built, so a bad document fails in milliseconds.
"""

from __future__ import annotations

import codecs
from typing import Any

import yaml
from yaml.composer import ComposerError

from ehrseq.errors import InputError

MAX_BYTES = 1 << 20  # a spec is a few kB
MAX_DEPTH = 32  # a spec nests about 4 levels


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with bounded nesting (PyYAML's composer recurses once per level)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise ComposerError(None, None, "aliases (*name) are not allowed here; write the value out",
                                self.peek_event().start_mark)
        if self.depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def decode(data: bytes, where: str) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM, as editors save files; InputError otherwise."""
    if len(data) > MAX_BYTES:
        raise InputError(f"{where}: {len(data):,} bytes is too large for a spec (at most {MAX_BYTES:,})")
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (undecodable byte at offset {e.start}); "
                         "save it as UTF-8") from None


def load(text: str | bytes, where: str) -> Any:
    """The document's value; InputError naming `where` and the line for any YAML problem."""
    if isinstance(text, bytes):
        text = decode(text, where)
    elif len(text) > MAX_BYTES:
        raise InputError(f"{where}: {len(text):,} characters is too large for a spec (at most {MAX_BYTES:,})")
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: builds only plain data
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise InputError(f"{where}:{line} YAML syntax error: {problem}") from None
