"""One-way imports: CLI -> client; web -> engine -> store. Checked on the source, so a shortcut shows up here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "moose_daemon"

# module -> what it must never import (package modules by name, or third-party packages)
FORBIDDEN = {
    "cli": {"aiohttp", "aiosqlite", "orjson", "argon2", "engine", "store", "web", "executor", "definitions"},
    "client": {"aiohttp", "aiosqlite", "orjson", "engine", "store", "web", "daemon", "definitions"},
    "config": {"aiohttp", "aiosqlite", "orjson", "engine", "store", "web"},
    "engine": {"aiohttp", "web", "daemon", "cli"},
    "executor": {"aiohttp", "web", "engine", "daemon", "cli"},
    "store": {"aiohttp", "web", "engine", "executor", "definitions", "daemon", "cli"},
    "registry": {"aiohttp", "web", "engine", "store", "daemon"},
    "scheduler": {"aiohttp", "web", "engine", "daemon"},
    "models": {"aiohttp", "aiosqlite", "engine", "store", "web"},
    "errors": {"aiohttp", "aiosqlite", "engine", "store", "web"},
    "durations": {"aiohttp", "aiosqlite", "engine", "store", "web"},
    "definitions": {"aiohttp", "aiosqlite", "engine", "store", "web", "executor"},
}


def imported_names(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from . import x
                names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_go_one_way(module: str) -> None:
    assert imported_names(module) & FORBIDDEN[module] == set()
