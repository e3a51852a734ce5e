"""HITL_FOUR_EYES_RISK_PCT: unset or empty is off; a percentage turns four eyes on in the
worker's policy; anything else refuses to start with SEC-040 naming the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from hitl.errors import ConfigurationError, ErrorCode
from hitl.settings import get_settings, known_variables, load_settings

VARIABLE = "HITL_FOUR_EYES_RISK_PCT"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith(("HITL_", "DATABASE_", "TEMPORAL_", "MARKET_DATA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice,bob")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_unset_is_off() -> None:
    settings = load_settings()
    assert settings.hitl.four_eyes_risk_pct is None
    assert settings.policy().four_eyes_risk_pct is None
    assert VARIABLE in known_variables()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2.0", Decimal("2.0")), ("2%", Decimal(2)), (" 0.75 % ", Decimal("0.75")), ("", None)],
)
def test_a_percentage_turns_it_on_in_the_worker_s_policy(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: Decimal | None
) -> None:
    monkeypatch.setenv(VARIABLE, value)
    settings = load_settings()
    assert settings.hitl.four_eyes_risk_pct == expected
    assert settings.policy().four_eyes_risk_pct == expected


@pytest.mark.parametrize("value", ["two", "-1", "100", "150%"])
def test_anything_else_refuses_to_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.error is ErrorCode.CONFIGURATION
    assert caught.value.variable == VARIABLE
