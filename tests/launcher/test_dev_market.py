"""``hitl run`` refuses an ambiguous market before it starts anything (issue 18 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hitl.errors import ConfigurationError, ErrorCode
from launcher.dev_defaults import apply_dev_defaults

POSTGRES = "postgresql+asyncpg://hitl:pw@127.0.0.1:5432/hitl"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    # Set through monkeypatch, so apply_dev_defaults leaves them (and the test restores them).
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice")
    monkeypatch.setenv("HITL_API_TOKENS", "bot-1:bot:t1,alice:operator:t2")
    for name in ("DATABASE_URL", "MARKET_DATA_URL", "HITL_MARKET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_embedded_default_runs_on_the_paper_market(environment: pytest.MonkeyPatch) -> None:
    settings, tokens = apply_dev_defaults()
    assert settings.market.market == ""
    assert tokens is None


def test_a_postgresql_database_without_a_market_is_refused(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("DATABASE_URL", POSTGRES)
    with pytest.raises(ConfigurationError) as refused:
        apply_dev_defaults()
    assert refused.value.error is ErrorCode.CONFIGURATION
    assert "HITL_MARKET=simulated" in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"), [("HITL_MARKET", "simulated"), ("MARKET_DATA_URL", "http://quotes:8080")]
)
def test_a_postgresql_database_with_a_chosen_market_runs(
    environment: pytest.MonkeyPatch, name: str, value: str
) -> None:
    environment.setenv("DATABASE_URL", POSTGRES)
    environment.setenv(name, value)
    settings, _tokens = apply_dev_defaults()
    assert settings.database.url == POSTGRES
