"""The package graph flows one way (docs/architecture.md): a test walks every import.

Layers, bottom up: ``core`` (the base) -> ``pipeline`` (the stages) -> ``validation``,
``datacards``, ``release`` (release may use the other two; no cycles) -> ``rrec`` (the CLI and
``rrec run``). ``training`` stands beside them and uses only ``core`` and ``release.loading``;
``benchmarks`` sits on top and may use everything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipeline", "validation", "datacards", "release", "training", "rrec", "benchmarks")

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "pipeline": {"core"},
    "validation": {"core", "pipeline"},
    "datacards": {"core", "pipeline", "validation"},
    "release": {"core", "pipeline", "validation", "datacards"},
    "training": {"core", "release.loading"},
    "rrec": {"core", "pipeline", "validation", "datacards", "release", "training"},
    "benchmarks": {"core", "pipeline", "validation", "datacards", "release", "training"},
}
"""What each package may import besides itself (a dotted entry allows that module only)."""

HEAVY = ("dask", "distributed", "great_expectations", "torch")
"""Libraries the base must not import when its modules are imported."""


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    if top_level_only:  # module level, including `if`/`try` blocks, but not TYPE_CHECKING or function bodies
        nodes = [n for n in nodes if _at_module_level(tree, n)]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from release import loading` and `from release.loading import x` both name release.loading
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _at_module_level(tree: ast.Module, target: ast.AST) -> bool:
    def visit(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if child is target:
                return True
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if visit(child):
                return True
        return False

    return visit(tree)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _owner(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in PACKAGES else None


def _allowed(package: str, imported: str) -> bool:
    owner = _owner(imported)
    if owner is None or owner == package:
        return True
    rules = ALLOWED[package]
    return owner in rules or any(imported == rule or imported.startswith(f"{rule}.") for rule in rules if "." in rule)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_runs_against_the_layers(package: str) -> None:
    wrong = []
    for path in _modules(package):
        for imported in sorted(_imports(path, top_level_only=False)):
            if not _allowed(package, imported):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_the_package_graph_has_no_cycle() -> None:
    edges = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in _modules(package):
            edges[package].update(o for name in _imports(path, top_level_only=False) if (o := _owner(name)) and o != package)
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        if package in visiting:
            pytest.fail("package cycle: " + " -> ".join([*visiting[visiting.index(package) :], package]))
        if package in done:
            return
        visiting.append(package)
        for target in sorted(edges[package]):
            visit(target)
        visiting.pop()
        done.add(package)

    for package in PACKAGES:
        visit(package)


def test_the_base_imports_no_dask_gx_or_torch_at_module_level() -> None:
    heavy = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("core")
        for name in _imports(path, top_level_only=True)
        if name.split(".")[0] in HEAVY
    ]
    assert not heavy


@pytest.mark.parametrize("module", ["training.data", "core.protocol", "core.stage", "core.progress", "release.loading"])
def test_importing_it_loads_neither_dask_nor_great_expectations(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in ('dask', 'distributed', 'great_expectations') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]", f"import {module} loaded {loaded}"
