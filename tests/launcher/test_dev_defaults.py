"""make run's development defaults: tokens generated once, kept private, read back unchanged."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from launcher.dev_defaults import (
    DEV_PRINCIPALS,
    TOKENS_FILE,
    declared_tokens,
    first_token_of_role,
    load_or_create_dev_tokens,
    read_dev_tokens,
)
from launcher.errors import StartupError


def test_tokens_are_generated_once_into_a_private_file(tmp_path: Path) -> None:
    first = load_or_create_dev_tokens(tmp_path)
    path = tmp_path / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first) == {principal for principal, _ in DEV_PRINCIPALS}
    assert len(set(first.values())) == len(first)
    path.chmod(0o644)  # copied around carelessly
    assert load_or_create_dev_tokens(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_tokens_file_missing_a_principal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_text("HITL_API_TOKENS=bot-1:bot:abc\n", encoding="utf-8")
    with pytest.raises(StartupError, match="no token for alice, admin"):
        read_dev_tokens(path)


def test_the_declared_value_names_each_role_and_finds_the_bot() -> None:
    tokens = {"bot-1": "b", "alice": "o", "admin": "a"}
    declared = declared_tokens(tokens)
    assert declared == "bot-1:bot:b,alice:operator:o,admin:admin:a"
    assert first_token_of_role(declared, "bot") == ("bot-1", "b")
    assert first_token_of_role(declared, "guardian") is None
