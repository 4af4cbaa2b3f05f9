"""The core in gateway/ never imports adapters/: only the composition root and entry points do."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

ALLOWED = {"bootstrap.py", "cli.py", "__main__.py"}
FORBIDDEN_IN_CORE = ("adapters", "flask", "stomp", "sqlite3", "requests", "lxml", "waitress",
                     "psycopg", "xmlschema")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_imports_no_adapter_and_no_io_library() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").glob("*.py")):
        if path.name in ALLOWED:
            continue
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN_IN_CORE:
                offenders.append(f"{path.name} imports {name}")
    assert offenders == []


def test_adapters_are_built_only_in_the_composition_root() -> None:
    builders = [p.name for p in (ROOT / "gateway").glob("*.py")
                if any(n.startswith("adapters") for n in imported_modules(p))]
    assert set(builders) <= ALLOWED
