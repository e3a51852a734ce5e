"""Configuration from the environment: defaults, custom values, SEC-040 naming the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from hitl.errors import ConfigurationError, ErrorCode
from hitl.settings import get_settings, load_settings

PREFIXES = ("HITL_", "DATABASE_", "TEMPORAL_", "MARKET_DATA_")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Only the one required variable is set; relative paths resolve under ``tmp_path``."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice,bob")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _refusal(variable: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    error = caught.value
    assert error.error is ErrorCode.CONFIGURATION
    assert error.variable == variable
    assert error.details == {"variable": variable}
    assert str(error).startswith(f"SEC-040: {variable} ")
    return error


# --- defaults ------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = get_settings()
    assert settings.hitl.enabled is True
    assert settings.hitl.timeout_seconds == 300
    assert settings.hitl.slippage_max_percent == Decimal("0.5")
    assert isinstance(settings.hitl.slippage_max_percent, Decimal)
    assert settings.hitl.allowed_operators == frozenset({"alice", "bob"})
    assert settings.temporal.address == "127.0.0.1:7233"
    assert settings.temporal.namespace == "default"
    assert settings.temporal.task_queue == "hitl-approvals"
    assert settings.database.url == ""
    assert settings.market_data.url == ""
    assert settings.market_data.timeout_seconds == 2.0


def test_default_database_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    expected = tmp_path.resolve() / "data" / "hitl.db"
    assert get_settings().database_url == f"sqlite+aiosqlite:///{expected}"


def test_database_under_a_custom_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path / "state"))
    expected = tmp_path.resolve() / "state" / "hitl.db"
    assert get_settings().database_url == f"sqlite+aiosqlite:///{expected}"


def test_settings_are_read_once_until_the_cache_is_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = get_settings()
    monkeypatch.setenv("HITL_TIMEOUT_SECONDS", "60")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().hitl.timeout_seconds == 60


# --- custom values -------------------------------------------------------------------------


def test_custom_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_ENABLED", "false")
    monkeypatch.setenv("HITL_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("HITL_SLIPPAGE_MAX_PERCENT", "1.25")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://hitl@db:5432/hitl")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "trading")
    monkeypatch.setenv("TEMPORAL_TASK_QUEUE", "approvals")
    monkeypatch.setenv("MARKET_DATA_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MARKET_DATA_TIMEOUT_SECONDS", "0.5")

    settings = get_settings()

    assert settings.hitl.enabled is False
    assert settings.hitl.timeout_seconds == 45
    assert settings.hitl.slippage_max_percent == Decimal("1.25")
    assert settings.database_url == "postgresql+asyncpg://hitl@db:5432/hitl"
    assert settings.temporal.address == "temporal:7233"
    assert settings.temporal.namespace == "trading"
    assert settings.temporal.task_queue == "approvals"
    assert settings.market_data.url == "http://127.0.0.1:9000"
    assert settings.market_data.timeout_seconds == 0.5


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("no", False)],
)
def test_enabled_flag_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, enabled: bool) -> None:
    monkeypatch.setenv("HITL_ENABLED", raw)
    assert load_settings().hitl.enabled is enabled


@pytest.mark.parametrize(
    ("raw", "operators"),
    [
        ("alice", {"alice"}),
        ("alice,bob", {"alice", "bob"}),
        (" alice , bob ,carol ", {"alice", "bob", "carol"}),
        ("alice,,bob,", {"alice", "bob"}),
        ("alice,alice", {"alice"}),
        ("123456789012345678", {"123456789012345678"}),
    ],
)
def test_operators_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, operators: set[str]
) -> None:
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", raw)
    assert load_settings().hitl.allowed_operators == operators


def test_slippage_keeps_its_decimal_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_SLIPPAGE_MAX_PERCENT", "0.12345678")
    assert load_settings().hitl.slippage_max_percent == Decimal("0.12345678")


def test_zero_slippage_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_SLIPPAGE_MAX_PERCENT", "0")
    assert load_settings().hitl.slippage_max_percent == 0


# --- SEC-040 -------------------------------------------------------------------------------


def test_missing_operators_fail_with_sec_040(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITL_ALLOWED_OPERATORS")
    error = _refusal("HITL_ALLOWED_OPERATORS")
    assert str(error) == "SEC-040: HITL_ALLOWED_OPERATORS is required"


def test_get_settings_fails_with_sec_040_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITL_ALLOWED_OPERATORS")
    with pytest.raises(ConfigurationError, match="SEC-040: HITL_ALLOWED_OPERATORS"):
        get_settings()


@pytest.mark.parametrize("raw", ["", " ", ",", " , ,"])
def test_empty_operators_fail_with_sec_040(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", raw)
    error = _refusal("HITL_ALLOWED_OPERATORS")
    assert "at least one operator" in str(error)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("HITL_TIMEOUT_SECONDS", "0"),
        ("HITL_TIMEOUT_SECONDS", "-5"),
        ("HITL_TIMEOUT_SECONDS", "five"),
        ("HITL_TIMEOUT_SECONDS", "1.5"),
        ("HITL_SLIPPAGE_MAX_PERCENT", "-1"),
        ("HITL_SLIPPAGE_MAX_PERCENT", "-0.00000001"),
        ("HITL_SLIPPAGE_MAX_PERCENT", "half"),
        ("HITL_SLIPPAGE_MAX_PERCENT", "0.123456789"),
        ("HITL_ENABLED", "maybe"),
        ("HITL_ENABLED", ""),
        ("MARKET_DATA_TIMEOUT_SECONDS", "0"),
    ],
)
def test_invalid_values_fail_with_sec_040_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    error = _refusal(variable)
    assert f"{variable} is invalid" in str(error)
    assert error.error.http_status == 500
