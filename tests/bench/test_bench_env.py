"""``python -m bench --env NAME=VALUE``: a setting for the worker and the API in an experiment
(the caller's own HITL_* settings never reach the benchmark's stack)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import _parse
from bench.stack import Stack, StackConfig


def test_env_settings_reach_the_worker_and_api_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HITL_RECONCILE_SECONDS", "1")  # the caller's: never passed on
    args = _parse(["--env", "HITL_RECONCILE_SECONDS=10", "--env", "HITL_REMIND_AT=0"])
    assert args.gateway_env == {"HITL_RECONCILE_SECONDS": "10", "HITL_REMIND_AT": "0"}
    stack = Stack(
        StackConfig(workdir=tmp_path, database_url="sqlite://", extra_env=args.gateway_env)
    )
    env = stack.env()
    assert (env["HITL_RECONCILE_SECONDS"], env["HITL_REMIND_AT"]) == ("10", "0")
    assert (
        "HITL_RECONCILE_SECONDS"
        not in Stack(StackConfig(workdir=tmp_path, database_url="sqlite://")).env()
    )


def test_env_without_a_name_and_value_is_refused() -> None:
    with pytest.raises(SystemExit):
        _parse(["--env", "HITL_RECONCILE_SECONDS"])
