"""Tamper evidence: a SHA-256 row hash over a canonical JSON rendering of an approval record."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from hitl.decimals import canonical_decimal

HASH_FIELD = "row_hash"

ELIDED_WHEN_EMPTY = frozenset({"approvers"})
"""Fields added to the record later, left out of its canonical form while empty (None, an empty
list or tuple): a record that never had them hashes (and MACs) exactly as before they existed."""


def elided(name: str, value: Any) -> bool:
    """Whether ``name`` with ``value`` is left out of the canonical form."""
    return name in ELIDED_WHEN_EMPTY and (value is None or value == () or value == [])


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("row hashing needs timezone-aware datetimes")
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, UUID):
        return str(value)
    return value


class RowHasher:
    """Computes and verifies the row hash of a record.

    The canonical form is JSON with sorted keys and no spaces; decimals rendered with exactly 8
    places, datetimes as ISO-8601 UTC with microseconds, UUIDs and enums as strings; the
    ``row_hash`` field itself is excluded. The same record therefore hashes alike whichever
    process or database it passed through. Pass models or mappings of Python values (not the
    JSON-shaped dict of ``to_dict()``, whose decimals are already strings).
    """

    @staticmethod
    def canonical_json(record: BaseModel | Mapping[str, Any]) -> str:
        """The exact text that is hashed."""
        fields = record.model_dump() if isinstance(record, BaseModel) else dict(record)
        payload = {
            k: _canonical(v) for k, v in fields.items() if k != HASH_FIELD and not elided(k, v)
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def compute(cls, record: BaseModel | Mapping[str, Any]) -> str:
        """The hex SHA-256 of the record's canonical JSON."""
        return hashlib.sha256(cls.canonical_json(record).encode("ascii")).hexdigest()

    @classmethod
    def verify(cls, record: BaseModel | Mapping[str, Any], stored_hash: str | None = None) -> bool:
        """Whether ``stored_hash`` (default: the record's own ``row_hash``) matches its content."""
        if stored_hash is None:
            stored_hash = (
                getattr(record, HASH_FIELD, None)
                if isinstance(record, BaseModel)
                else record.get(HASH_FIELD)
            )
        if not stored_hash:
            return False
        # Bytes: compare_digest raises TypeError on a non-ASCII str (a tampered column).
        return hmac.compare_digest(stored_hash.encode("utf-8"), cls.compute(record).encode("ascii"))
