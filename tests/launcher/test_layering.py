"""The launcher sits on top: nothing of the gateway imports it, and the domain imports nothing
above it (only the standard library, third-party packages and ``hitl`` itself)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUR_PACKAGES = frozenset(
    {"hitl", "store", "workflows", "activities", "api", "migrations", "launcher", "bench"}
    | {"worker", "discord_bot", "tests"}
)
GATEWAY = ("hitl", "store", "workflows", "activities", "api", "migrations")
"""What runs in production; it must never need the launcher."""


def _sources(*roots: str) -> Iterator[Path]:
    for root in roots:
        path = REPO / root
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.partition(".")[0])
    return roots


def test_imports_are_read_from_the_source(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import a.b\nfrom c.d import e\nfrom . import f\n", encoding="utf-8")
    assert imported_roots(module) == {"a", "c"}


@pytest.mark.parametrize("path", list(_sources(*GATEWAY, "worker.py", "discord_bot.py")))
def test_the_gateway_never_imports_the_launcher(path: Path) -> None:
    assert "launcher" not in imported_roots(path), path.relative_to(REPO)


@pytest.mark.parametrize("path", list(_sources("hitl")))
def test_the_domain_imports_nothing_above_it(path: Path) -> None:
    above = imported_roots(path) & (OUR_PACKAGES - {"hitl"})
    assert not above, f"{path.relative_to(REPO)} imports {sorted(above)}"
