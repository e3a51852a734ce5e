"""Keyed integrity of stored records: an HMAC-SHA256 over a record's canonical content.

The seed's row hash (``hitl.hashing``) is unkeyed: whoever can write the database and read this
code can recompute it. A MAC needs the RECORD key, which lives in the gateway's keys folder and
never in the database, so a row edited behind the gateway's back cannot be given a valid MAC.

The content MAC'd is the canonical JSON of :class:`hitl.hashing.RowHasher` (sorted keys, decimals
with 8 places, UTC datetimes with microseconds), prefixed with a version tag, the record kind (an
approval's MAC can never pass for an audit entry's) and the key id (stored beside the MAC, so a
rotated key keeps verifying what it signed). Fields that hold the integrity data itself
(``row_hash``, ``mac``, ``mac_key_id``) and the database's surrogate ``id`` are left out, and so
are fields added later while they are empty (``hitl.hashing.ELIDED_WHEN_EMPTY``: an approval's
``approvers``), so rows sealed before them still verify and a non-empty value is covered.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel

from hitl.hashing import RowHasher, elided

MAC_VERSION = b"hitl-record-mac-v1"
"""Bumped if the canonical form ever changes; old MACs are then verified with the old form."""

EXCLUDED_FIELDS = frozenset({"id", "row_hash", "mac", "mac_key_id"})
"""Fields never part of a MAC'd content: the surrogate key and the integrity data itself."""


class RecordKind(StrEnum):
    """What a MAC covers; part of the MAC'd text (domain separation)."""

    APPROVAL = "approval"
    AUDIT = "audit"
    SNAPSHOT = "snapshot"
    GUARDIAN = "guardian"
    CHECKPOINT = "checkpoint"
    """A chain head recorded outside the database (a line of the checkpoint file)."""
    NOTICE = "notice"
    """A queued notice to the operators: its kind and the approval it tells of."""


class SigningKey(Protocol):
    """A RECORD key as :class:`hitl.keys.Key` holds it: its id and its secret bytes."""

    @property
    def id(self) -> str:
        """The key id stored beside each MAC."""
        ...

    @property
    def secret(self) -> bytes:
        """The secret; never stored in the database."""
        ...


class RecordKeys(Protocol):
    """The part of :class:`hitl.keys.Keyring` (purpose RECORD) that MACs need."""

    def active(self) -> SigningKey:
        """The key that signs now."""
        ...

    def for_verify(self, key_id: str, at: datetime) -> SigningKey | None:
        """The key ``key_id`` if it still verifies at ``at``; None for an unknown id."""
        ...


# Values json.dumps renders canonically as they are (nested dicts get sorted keys too).
_JSON_NATIVE = frozenset({str, int, bool, type(None), dict, list})


class CanonicalJSON(str):
    """JSON text already in canonical form (sorted keys, no spaces, ASCII), such as an audit
    entry's payload as the audit writer stores it: spliced into the canonical content as it is,
    rather than parsed and rendered again (the verifier's hot path)."""


def canonical_json_text(value: Any) -> CanonicalJSON:
    """``value`` rendered as :class:`CanonicalJSON`."""
    return CanonicalJSON(
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    )


def _parsed(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: json.loads(value) if type(value) is CanonicalJSON else value
        for name, value in values.items()
        if name not in EXCLUDED_FIELDS
    }


_MARKERS = [(f"\x00{n}", json.dumps(f"\x00{n}")) for n in range(4)]


def _marker(number: int) -> tuple[str, str]:
    if number < len(_MARKERS):
        return _MARKERS[number]
    return f"\x00{number}", json.dumps(f"\x00{number}")


def canonical_content(fields: Mapping[str, Any] | BaseModel) -> str:
    """The canonical JSON of ``fields`` without :data:`EXCLUDED_FIELDS`.

    Exactly :meth:`RowHasher.canonical_json`'s text (a :class:`CanonicalJSON` value counts as
    the JSON it holds); the common types are rendered in one pass, because the verifier runs
    this for every audit entry.
    """
    values = fields.model_dump() if isinstance(fields, BaseModel) else fields
    plain: dict[str, Any] = {}
    spliced: dict[str, str] = {}
    for name, value in values.items():
        if name in EXCLUDED_FIELDS or elided(name, value):
            continue
        kind = type(value)
        if kind in _JSON_NATIVE:
            plain[name] = value
        elif kind is datetime and value.tzinfo is not None:
            plain[name] = value.astimezone(UTC).isoformat(timespec="microseconds")
        elif kind is CanonicalJSON:
            # A NUL marker, rendered as the quoted string json.dumps makes of it, stands in for
            # the text until it is spliced in below.
            marker, quoted = _marker(len(spliced))
            spliced[quoted] = value
            plain[name] = marker
        else:
            # Decimals, UUIDs, enums: the row hasher's rules, for the whole record.
            return RowHasher.canonical_json(_parsed(values))
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    for quoted, value in spliced.items():
        if text.count(quoted) != 1:
            # Another value holds the marker itself: render everything the slow way.
            return RowHasher.canonical_json(_parsed(values))
        text = text.replace(quoted, value)
    return text


def mac_message(kind: RecordKind, key_id: str, fields: Mapping[str, Any] | BaseModel) -> bytes:
    """The exact bytes a MAC is computed over."""
    return b"\x00".join(
        (
            MAC_VERSION,
            kind.value.encode("ascii"),
            key_id.encode("utf-8"),
            canonical_content(fields).encode("ascii"),
        )
    )


def compute_mac(
    secret: bytes, *, kind: RecordKind, key_id: str, fields: Mapping[str, Any] | BaseModel
) -> str:
    """The hex HMAC-SHA256 of ``fields`` under ``secret``."""
    return hmac.digest(secret, mac_message(kind, key_id, fields), "sha256").hex()


def same_digest(expected: str, stored: str | None) -> bool:
    """Constant-time comparison of a computed hex digest with a stored column (which may hold
    anything: a tampered value, non-ASCII text, NULL)."""
    if not stored:
        return False
    return hmac.compare_digest(expected.encode("ascii"), stored.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Sealed:
    """A MAC and the id of the key that made it, as stored beside the record."""

    mac: str
    key_id: str


class MacCheck(StrEnum):
    """The outcome of checking one stored MAC."""

    VALID = "valid"
    MISMATCH = "mismatch"
    """The content is not what the key signed (edited), or the MAC itself was changed."""
    MISSING = "missing"
    """No MAC stored."""
    UNKNOWN_KEY = "unknown_key"
    """The key id is not in the RECORD keyring (or no longer verifies)."""


class RecordSigner:
    """Seals and checks records with a RECORD keyring.

    Keys are looked up once per id: RECORD keys verify forever, so a lookup's answer holds.
    """

    def __init__(self, keys: RecordKeys) -> None:
        self._keys = keys
        self._secrets: dict[str, bytes] = {}

    def seal(self, kind: RecordKind, fields: Mapping[str, Any] | BaseModel) -> Sealed:
        """The MAC of ``fields`` under the active key."""
        key = self._keys.active()
        return Sealed(
            mac=compute_mac(key.secret, kind=kind, key_id=key.id, fields=fields), key_id=key.id
        )

    def secret(self, key_id: str, at: datetime) -> bytes | None:
        """The secret of ``key_id`` for a record written at ``at``; None when unknown."""
        secret = self._secrets.get(key_id)
        if secret is None:
            key = self._keys.for_verify(key_id, at)
            if key is None:
                return None
            secret = self._secrets[key_id] = key.secret
        return secret

    def check(
        self,
        kind: RecordKind,
        fields: Mapping[str, Any] | BaseModel,
        *,
        mac: str | None,
        key_id: str | None,
        at: datetime,
    ) -> MacCheck:
        """Whether ``mac`` (made with ``key_id``) is the MAC of ``fields``."""
        if not mac or not key_id:
            return MacCheck.MISSING
        secret = self.secret(key_id, at)
        if secret is None:
            return MacCheck.UNKNOWN_KEY
        expected = compute_mac(secret, kind=kind, key_id=key_id, fields=fields)
        return MacCheck.VALID if same_digest(expected, mac) else MacCheck.MISMATCH
