"""The house rules of ``docs/ARCHITECTURE.md`` that can be read off the imports.

Every ``import`` and ``from ... import`` of the package is read with ``ast`` (those
inside functions and under ``TYPE_CHECKING`` too), resolved to the project module it
names, and checked: no module reaches another through a circle, ``cells/`` imports no
Numba and nothing that runs kernels, a backend imports nothing above it, and the
leaves import nothing of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gruablate"
LEAVES = ("gruablate.errors", "gruablate.vocabulary", "gruablate.optim", "gruablate.envinfo")
#: What sits above the backends: none of it may be imported from backends/.
ABOVE_BACKENDS = ("gruablate.layer", "gruablate.model", "gruablate.init", "gruablate.train",
                  "gruablate.bench", "gruablate.interop", "gruablate.study", "gruablate.search",
                  "gruablate.execute", "gruablate.store", "gruablate.cli", "gruablate.report",
                  "gruablate.tasks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules (and numba) that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                head = ".".join(base + ([node.module] if node.module else []))
            else:
                head = node.module or ""
            # "from . import runtime" names a module; "from .x import f" a name in x.
            targets = [f"{head}.{a.name}" if f"{head}.{a.name}" in known else head
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "numba":
                out.add("numba")
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def test_no_module_imports_itself_through_a_circle(graph):
    # A module may import its own package's __init__ only if that __init__ does not
    # import it back; any cycle at all is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_cells_know_no_numba_and_no_backend(graph):
    for name, deps in graph.items():
        if name.startswith("gruablate.cells"):
            bad = {d for d in deps if d == "numba" or not (
                d.startswith("gruablate.cells") or d in LEAVES)}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_backends_import_nothing_above_them(graph):
    for name, deps in graph.items():
        if name.startswith("gruablate.backends"):
            bad = {d for d in deps if d.startswith(ABOVE_BACKENDS)}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_leaves_import_nothing_of_the_project(graph):
    for leaf in LEAVES:
        assert not {d for d in graph[leaf] if d.startswith("gruablate")}, leaf


def test_the_graph_sees_the_imports_it_checks(graph):
    # The checks above mean something only if relative and lazy imports are read.
    assert "gruablate.backends" in graph["gruablate.layer"]
    assert "gruablate.backends.cpu.kernels" in graph["gruablate.backends.cpu"]  # lazy
    assert "gruablate.backends.cpu.runtime" in graph["gruablate.backends.cpu.kernels"]
    assert "numba" in graph["gruablate.backends.cpu.runtime"]
