"""YAML that cannot hang or crash the reader: specs typed by users and spec.yaml files read back from a bucket.

A job spec needs neither aliases nor deep nesting, and they are what makes YAML dangerous: a "billion laughs"
alias bomb expands to gigabytes, and thousands of nested brackets exhaust Python's recursion limit. Both are
refused while composing, before anything is built, so a bad document fails in milliseconds.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from ehrseq.errors import InputError

MAX_BYTES = 1 << 20  # a spec is a few kB
MAX_DEPTH = 32  # a spec nests about 4 levels


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with bounded nesting (PyYAML's composer recurses once per level); a key
    given twice is an error (PyYAML keeps the last silently), and YAML 1.1's base-60 numbers (`1:20` read as 80)
    stay strings, as in YAML 1.2."""

    depth = 0

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if duplicate:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"{key!r} is given twice; keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        return node.value if ":" in node.value else super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        return node.value if ":" in node.value else super().construct_yaml_float(node)

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
    except ValueError as e:  # an integer of more than 4,300 digits (Python's int() limit)
        raise InputError(f"{where}: {' '.join(str(e).split())[:200]}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise InputError(f"{where}:{line} YAML syntax error: {problem}") from None


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _SpecLoader.construct_yaml_float)
# YAML 1.2 floats without a dot (1e-3), which YAML 1.1 reads as strings: the strict spec takes no number as text
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))
