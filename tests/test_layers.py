"""The house rules of docs/architecture.md, checked on the source: which package may import which,
and that SQL stays in ``store/`` (issue 13)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Our top-level packages and modules, and what each may import of the others. Data flows one
# way: API -> Temporal client -> workflow -> activities -> store; the domain (hitl) imports none.
OURS = {
    "hitl",
    "store",
    "activities",
    "workflows",
    "api",
    "launcher",
    "worker",
    "discord_bot",
    "migrations",
    "hitl_client",
}
ALLOWED: dict[str, set[str]] = {
    "hitl": set(),
    "hitl_client": {"hitl"},
    "store": {"hitl"},
    "activities": {"hitl", "store"},
    "workflows": {"hitl", "activities"},
    "api": {"hitl", "store", "workflows"},
    "migrations": {"hitl", "store"},
    "worker": {"hitl", "store", "activities", "workflows"},
    "discord_bot": {"hitl", "store", "activities", "workflows"},
    "launcher": OURS - {"launcher"},
}
# Single modules of a higher layer a package may import, where the whole package may not: the
# API quotes the worker's market for the operators' slippage preview (issue 18 item 6) through
# the providers, plain I/O clients with no Temporal in them, and nothing else of activities/.
ALLOWED_MODULES: dict[str, set[str]] = {"api": {"activities.market_providers"}}
SQL_ALLOWED = {"store", "migrations"}


def _owner(path: Path) -> str:
    relative = path.relative_to(REPO)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _sources() -> Iterator[Path]:
    for name in sorted(ALLOWED):
        folder = REPO / name
        if folder.is_dir():
            yield from sorted(folder.rglob("*.py"))
        elif (REPO / f"{name}.py").is_file():
            yield REPO / f"{name}.py"


def _modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _imports(path: Path) -> Iterator[str]:
    for module in _modules(path):
        if module not in ALLOWED_MODULES.get(_owner(path), set()):
            yield module.split(".")[0]


SOURCES = list(_sources())


def test_every_package_is_checked() -> None:
    assert {_owner(path) for path in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path: Path) -> None:
    owner = _owner(path)
    imported = set(_imports(path))
    upward = (imported & OURS) - ALLOWED[owner] - {owner}
    assert not upward, f"{owner} may not import {sorted(upward)} (docs/architecture.md)"
    if owner not in SQL_ALLOWED:
        assert "sqlalchemy" not in imported, "SQL lives in store/ (docs/architecture.md)"
