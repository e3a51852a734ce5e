"""The gateway's secret keys: one keyring per purpose, with key ids, rotation and a grace period.

A keyring is a small JSON file in the keys folder (``HITL_KEYS_DIR``, mode 0600 in a 0700 folder).
Its *active* key signs or encrypts now; keys it replaced still verify (or decrypt) until their
``verify_until``, so commands and payloads issued just before a rotation are not refused. Keys that
must verify forever (the audit record's MACs) are retired with no ``verify_until``.

Only this module reads or writes keyrings; nothing here ever logs or renders a secret.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hitl.errors import ConfigurationError

SECRET_BYTES = 32
"""Every key is 256 bits: enough for HMAC-SHA256 and exactly what AES-256-GCM takes."""

KEYS_DIR_VARIABLE = "HITL_KEYS_DIR"
_FORMAT = 1


class KeyPurpose(StrEnum):
    """What a keyring's keys are for; one keyring (one file) per purpose."""

    COMMANDS = "commands"
    """Signs the commands the gateway sends its workflows (issue 14)."""
    PAYLOADS = "payloads"
    """Encrypts workflow payloads with AES-GCM (issue 14)."""
    RECORD = "record"
    """MACs of stored rows and the audit chain (issue 15); its keys verify forever."""


@dataclass(frozen=True, slots=True)
class Key:
    """One secret key and its life: created, retired (replaced as active), verifiable until."""

    id: str
    secret: bytes = field(repr=False)
    created_at: datetime
    retired_at: datetime | None = None
    verify_until: datetime | None = None
    """None: verifies forever (the active key, or a retired key rotated without a grace)."""

    def verifies_at(self, at: datetime) -> bool:
        """Whether this key may still verify (or decrypt) something at ``at``."""
        return self.verify_until is None or at <= self.verify_until


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys of one purpose: the active one and those it replaced."""

    purpose: KeyPurpose
    active_id: str
    keys: Mapping[str, Key]

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise ValueError(f"the active key {self.active_id!r} is not in the keyring")
        # A read-only view, so a frozen keyring cannot be changed through its mapping.
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def active(self) -> Key:
        """The key that signs or encrypts now."""
        return self.keys[self.active_id]

    def for_verify(self, key_id: str, at: datetime) -> Key | None:
        """The key named ``key_id`` if it may verify at ``at``; None if unknown or past its
        ``verify_until``."""
        key = self.keys.get(key_id)
        if key is None or not key.verifies_at(at):
            return None
        return key

    def rotated(self, *, now: datetime, grace: timedelta | None) -> Keyring:
        """A keyring with a new active key; the old one verifies until ``now + grace``
        (forever when ``grace`` is None). Keys already past their ``verify_until`` are dropped:
        nothing may use them any more, so their secrets are not kept."""
        _require_aware(now)
        if grace is not None and grace < timedelta(0):
            raise ValueError("the grace period cannot be negative")
        old = self.active()
        kept = {
            key_id: key
            for key_id, key in self.keys.items()
            if key_id != old.id and key.verifies_at(now)
        }
        kept[old.id] = replace(
            old, retired_at=now, verify_until=None if grace is None else now + grace
        )
        new = _new_key(self.purpose, now=now, taken=set(self.keys))
        kept[new.id] = new
        return Keyring(purpose=self.purpose, active_id=new.id, keys=kept)

    def to_json(self) -> str:
        """The keyring as the JSON kept on disk (secrets base64-encoded)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "purpose": self.purpose.value,
                "active_id": self.active_id,
                "keys": [
                    {
                        "id": key.id,
                        "secret": base64.b64encode(key.secret).decode("ascii"),
                        "created_at": key.created_at.isoformat(),
                        "retired_at": _iso(key.retired_at),
                        "verify_until": _iso(key.verify_until),
                    }
                    for key in self.keys.values()
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, purpose: KeyPurpose) -> Keyring:
        """Parse a keyring; ValueError (never naming a secret) when it is malformed or holds
        another purpose's keys."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("purpose") != purpose.value:
            raise ValueError(f"holds {data.get('purpose')!r} keys, not {purpose.value!r} keys")
        entries = data.get("keys")
        if not isinstance(entries, list) or not entries:
            raise ValueError("has no keys")
        keys: dict[str, Key] = {}
        for entry in entries:
            key = _key_from_json(entry)
            if key.id in keys:
                raise ValueError(f"names the key {key.id!r} twice")
            keys[key.id] = key
        active_id = data.get("active_id")
        if not isinstance(active_id, str) or active_id not in keys:
            raise ValueError("names no active key among its keys")
        if keys[active_id].retired_at is not None:
            raise ValueError(f"its active key {active_id!r} is retired")
        return cls(purpose=purpose, active_id=active_id, keys=keys)


def new_keyring(purpose: KeyPurpose, *, now: datetime) -> Keyring:
    """A keyring with one fresh random key, active from ``now``."""
    _require_aware(now)
    key = _new_key(purpose, now=now, taken=set())
    return Keyring(purpose=purpose, active_id=key.id, keys={key.id: key})


def keys_dir_from_environment(environ: Mapping[str, str] | None = None) -> Path:
    """The keys folder the settings name: ``HITL_KEYS_DIR``, else ``<HITL_DATA_DIR>/keys``
    (``data/keys``). For commands that need the keys and none of the other settings."""
    environ = os.environ if environ is None else environ
    named = environ.get(KEYS_DIR_VARIABLE, "").strip()
    if named:
        return Path(named)
    return Path(environ.get("HITL_DATA_DIR", "").strip() or "data") / "keys"


def keyring_path(keys_dir: Path, purpose: KeyPurpose) -> Path:
    """Where the keyring of ``purpose`` lives."""
    return keys_dir / f"{purpose.value}.json"


def load_keyring(keys_dir: Path, purpose: KeyPurpose) -> Keyring:
    """Read the keyring of ``purpose``; ConfigurationError (SEC-040) with the fix in one line
    when it is missing or malformed."""
    path = keyring_path(keys_dir, purpose)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            KEYS_DIR_VARIABLE,
            f"has no {purpose.value} keyring ({path}): create it with `hitl keys init` "
            f"(make run does it on first start) or mount it from the deployment's secret",
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            KEYS_DIR_VARIABLE,
            f"keyring {path} cannot be read ({exc.strerror}): give this process read access",
        ) from None
    try:
        return Keyring.from_json(text, purpose)
    except ValueError as exc:
        raise ConfigurationError(
            KEYS_DIR_VARIABLE,
            f"keyring {path} is malformed ({exc}): restore it from backup, or move it aside "
            f"and run `hitl keys init` (what the old keys protected then no longer verifies)",
        ) from None


def write_keyring(keys_dir: Path, keyring: Keyring) -> Path:
    """Write ``keyring`` atomically, readable by its owner only (0600 in a 0700 folder)."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keyring_path(keys_dir, keyring.purpose)
    # Written beside its final path and renamed: a crash never leaves half a keyring, and the
    # file never exists with looser permissions than 0600 (mkstemp creates it so).
    descriptor, temporary = tempfile.mkstemp(prefix=f".{keyring.purpose.value}-", dir=keys_dir)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(keyring.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def ensure_keyrings(
    keys_dir: Path, purposes: tuple[KeyPurpose, ...] = tuple(KeyPurpose), *, now: datetime
) -> list[KeyPurpose]:
    """Create the keyrings of ``purposes`` that do not exist yet; returns those created.
    Existing keyrings are never touched (a malformed one is for ``load_keyring`` to refuse)."""
    created: list[KeyPurpose] = []
    for purpose in purposes:
        if not keyring_path(keys_dir, purpose).exists():
            write_keyring(keys_dir, new_keyring(purpose, now=now))
            created.append(purpose)
    return created


class KeyringFile:
    """A keyring on disk that a long-running process reads again when the file changes, so a
    rotation (``hitl keys rotate``) reaches every process without a restart.

    The first read refuses to start (SEC-040) when the keyring is missing or malformed; a later
    change that cannot be read keeps the last good keyring (and ``error`` says why), so a
    half-copied file never stops a running gateway.
    """

    def __init__(self, keys_dir: Path, purpose: KeyPurpose) -> None:
        self.path = keyring_path(keys_dir, purpose)
        self._keys_dir = keys_dir
        self._purpose = purpose
        self._keyring = load_keyring(keys_dir, purpose)
        self._stamp = self._stat()
        self.error: ConfigurationError | None = None

    @property
    def purpose(self) -> KeyPurpose:
        """What the keyring's keys are for."""
        return self._purpose

    def current(self) -> Keyring:
        """The keyring as the file holds it now (re-read only when the file has changed)."""
        stamp = self._stat()
        if stamp != self._stamp:
            try:
                self._keyring = load_keyring(self._keys_dir, self._purpose)
                self.error = None
            except ConfigurationError as exc:
                self.error = exc
            self._stamp = stamp
        return self._keyring

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)


def _new_key(purpose: KeyPurpose, *, now: datetime, taken: set[str]) -> Key:
    while True:
        key_id = f"{purpose.value}-{now.astimezone(UTC):%Y%m%d}-{secrets.token_hex(2)}"
        if key_id not in taken:
            return Key(id=key_id, secret=secrets.token_bytes(SECRET_BYTES), created_at=now)


def _key_from_json(entry: Any) -> Key:
    if not isinstance(entry, dict):
        raise ValueError("has a key that is not a JSON object")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not key_id:
        raise ValueError("has a key without an id")
    try:
        secret = base64.b64decode(str(entry.get("secret", "")), validate=True)
    except ValueError:
        raise ValueError(f"key {key_id!r} has a secret that is not base64") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"key {key_id!r} has a secret that is not {SECRET_BYTES} bytes")
    created_at = _parse_time(entry.get("created_at"), key_id, "created_at")
    if created_at is None:
        raise ValueError(f"key {key_id!r} has no created_at")
    return Key(
        id=key_id,
        secret=secret,
        created_at=created_at,
        retired_at=_parse_time(entry.get("retired_at"), key_id, "retired_at"),
        verify_until=_parse_time(entry.get("verify_until"), key_id, "verify_until"),
    )


def _parse_time(value: Any, key_id: str, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"key {key_id!r} has an invalid {name}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"key {key_id!r} has a {name} without a timezone")
    return parsed


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("key times must be timezone-aware")
