"""The ``hitl`` command: its groups, their help, their exit codes, and ``hitl migrate``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from launcher.cli import build_parser, command_modules

REPO = Path(__file__).resolve().parents[2]
GROUPS = ("demo", "migrate", "run", "tokens")
"""The groups the issue asks for; more may plug in (launcher/commands/)."""


def hitl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``hitl`` as a process, the way an operator would, from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with the data folder in ``tmp_path`` and ``overrides``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HITL_")}
    env |= {"HITL_ALLOWED_OPERATORS": "alice", "HITL_DATA_DIR": str(tmp_path / "data")}
    return env | overrides


def test_the_console_script_is_declared_and_installed() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert scripts["hitl"] == "launcher.cli:main"
    script = Path(sys.executable).with_name("hitl")
    assert script.exists(), f"{script} is missing: `make install` installs the project"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "tokens" in result.stdout


def test_every_group_is_listed_with_what_it_does() -> None:
    names = [module.__name__.rpartition(".")[2] for module in command_modules()]
    assert set(GROUPS) <= set(names)
    result = hitl("--help")
    assert result.returncode == 0, result.stderr
    for group in GROUPS:
        assert f"    {group} " in result.stdout, f"hitl --help does not list {group}"


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["demo"],
        ["migrate"],
        ["tokens"],
        ["tokens", "issue"],
        ["tokens", "list"],
        ["tokens", "revoke"],
    ],
)
def test_help_on_each_command_says_what_it_does(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    usage, _, description = out.partition("\n\n")
    assert usage.startswith(f"usage: hitl {' '.join(argv)}")
    # A sentence, not just the usage line and the options.
    assert len(description.split("\n\n")[0].split()) >= 8, out


def test_usage_errors_exit_2() -> None:
    assert hitl().returncode == 2
    assert hitl("no-such-command").returncode == 2
    assert hitl("tokens", "issue", "dana", "emperor").returncode == 2
    result = hitl("demo", "--interval", "0")
    assert result.returncode == 2
    assert "must be positive" in result.stderr


def test_invalid_settings_exit_2_naming_the_variable(tmp_path: Path) -> None:
    env = environment(tmp_path)
    del env["HITL_ALLOWED_OPERATORS"]
    for argv in (["migrate"], ["tokens", "list"]):
        result = hitl(*argv, env=env)
        assert result.returncode == 2, result.stderr
        assert "SEC-040" in result.stderr
        assert "HITL_ALLOWED_OPERATORS" in result.stderr
    run = hitl("run", env=environment(tmp_path, TEMPORAL_ADDRESS="nowhere"))
    assert run.returncode == 2, run.stderr
    assert "TEMPORAL_ADDRESS" in run.stderr


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_migrate_brings_the_settings_database_to_head_and_is_idempotent(tmp_path: Path) -> None:
    database = tmp_path / "data" / "hitl.db"
    env = environment(tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    first = hitl("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert {"alembic_version", "hitl_approvals", "audit_log", "api_tokens"} <= _tables(database)
    again = hitl("migrate", env=env)
    assert again.returncode == 0, again.stderr


def test_revoking_nothing_exits_1(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}"
    env = environment(tmp_path)
    assert hitl("migrate", "--url", url, env=env).returncode == 0
    result = hitl("tokens", "revoke", "nobody", "--url", url, env=env)
    assert result.returncode == 1
    assert "revoked 0 token(s) of nobody" in result.stdout
