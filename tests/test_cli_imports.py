"""The CLI depends on the vault's public API only: cli -> vault, never cli -> keys."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parent.parent / "cli"


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..vault import x
            roots.update(
                [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            )
    return roots


def test_cli_modules_import_vault_but_never_keys_directly() -> None:
    files = sorted(CLI.glob("*.py"))
    assert files, "no cli modules found"
    offenders = {f.name for f in files if "keys" in _imported_roots(f)}
    assert offenders == set()
    assert any("vault" in _imported_roots(f) for f in files)
