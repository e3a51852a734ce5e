"""``hitl keys``: keyrings created once, listed without secrets, rotated with a grace period."""

from __future__ import annotations

import base64
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from hitl.keys import KeyPurpose, keyring_path, load_keyring
from launcher.cli import main
from launcher.commands.keys import parse_grace


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keys", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_creates_each_missing_keyring_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "keys"
    code, out, _ = _run(capsys, "init", "--dir", str(folder))
    assert code == 0
    assert "commands\tcreated" in out and "record\tcreated" in out
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    rings = {p: load_keyring(folder, p) for p in KeyPurpose}
    for purpose in KeyPurpose:
        assert stat.S_IMODE(keyring_path(folder, purpose).stat().st_mode) == 0o600
    code, out, _ = _run(capsys, "init", "--dir", str(folder))
    assert code == 0 and "created" not in out
    assert {p: load_keyring(folder, p) for p in KeyPurpose} == rings


def test_list_shows_ids_and_dates_never_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "init", "--dir", str(tmp_path))
    code, out, _ = _run(capsys, "list", "--dir", str(tmp_path))
    assert code == 0
    for purpose in KeyPurpose:
        ring = load_keyring(tmp_path, purpose)
        assert f"{purpose.value}\t{ring.active_id}\t" in out
        secret = ring.active().secret
        assert base64.b64encode(secret).decode() not in out and secret.hex() not in out
    assert out.count("\tactive") == 3


def test_rotate_makes_a_new_key_and_the_old_one_verifies_for_the_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "init", "--dir", str(tmp_path))
    before = load_keyring(tmp_path, KeyPurpose.COMMANDS)
    code, out, _ = _run(capsys, "rotate", "commands", "--grace", "2h", "--dir", str(tmp_path))
    assert code == 0, out
    after = load_keyring(tmp_path, KeyPurpose.COMMANDS)
    assert after.active_id != before.active_id
    old = after.keys[before.active_id]
    assert old.retired_at is not None and old.verify_until == old.retired_at + timedelta(hours=2)
    assert f"retired {old.retired_at:%Y-%m-%d %H:%M}" in out
    assert stat.S_IMODE(keyring_path(tmp_path, KeyPurpose.COMMANDS).stat().st_mode) == 0o600
    # The other keyrings are untouched.
    code, out, _ = _run(capsys, "list", "--dir", str(tmp_path))
    assert out.count("\tactive") == 3 and out.count("retired") == 1


def test_record_keys_verify_forever(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "init", "--dir", str(tmp_path))
    code, _, err = _run(capsys, "rotate", "record", "--grace", "7d", "--dir", str(tmp_path))
    assert code == 2 and "forever" in err
    code, _, _ = _run(capsys, "rotate", "record", "--dir", str(tmp_path))
    assert code == 0
    ring = load_keyring(tmp_path, KeyPurpose.RECORD)
    assert [k.verify_until for k in ring.keys.values()] == [None, None]


def test_a_missing_keyring_is_sec_040_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "rotate", "commands", "--dir", str(tmp_path))
    assert code == 2
    assert "SEC-040" in err and "hitl keys init" in err
    code, _, err = _run(capsys, "list", "--dir", str(tmp_path))
    assert code == 2 and "SEC-040" in err


def test_the_folder_comes_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HITL_KEYS_DIR", raising=False)
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path))
    code, _, _ = _run(capsys, "init")
    assert code == 0
    assert keyring_path(tmp_path / "keys", KeyPurpose.PAYLOADS).exists()


@pytest.mark.parametrize(
    ("text", "grace"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("0", timedelta(0)),
        ("forever", None),
    ],
)
def test_grace_periods(text: str, grace: timedelta | None) -> None:
    assert parse_grace(text) == grace


@pytest.mark.parametrize("text", ["", "7", "d7", "-1d", "1y", "1.5h"])
def test_grace_periods_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="--grace"):
        parse_grace(text)


def test_a_bad_grace_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "init", "--dir", str(tmp_path))
    code, _, err = _run(capsys, "rotate", "commands", "--grace", "soon", "--dir", str(tmp_path))
    assert code == 2 and "--grace" in err
