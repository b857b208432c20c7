"""The layout's rules, checked on the code itself (README "Layout"): each part depends only on what it
may, and no file grows past what one reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = PROJECT / "collectors"
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (an import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_no_file_is_over_700_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def offenders(inside: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(module, what it imports) for modules under `inside` importing another module under `forbidden`."""
    found = []
    for path in SOURCES:
        name = module_name(path)
        if not name.startswith(inside) or name in allowed:
            continue
        for imported in imports(path):
            if imported.startswith(forbidden) and not imported.startswith(name) and imported != forbidden.rstrip("."):
                found.append((name, imported))
    return found


def test_no_stage_imports_another_stage():
    assert offenders("collectors.stages.", "collectors.stages.") == []


def test_no_transport_imports_another_transport():
    # The shared parts (base, protocol) and the registry are not transports.
    shared = ("collectors.transports.base", "collectors.transports.protocol")
    found = [(name, imported) for name, imported in offenders("collectors.transports.", "collectors.transports.")
             if not imported.startswith(shared)
             and imported.split(".")[2] != name.split(".")[2]]  # a transport's own package may import itself
    assert found == []


def test_no_product_module_imports_the_sandbox():
    # cli.py composes the command's namespace: the one place the product and the sandbox meet.
    found = [(name, imported) for name, imported in offenders("collectors.", "collectors.sandbox",
                                                              allowed=("collectors.cli",))
             if not name.startswith("collectors.sandbox")]
    assert found == []
