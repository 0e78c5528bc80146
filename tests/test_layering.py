"""The package's imports point down only: commands -> engine -> build/config/tuning -> models, data.

Walks every module of ``aptune`` with ``ast`` (function-level imports included, since lazy
imports are still dependencies) and fails on an import that climbs a layer. A module's
``if __name__ == "__main__":`` block is not walked: it runs only when the file is the
program (``python -m aptune.data.prepare``), never when the module is imported, so it is
the top of the stack, not a dependency; it may only hand over to ``aptune.cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aptune

PACKAGE = Path(aptune.__file__).parent

#: the rooms a module may import from, besides its own (the order is the layering)
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "data": set(),
    "tuning": {"models"},
    "recipes": set(),
    "build": {"models", "tuning", "data"},
    "config": {"models", "tuning", "data", "build", "recipes"},
    "sharing": {"models", "tuning", "data", "build", "config", "recipes"},
    "engine": {"models", "tuning", "data", "build", "config", "recipes", "sharing"},
    "pretrain": {"models", "tuning", "data", "build", "config", "recipes", "engine", "sharing"},
    "commands": {"models", "tuning", "data", "build", "config", "recipes", "engine", "pretrain",
                 "sharing"},
    "cli": {"models", "tuning", "data", "build", "config", "recipes", "engine", "pretrain",
            "commands", "sharing"},
}


def room_of(module: str) -> str | None:
    """``aptune.engine.loop`` -> ``engine``; the package root itself has no room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def library_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of the module except its ``__main__`` blocks."""
    return [n for top in tree.body if not is_main_block(top) for n in ast.walk(top)]


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in library_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "aptune":  # ``from aptune import x``: x is the module
                out += [(node.lineno, f"aptune.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(line, m) for line, m in out if m == "aptune" or m.startswith("aptune.")]


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_is_known():
    rooms = {room_of(module_name(p)) for p in all_modules()} - {None, "__main__"}
    assert rooms <= set(ALLOWED), f"rooms without a layer rule: {rooms - set(ALLOWED)}"


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    name = module_name(path)
    room = room_of(name)
    if room is None:  # aptune/__init__.py: the public face may re-export from any layer
        return
    bad = []
    for line, target in imported_modules(path, name):
        other = room_of(target)
        if other is None or other == room:
            continue
        if other not in ALLOWED[room]:
            bad.append(f"{path.name}:{line} imports {target} ({room} may not import {other})")
    assert not bad, "\n".join(bad)


def test_rule_catches_an_upward_import(tmp_path):
    """The walker itself: a models module importing the engine is reported."""
    fake = PACKAGE / "models" / "vit.py"
    src = tmp_path / "vit.py"
    src.write_text("from aptune.engine.loop import train_one_epoch\nfrom . import convert\n")
    found = imported_modules(src, module_name(fake))
    assert (1, "aptune.engine.loop") in found
    assert (2, "aptune.models") in found
    assert "engine" not in ALLOWED["models"]


#: modules below ``aptune.cli`` allowed to import argparse, and why
ARGPARSE_BELOW_CLI = {
    "models/checkpoint_io.py": "the reference's checkpoints pickle an argparse.Namespace: "
    "the safe loader allowlists the type, it parses nothing",
}


def test_argparse_lives_in_the_cli_only():
    """Command lines are parsed in ``aptune.cli``; everything below takes typed options."""
    offenders = []
    for path in all_modules():
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("cli/") or rel in ARGPARSE_BELOW_CLI:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            if "argparse" in imported:
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], f"argparse below aptune.cli: {offenders}"


def test_walker_skips_main_blocks_only(tmp_path):
    """An import in ``if __name__ == "__main__":`` is not a dependency; in any other ``if``
    it is."""
    src = tmp_path / "prepare.py"
    src.write_text("import os\nif os.environ:\n    from aptune.engine import run\n"
                   "if __name__ == '__main__':\n    from aptune.cli.prepare import main\n")
    found = imported_modules(src, "aptune.data.prepare")
    assert found == [(3, "aptune.engine")]


def test_main_blocks_below_the_cli_only_hand_over_to_it():
    """A ``__main__`` block outside ``aptune.cli`` keeps an old ``python -m`` command line
    working: it imports from ``aptune.cli`` only and does nothing else itself."""
    bad = []
    for path in all_modules():
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("cli/"):
            continue
        for block in filter(is_main_block, ast.parse(path.read_text(encoding="utf-8")).body):
            imports = [n for n in ast.walk(block) if isinstance(n, (ast.Import, ast.ImportFrom))]
            sources = [n.module if isinstance(n, ast.ImportFrom) else "" for n in imports]
            if len(block.body) > 2 or not all(s.startswith("aptune.cli") for s in sources):
                bad.append(f"{rel}:{block.lineno}")
    assert bad == [], f"__main__ blocks that do more than call aptune.cli: {bad}"
