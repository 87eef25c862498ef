"""Imports go one way: cli → deploy → remote/config/secrets/routing/protocol; the server side never
imports the CLI side, and shared packages import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tako"

# package → packages it must never import
FORBIDDEN = {
    "server": {"cli", "deploy", "remote", "secrets"},
    "deploy": {"cli", "server"},
    "remote": {"cli", "deploy", "server", "secrets"},
    "secrets": {"cli", "deploy", "server", "remote"},
    "config": {"cli", "deploy", "server", "remote", "secrets"},
    "routing": {"cli", "deploy", "server", "remote", "secrets", "config"},
    "protocol": {"cli", "deploy", "server", "remote", "secrets", "config", "routing"},
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tako" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    offenders = []
    for path in sorted((SRC / package).rglob("*.py")):
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(SRC)} imports tako.{', tako.'.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)
