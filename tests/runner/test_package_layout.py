"""The runner's layout: no import circles among ehrseq_runner's modules or groups, the library never imports the
runner, and pyproject lists every package (a missing one would be absent from a wheel and the image only).

Imports are read with `ast`, nothing is imported: function-level imports count as much as top-level ones, since
either closes a circle once both functions run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # through the installed mapping (runner/ is ehrseq_runner)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not an installed package"
    return Path(next(iter(spec.submodule_search_locations)))


def modules(package: str) -> dict[str, Path]:
    """Every module and package of `package`, by dotted name."""
    folder = package_folder(package)
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def imported_names(name: str, path: Path) -> set[str]:
    """The absolute names a module imports anywhere in its body: `import a.b` gives a.b, `from a import b` gives a
    and a.b (b may be a module or a name in a)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    found = modules(package)
    return {name: {n for n in imported_names(name, path) if n in found and n != name}
            for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as a path (first node repeated at the end), or None."""
    done, path, on_path = set(), [], set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def group_of(module: str) -> str:
    """ehrseq_runner.storage.s3 -> ehrseq_runner.storage; top-level modules (cli, entrypoint) are their own."""
    return ".".join(module.split(".")[:2])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_top_level_and_function_level_imports():
    graph = import_graph("ehrseq_runner")
    assert "ehrseq_runner.job.distributed" in graph["ehrseq_runner.job.run"]  # top level
    assert "ehrseq_runner.job.run" in graph["ehrseq_runner.cli"]  # inside `run`, to keep --help fast
    assert "ehrseq_runner.spec.safe_yaml" in graph["ehrseq_runner.spec.job_spec"]  # from a package import a module


def test_no_import_cycle_among_runner_modules():
    cycle = find_cycle(import_graph("ehrseq_runner"))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_cycle_among_runner_groups():
    """storage, spec, checkpoints, job, commands, then cli on top: a group never imports one that imports it."""
    groups: dict[str, set[str]] = {}
    for module, imported in import_graph("ehrseq_runner").items():
        group = group_of(module)
        groups.setdefault(group, set()).update(group_of(m) for m in imported if group_of(m) != group)
    cycle = find_cycle(groups)
    assert cycle is None, "circle between groups: " + " -> ".join(cycle)


def test_the_library_never_imports_the_runner():
    offending = sorted(f"{name} imports {imported}" for name, path in modules("ehrseq").items()
                       for imported in imported_names(name, path)
                       if imported == "ehrseq_runner" or imported.startswith("ehrseq_runner."))
    assert not offending


def test_pyproject_lists_every_package():
    """setuptools' find cannot map runner/ to ehrseq_runner, so the packages are listed; an editable install
    works without the list, a wheel (the container image) would lack the package."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for package in ("ehrseq", "ehrseq_runner") for name, path in modules(package).items()
               if path.name == "__init__.py"}
    assert not on_disk - listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"listed in pyproject.toml, not packages: {sorted(listed - on_disk)}"


@pytest.mark.slow
def test_the_runner_imports_beside_pypis_runner_package(tmp_path):
    """PyPI's `runner` (Runner 1.1) installed in the same environment, its folder also reachable as `runner` (what a
    case-insensitive disk does): every module of ehrseq_runner imports, and the CLI validates a spec."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    "Runner==1.1"], check=True, capture_output=True, timeout=300)
    assert (site / "Runner" / "__init__.py").is_file()
    (site / "runner").symlink_to(site / "Runner", target_is_directory=True)
    names = sorted(modules("ehrseq_runner"))
    check = ("import importlib, Runner, runner; [importlib.import_module(n) for n in " + repr(names) + "]; "
             "from ehrseq_runner.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", check, "validate", str(ROOT / "jobs" / "behrt_small.yaml")],
                            env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "behrt-small-mlm" in result.stdout
