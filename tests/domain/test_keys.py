"""Keyrings: fresh keys, rotation with a grace period, the JSON on disk, and SEC-040 when a keyring
is missing or malformed."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hitl.errors import ConfigurationError, ErrorCode
from hitl.keys import (
    SECRET_BYTES,
    KeyPurpose,
    Keyring,
    KeyringFile,
    ensure_keyrings,
    keyring_path,
    keys_dir_from_environment,
    load_keyring,
    new_keyring,
    write_keyring,
)

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


def test_a_new_keyring_has_one_random_active_key_named_for_its_purpose_and_day() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    key = ring.active()
    assert key.id.startswith("commands-20261202-")
    assert len(key.secret) == SECRET_BYTES
    assert key.created_at == NOW
    assert key.retired_at is None and key.verify_until is None
    assert list(ring.keys) == [key.id]
    assert new_keyring(KeyPurpose.COMMANDS, now=NOW).active().secret != key.secret


def test_a_key_never_shows_its_secret() -> None:
    ring = new_keyring(KeyPurpose.PAYLOADS, now=NOW)
    secret = ring.active().secret
    assert secret.hex() not in repr(ring)
    assert repr(secret) not in repr(ring)


def test_the_active_key_verifies_at_any_time() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    key = ring.active()
    assert ring.for_verify(key.id, NOW + timedelta(days=3650)) == key
    assert ring.for_verify("commands-19700101-0000", NOW) is None


def test_rotation_makes_a_new_active_key_and_the_old_one_verifies_during_the_grace_only() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    old = ring.active()
    later = NOW + timedelta(days=30)
    rotated = ring.rotated(now=later, grace=timedelta(days=7))
    new = rotated.active()
    assert new.id != old.id and new.secret != old.secret
    assert new.created_at == later
    retired = rotated.keys[old.id]
    assert retired.secret == old.secret
    assert retired.retired_at == later
    assert retired.verify_until == later + timedelta(days=7)
    assert rotated.for_verify(old.id, later + timedelta(days=7)) == retired
    assert rotated.for_verify(old.id, later + timedelta(days=7, microseconds=1)) is None
    assert rotated.for_verify(new.id, later + timedelta(days=700)) == new
    assert ring.active() == old, "rotation returns a new keyring and leaves this one alone"


def test_rotation_without_a_grace_keeps_the_old_key_verifying_forever() -> None:
    ring = new_keyring(KeyPurpose.RECORD, now=NOW)
    old = ring.active()
    rotated = ring.rotated(now=NOW + timedelta(days=1), grace=None)
    assert rotated.keys[old.id].verify_until is None
    assert rotated.for_verify(old.id, NOW + timedelta(days=36500)) is not None


def test_rotation_drops_keys_whose_grace_has_passed() -> None:
    first = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    second = first.rotated(now=NOW + timedelta(days=1), grace=timedelta(hours=1))
    third = second.rotated(now=NOW + timedelta(days=2), grace=timedelta(hours=1))
    assert first.active_id not in third.keys
    assert set(third.keys) == {second.active_id, third.active_id}


def test_rotation_refuses_a_negative_grace_and_naive_times() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    with pytest.raises(ValueError, match="negative"):
        ring.rotated(now=NOW, grace=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone"):
        ring.rotated(now=datetime(2026, 12, 2), grace=None)


def test_a_keyring_survives_its_json() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW).rotated(
        now=NOW + timedelta(days=1), grace=timedelta(days=7)
    )
    again = Keyring.from_json(ring.to_json(), KeyPurpose.COMMANDS)
    assert again == ring
    assert again.active_id == ring.active_id


def test_a_keyring_knows_its_active_key() -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    with pytest.raises(ValueError, match="active"):
        Keyring(purpose=KeyPurpose.COMMANDS, active_id="elsewhere", keys=ring.keys)


def _mangled(change: str) -> str:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW).rotated(now=NOW, grace=timedelta(days=1))
    data = json.loads(ring.to_json())
    if change == "purpose":
        data["purpose"] = "payloads"
    elif change == "no keys":
        data["keys"] = []
    elif change == "active unknown":
        data["active_id"] = "nobody"
    elif change == "active retired":
        data["active_id"] = next(k["id"] for k in data["keys"] if k["retired_at"])
    elif change == "short secret":
        data["keys"][0]["secret"] = "c2hvcnQ="
    elif change == "not base64":
        data["keys"][0]["secret"] = "!!!"
    elif change == "naive time":
        data["keys"][0]["created_at"] = "2026-12-02T09:30:00"
    elif change == "bad time":
        data["keys"][0]["verify_until"] = "tomorrow"
    elif change == "duplicate id":
        data["keys"][1]["id"] = data["keys"][0]["id"]
    elif change == "no id":
        del data["keys"][0]["id"]
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("purpose", "not 'commands' keys"),
        ("no keys", "has no keys"),
        ("active unknown", "no active key"),
        ("active retired", "is retired"),
        ("short secret", "not 32 bytes"),
        ("not base64", "not base64"),
        ("naive time", "without a timezone"),
        ("bad time", "invalid verify_until"),
        ("duplicate id", "twice"),
        ("no id", "without an id"),
    ],
)
def test_a_malformed_keyring_is_refused_without_naming_a_secret(change: str, says: str) -> None:
    text = _mangled(change)
    with pytest.raises(ValueError, match=says) as caught:
        Keyring.from_json(text, KeyPurpose.COMMANDS)
    for entry in json.loads(text)["keys"]:
        assert str(entry.get("secret")) not in str(caught.value)


@pytest.mark.parametrize("text", ["", "not json", "[]", '"text"'])
def test_text_that_is_no_keyring_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each says what is wrong in its own words
        Keyring.from_json(text, KeyPurpose.COMMANDS)


def test_a_written_keyring_is_read_back_and_only_its_owner_may_read_it(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    path = write_keyring(keys_dir, ring)
    assert path == keyring_path(keys_dir, KeyPurpose.COMMANDS) == keys_dir / "commands.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert load_keyring(keys_dir, KeyPurpose.COMMANDS) == ring
    assert [p.name for p in keys_dir.iterdir()] == ["commands.json"], "no temporary file left"


def test_rewriting_a_keyring_replaces_it(tmp_path: Path) -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    write_keyring(tmp_path, ring)
    rotated = ring.rotated(now=NOW + timedelta(days=1), grace=timedelta(days=7))
    write_keyring(tmp_path, rotated)
    assert load_keyring(tmp_path, KeyPurpose.COMMANDS) == rotated


def test_ensure_creates_only_the_missing_keyrings(tmp_path: Path) -> None:
    existing = new_keyring(KeyPurpose.RECORD, now=NOW)
    write_keyring(tmp_path, existing)
    created = ensure_keyrings(tmp_path, now=NOW)
    assert created == [KeyPurpose.COMMANDS, KeyPurpose.PAYLOADS]
    assert load_keyring(tmp_path, KeyPurpose.RECORD) == existing
    assert ensure_keyrings(tmp_path, now=NOW) == []
    for purpose in KeyPurpose:
        assert stat.S_IMODE(keyring_path(tmp_path, purpose).stat().st_mode) == 0o600


def test_a_missing_keyring_is_sec_040_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_keyring(tmp_path, KeyPurpose.COMMANDS)
    error = caught.value
    assert error.error is ErrorCode.CONFIGURATION
    assert error.variable == "HITL_KEYS_DIR"
    assert "commands" in error.message and "hitl keys init" in error.message
    assert "\n" not in str(error)


def test_a_malformed_keyring_is_sec_040_with_the_fix(tmp_path: Path) -> None:
    keyring_path(tmp_path, KeyPurpose.PAYLOADS).write_text("{}")
    with pytest.raises(ConfigurationError) as caught:
        load_keyring(tmp_path, KeyPurpose.PAYLOADS)
    assert caught.value.error is ErrorCode.CONFIGURATION
    assert "malformed" in caught.value.message
    assert "\n" not in str(caught.value)


def test_another_purpose_s_keyring_is_refused(tmp_path: Path) -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    keyring_path(tmp_path, KeyPurpose.RECORD).write_text(ring.to_json())
    with pytest.raises(ConfigurationError, match="not 'record' keys"):
        load_keyring(tmp_path, KeyPurpose.RECORD)


def test_the_keys_folder_comes_from_the_environment() -> None:
    assert keys_dir_from_environment({}) == Path("data/keys")
    assert keys_dir_from_environment({"HITL_DATA_DIR": "/srv/hitl"}) == Path("/srv/hitl/keys")
    assert keys_dir_from_environment(
        {"HITL_DATA_DIR": "/srv/hitl", "HITL_KEYS_DIR": "/run/secrets/hitl"}
    ) == Path("/run/secrets/hitl")


def test_a_keyring_file_follows_rotations_and_keeps_the_last_good_keyring(tmp_path: Path) -> None:
    ring = new_keyring(KeyPurpose.COMMANDS, now=NOW)
    write_keyring(tmp_path, ring)
    source = KeyringFile(tmp_path, KeyPurpose.COMMANDS)
    assert source.current() == ring
    rotated = ring.rotated(now=NOW + timedelta(days=1), grace=timedelta(days=1))
    write_keyring(tmp_path, rotated)
    assert source.current() == rotated
    keyring_path(tmp_path, KeyPurpose.COMMANDS).write_text("half a keyr")
    assert source.current() == rotated
    assert source.error is not None and source.error.error is ErrorCode.CONFIGURATION
    write_keyring(tmp_path, ring)
    assert source.current() == ring and source.error is None


def test_a_keyring_file_refuses_to_start_without_its_keyring(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="hitl keys init"):
        KeyringFile(tmp_path, KeyPurpose.COMMANDS)
