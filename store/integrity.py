"""The keyed MACs of stored rows: seal a row as it is written, check it as it is read.

Approvals, the Guardian row and post-trade snapshots carry ``mac`` and ``mac_key_id``
(``hitl.record_mac``, docs/audit.md). The key is this process's RECORD keyring
(``HITL_KEYS_DIR``), read again when ``hitl keys rotate record`` replaces it; the database never
holds it, so a row edited behind the gateway's back cannot be given a valid MAC.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hitl.hashing import RowHasher
from hitl.keys import KeyPurpose, Keyring, KeyringFile, keys_dir_from_environment
from hitl.models import ApprovalRequest
from hitl.record_mac import MacCheck, RecordKind, RecordSigner, Sealed
from store.engine import AsyncSession
from store.tables import (
    GUARDIAN_MAC_FIELDS,
    ApprovalRow,
    AuditChainHeadRow,
    GuardianStateRow,
    approval_to_row_values,
)

_keyrings: dict[Path, KeyringFile] = {}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def record_keys() -> Keyring:
    """This process's RECORD keyring, read again when its file changes (a rotation).

    Raises:
        ConfigurationError: SEC-040 with the fix, when the keyring is missing or malformed.
    """
    folder = _resolved(keys_dir_from_environment())
    keyring = _keyrings.get(folder)
    if keyring is None:
        keyring = _keyrings[folder] = KeyringFile(folder, KeyPurpose.RECORD)
    return keyring.current()


@functools.lru_cache(maxsize=16)
def _resolved(folder: Path) -> Path:
    """``folder`` made absolute, once per folder named (``resolve`` walks the path on disk:
    about 60 µs, and the keyring is asked for at every seal and every check)."""
    return folder.resolve()


def seal(kind: RecordKind, fields: Any) -> Sealed:
    """The MAC of a row's content under the active RECORD key."""
    return RecordSigner(record_keys()).seal(kind, fields)


def seal_approval(row: ApprovalRow, approval: ApprovalRequest) -> str:
    """Write ``approval`` (its row hash already computed) into ``row`` with its MAC; returns the
    MAC, which the audit entry recording this state carries as ``record_mac``."""
    for name, value in approval_to_row_values(approval).items():
        setattr(row, name, value)
    sealed = seal(RecordKind.APPROVAL, approval)
    row.mac, row.mac_key_id = sealed.mac, sealed.key_id
    return sealed.mac


async def legacy_approval_last_id(session: AsyncSession) -> int:
    """Approvals with this id or lower may lack a MAC: unchanged since migration 0004."""
    last = (
        await session.execute(select(AuditChainHeadRow.legacy_approval_last_id))
    ).scalar_one_or_none()
    return int(last or 0)


def approval_mac_ok(row: ApprovalRow, approval: ApprovalRequest, *, legacy_last_id: int) -> bool:
    """Whether ``row`` (holding ``approval``) is what the gateway wrote.

    A row without a MAC passes only if it predates the MACs and its unkeyed row hash holds:
    emptying the MAC column of a newer row is itself a failure.
    """
    if row.mac is None:
        return row.id is not None and row.id <= legacy_last_id and RowHasher.verify(approval)
    check = RecordSigner(record_keys()).check(
        RecordKind.APPROVAL,
        approval,
        mac=row.mac,
        key_id=row.mac_key_id,
        at=approval.requested_at,
    )
    return check is MacCheck.VALID


async def approval_intact(
    session: AsyncSession, row: ApprovalRow, approval: ApprovalRequest | None
) -> bool:
    """:func:`approval_mac_ok`, reading the legacy bound only when the row has no MAC."""
    if approval is None:
        return False
    legacy = await legacy_approval_last_id(session) if row.mac is None else 0
    return approval_mac_ok(row, approval, legacy_last_id=legacy)


def guardian_values(row: GuardianStateRow) -> dict[str, Any]:
    """The Guardian row's MAC'd content."""
    return {name: getattr(row, name) for name in GUARDIAN_MAC_FIELDS}


def seal_guardian(row: GuardianStateRow) -> str:
    """Seal the Guardian row's new state; returns the MAC for its audit entry."""
    sealed = seal(RecordKind.GUARDIAN, guardian_values(row))
    row.mac, row.mac_key_id = sealed.mac, sealed.key_id
    return sealed.mac


def guardian_time(row: GuardianStateRow) -> datetime:
    """The time a Guardian state was written (for the key lookup)."""
    return row.since or _EPOCH
