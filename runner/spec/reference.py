"""The spec reference page, generated from the pydantic models: every field's type, default, bounds and description.

`python -m ehrseq_runner.spec.reference [FILE]` writes it (default: print); docs/reference/spec.md is its output,
and tests/end_to_end/test_docs.py fails when that file is stale or a field has no description.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ehrseq_runner.spec.job_spec import JobSpec
from ehrseq_runner.spec.ladder_spec import LadderSpec

PAGE = Path("docs/reference/spec.md")
COMMAND = "python -m ehrseq_runner.spec.reference docs/reference/spec.md"


def sections(root: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Each section model under `root` with its dotted path ("" for the root, else ending in "."), depth first."""
    out = [(prefix, root)]
    for name, field in root.model_fields.items():
        model = _model_in(field.annotation)
        if model is not None:
            path = f"{prefix}{name}" + ("[]" if _is_list(field.annotation) else "")
            out += sections(model, path + ".")
    return out


def fields(root: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """Every field under `root` by its dotted path (list items as `name[]`)."""
    out = []
    for prefix, model in sections(root):
        out += [(f"{prefix}{name}", field) for name, field in model.model_fields.items()]
    return out


def render() -> str:
    lines = [
        "# Spec reference",
        "",
        f"<!-- Generated from runner/spec/*.py by `{COMMAND}`: edit the Field descriptions there, not this file. -->",
        "",
        "Every setting of a job spec (`ehrseq run SPEC`) and a ladder spec (`ehrseq ladder LADDER.yaml`), from the "
        "code. Unknown keys are errors, and types are strict: a number is never read from a string or a bool. "
        "`--set a.b=v` overrides any field with the same checks; `ehrseq validate SPEC` prints a spec resolved.",
        "",
    ]
    job_sections = {model: path for path, model in sections(JobSpec)}
    lines += _document(JobSpec, "Job spec", {})
    lines += _document(LadderSpec, "Ladder spec", job_sections)
    return "\n".join(lines).rstrip() + "\n"


def _document(root: type[BaseModel], title: str, linked: dict[type[BaseModel], str]) -> list[str]:
    """A heading per section of `root`; sections already documented (`linked`) are linked to, not repeated."""
    lines: list[str] = []
    for path, model in sections(root):
        if path and model in linked:  # a job spec's section inside a ladder: its subsections are there too
            continue
        heading = f"## {title}" if not path else f"### `{path.rstrip('.')}`"
        lines += [heading, ""]
        if doc := _own_doc(model):
            lines += [doc, ""]
        lines += ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            lines.append(_row(f"{path}{name}", field, linked))
        lines.append("")
    return lines


def _row(path: str, field: FieldInfo, linked: dict[type[BaseModel], str]) -> str:
    model = _model_in(field.annotation)
    kind = _type(field.annotation)
    if model is not None:
        target = linked.get(model, f"{path}{'[]' if _is_list(field.annotation) else ''}.")
        kind = kind.replace(model.__name__, f"[section](#{_anchor(target)})")
    cells = [f"`{path}`", kind, _default(field), _bounds(field), _text(field.description or "")]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        named = [_type(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or `null`" if type(None) in args else "")
    if origin is list:
        item = _type(args[0])
        return f"list of ({item})" if " or " in item else f"list of {item}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    parts = _constraints(field.metadata, "items" if _is_list(field.annotation) else "characters")
    item = _list_item(field.annotation)
    if item is not None and (inner := _constraints(item, "characters")):
        parts.append("each " + ", ".join(inner))
    return "; ".join(parts)


def _constraints(metadata: list[Any], unit: str) -> list[str]:
    """Bounds as `0 ≤ x < 1`, lengths in `unit`, and a pattern."""
    low = high = None
    lengths = [None, None]
    out = []
    for m in metadata:
        if isinstance(m, at.Ge | at.Gt):
            low = ("[", m.ge) if isinstance(m, at.Ge) else ("(", m.gt)
        if isinstance(m, at.Le | at.Lt):
            high = ("]", m.le) if isinstance(m, at.Le) else (")", m.lt)
        if isinstance(m, at.MinLen):
            lengths[0] = m.min_length
        if isinstance(m, at.MaxLen):
            lengths[1] = m.max_length
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    below = f"{_number(low[1])} {'≤' if low[0] == '[' else '<'} " if low else ""
    above = f" {'≤' if high[0] == ']' else '<'} {_number(high[1])}" if high else ""
    if low or high:
        out.insert(0, f"{below}x{above}")
    if lengths[0] is not None and lengths[1] is not None:
        out.append(f"{_number(lengths[0])} to {_number(lengths[1])} {unit}")
    elif lengths[0] is not None:
        out.append(f"at least {_number(lengths[0])} {unit.rstrip('s') if lengths[0] == 1 else unit}")
    elif lengths[1] is not None:
        out.append(f"at most {_number(lengths[1])} {unit}")
    return out


def _list_item(annotation: Any) -> list[Any] | None:
    """The constraints on a list's items (`list[Annotated[str, Field(...)]]`), else None."""
    for arg in get_args(annotation) if get_origin(annotation) is not list else [annotation]:
        if get_origin(arg) is list:
            (item,) = get_args(arg)
            if get_origin(item) is Annotated:
                return [m for a in get_args(item)[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])]
    return None


def _number(value: Any) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (model := _model_in(arg)) is not None:
            return model
    return None


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(get_origin(a) is list for a in get_args(annotation))


def _own_doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return _text(" ".join(inspect.cleandoc(doc).split())) if doc else ""


def _anchor(path: str) -> str:
    """The heading id Python-Markdown and GitHub both give `### \\`path\\``: punctuation dropped."""
    return re.sub(r"[^\w-]", "", path.rstrip(".").lower())


def _text(text: str) -> str:
    """Markdown-safe prose: `<word>` outside code spans would be read as an HTML tag."""
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts)


def main(argv: list[str] = sys.argv[1:]) -> None:
    text = render()
    if argv:
        Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
