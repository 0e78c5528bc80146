"""No two modules of ``aptune`` import each other, directly or around a circle.

``test_layering.py`` keeps imports from climbing between rooms; this test covers the
modules inside one room too. Imports inside functions count: a lazy import that closes a
circle still means neither module can be read, tested or moved without the other
(``models/checkpoint_io`` <-> ``models/hub`` was one; their shared pieces now live in
``models/checkpoint_files``). A module's ``if __name__ == "__main__":`` block does not
count: it runs only when the file is the program, never on import (``test_layering.py``
allows it nothing but a hand-over to ``aptune.cli``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_layering import library_nodes

import aptune

SRC = Path(aptune.__file__).parent.parent


def _modules() -> dict[str, Path]:
    """``aptune.models.hub`` -> its file, for every module and package of aptune."""
    out = {}
    for path in sorted((SRC / "aptune").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of aptune that ``name`` imports; ``from pkg import mod`` names ``pkg.mod``."""
    found: set[str] = set()
    for node in library_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against this module's package
                package = name.split(".")[: None if path.name == "__init__.py" else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                         for a in node.names)  # fmt: skip
    return {m for m in found if m in known and m != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that reach each other (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles() -> None:
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert import_cycles(graph) == []


def test_finder_sees_lazy_imports_and_reports_the_circle(tmp_path: Path) -> None:
    """The walker and the finder themselves, on the circle this package had."""
    io = tmp_path / "checkpoint_io.py"
    io.write_text("def resolve():\n    from aptune.models.hub import parse_hub_id\n")
    known = {m: tmp_path for m in ("aptune.models.checkpoint_io", "aptune.models.hub")}
    assert _imports("aptune.models.checkpoint_io", io, known) == {"aptune.models.hub"}
    graph = {"io": {"hub"}, "hub": {"io", "files"}, "files": set(), "convert": {"io"}}
    assert import_cycles(graph) == [["hub", "io"]]
