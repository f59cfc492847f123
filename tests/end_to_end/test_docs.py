"""Documentation that lives once: the spec reference is generated from the Field descriptions, the shipped job YAMLs'
comments agree with the spec, the site builds strictly, and nothing points outside the repository."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ehrseq_runner.spec import reference
from ehrseq_runner.spec.job_spec import JobSpec
from ehrseq_runner.spec.ladder_spec import LADDER_TASKS, LadderSpec

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
SECTIONS = ("data", "model", "task", "train", "checkpoint", "storage", "runtime", "lora", "tracking")
FILE_SUFFIXES = {"safetensors", "json", "jsonl", "yaml", "parquet", "md", "csv", "pt", "png"}


def test_the_spec_reference_page_is_generated_from_the_code():
    page = ROOT / reference.PAGE
    assert page.is_file() and page.read_text(encoding="utf-8") == reference.render(), (
        f"{reference.PAGE} is stale: run `{reference.COMMAND}` and commit it")


@pytest.mark.parametrize("root", [JobSpec, LadderSpec], ids=["job", "ladder"])
def test_every_spec_field_is_described(root):
    bare = [path for path, field in reference.fields(root) if not (field.description or "").strip()]
    assert not bare, f"add Field(description=...) to: {', '.join(bare)}"


# --- the shipped YAMLs: a short comment per knob, and no comment that contradicts the spec ---

def knobs(path: Path) -> list[tuple[int, str, str, str, bool]]:
    """(line number, dotted key, value, comment, in an item's body) for each line of a YAML that sets a value.

    A list item's keys are `list[].key`; a key after the item's first line (a rung's `model:`, ...) is in the
    item's body, whose comment is the first line's. A comment-only line whose `#` lines up with the previous
    knob's comment continues it.
    """
    out: list[tuple[int, str, str, str, bool]] = []
    stack: list[tuple[int, str]] = []  # (column, name) of the open sections and list items ("[]")
    comment_col = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            if stripped and out and line.index("#") == comment_col:
                n, key, value, comment, body = out[-1]
                out[-1] = (n, key, value, f"{comment} {stripped[1:].strip()}", body)
            else:
                comment_col = None
            continue
        m = re.match(r"^(\s*)(- )?([A-Za-z_]\w*):\s*(.*)$", line)
        assert m, f"{path.name}:{number}: not a `key: value` line"
        dash, column = len(m.group(1)), len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= (dash if m.group(2) else column):
            stack.pop()
        if m.group(2):
            stack.append((dash, "[]"))
        value, _, comment = (" " + m.group(4)).partition(" #")
        comment_col = line.index("#", len(line) - len(m.group(4))) if comment else None
        key = ".".join(name for _, name in stack + [(column, m.group(3))]).replace(".[]", "[]")
        if not value.strip():  # a section: its keys follow, indented
            stack.append((column, m.group(3)))
            continue
        body = any(name == "[]" for _, name in stack) and not m.group(2)
        out.append((number, key, value.strip(), comment.strip(), body))
    return out


def field_at(root: type[BaseModel], dotted: str):
    """The FieldInfo at a dotted path (`rungs[].model.kind`), or None."""
    model, field = root, None
    for part in dotted.split("."):
        name = part.removesuffix("[]")
        if model is None or name not in model.model_fields:
            return None
        field = model.model_fields[name]
        model = reference._model_in(field.annotation)
    return field


def choices(annotation) -> set[str] | None:
    """The values a Literal field (or list / optional of one) accepts."""
    if typing.get_origin(annotation) is typing.Literal:
        return {str(a) for a in typing.get_args(annotation)}
    for arg in typing.get_args(annotation):
        if (found := choices(arg)) is not None:
            return found
    return None


def listed_choices(comment: str) -> list[str] | None:
    """`auto (cuda > mps > cpu) | cpu | cuda | mps` -> [auto, cpu, cuda, mps]; None without a `|` list."""
    parts = comment.split("|")
    if len(parts) < 2:
        return None
    first = parts[0]
    while re.search(r"\([^()]*\)\s*$", first):
        first = re.sub(r"\([^()]*\)\s*$", "", first)
    words = [first.split()[-1]] + [re.match(r"\s*([^\s(;,:]+)", p).group(1) for p in parts[1:]]
    return [w.strip("`.,;:") for w in words]


def literal_fields(root, key: str, value: str) -> list[tuple[str, set[str]]]:
    """The Literal fields a line sets: the key itself, or the keys of its flow mapping (`{kind: binary}`)."""
    if not value.startswith("{"):
        field = field_at(root, key)
        found = field and choices(field.annotation)
        return [(key, found)] if found else []
    out = []
    for k, v in yaml.safe_load(value).items():
        out += literal_fields(root, f"{key}.{k}", v if isinstance(v, str) and v.startswith("{") else "")
    return out


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_knob_of_a_shipped_yaml_has_a_comment_that_agrees_with_the_spec(path):
    root = LadderSpec if path.name.startswith("ladder_") else JobSpec
    problems = []
    for number, key, value, comment, body in knobs(path):
        where = f"{path.name}:{number} {key}"
        if field_at(root, key) is None:
            problems.append(f"{where}: no such field")
            continue
        if not comment:
            if not body:
                problems.append(f"{where}: no comment")
            continue
        listed = listed_choices(comment)
        fields = literal_fields(root, key, value)
        if listed is not None and len(fields) == 1:
            name, accepted = fields[0]
            if root is LadderSpec and name == "task.kind":
                accepted = set(LADDER_TASKS)
            if set(listed) != accepted:
                problems.append(f"{where}: the comment lists {' | '.join(listed)}, the spec accepts "
                                f"{' | '.join(sorted(accepted))}")
        for ref in re.findall(rf"\b((?:{'|'.join(SECTIONS)})\.[a-z_]+(?:\.[a-z_]+)*)", comment):
            if ref.rsplit(".", 1)[-1] not in FILE_SUFFIXES and field_at(JobSpec, ref) is None:
                problems.append(f"{where}: the comment names {ref}, which is no job spec field")
    assert not problems, "\n".join(problems)


def test_the_yaml_comment_check_reads_nesting_lists_and_continuations(tmp_path):
    sample = tmp_path / "ladder_x.yaml"
    sample.write_text("name: x            # the name\n"
                      "cohorts:\n"
                      "  - name: a        # first cohort\n"
                      "    data: {source: synthetic}\n"
                      "train:\n"
                      "  device: auto     # auto | cpu\n"
                      "                   # | cuda\n"
                      "  # a standalone note\n"
                      "  lr: 0.1\n")
    assert knobs(sample) == [(1, "name", "x", "the name", False), (3, "cohorts[].name", "a", "first cohort", False),
                             (4, "cohorts[].data", "{source: synthetic}", "", True),
                             (6, "train.device", "auto", "auto | cpu | cuda", False),
                             (9, "train.lr", "0.1", "", False)]
    assert listed_choices("auto (cuda > mps > cpu) | cpu | cuda | mps") == ["auto", "cpu", "cuda", "mps"]
    assert listed_choices("BEHRT Linear layers: query | key | up") == ["query", "key", "up"]
    assert listed_choices("run id in storage") is None


# --- the site and the front page ---

def test_the_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs-material is in the test extra: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "spec" / "index.html").is_file()


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not missing, missing


def test_nothing_refers_to_files_outside_the_repository():
    outside = ["design" + ".md", "seed" + "/"]  # the design notes and the conversation the project came from
    hits = []
    for folder in ("docs", "src", "runner", "jobs", "examples", "deploy", "scripts", "tests", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if ".egg-info" in str(path) or "__pycache__" in path.parts:
                continue
            if path.is_file() and path.suffix in {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ""}:
                text = path.read_text(encoding="utf-8", errors="ignore")
                hits += [f"{path.relative_to(ROOT)}: {name}" for name in outside if name in text]
    for path in (ROOT / "README.md", ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"):
        hits += [f"{path.name}: {name}" for name in outside if name in path.read_text(encoding="utf-8")]
    assert not hits, hits
