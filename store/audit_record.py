"""Reading the tamper-evident record back: the whole check, the incremental check, the export.

The writes (MACs, chain links, the head row) happen in :mod:`store.audit`; this module reads
what they wrote, in one read transaction (a consistent snapshot on both engines), and hands it to
the pure verifier of :mod:`hitl.audit_chain`. Entries stream through in ``seq`` order in batches,
so memory stays flat whatever the size of the log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Select, String, Text, cast, func, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hitl.audit_chain import (
    AUDIT_CONTENT_FIELDS,
    EXPORT_FORMAT,
    LEGACY_CONTENT_FIELDS,
    ChainEntry,
    ChainHead,
    ChainVerifier,
    Checkpoint,
    Finding,
    LegacyDigest,
    ProblemKind,
    audit_content_text,
    check_approval,
    check_snapshot,
    genesis_chain,
    missing_snapshot,
)
from hitl.hashing import RowHasher
from hitl.models import ApprovalRequest
from hitl.record_mac import (
    CanonicalJSON,
    MacCheck,
    RecordKeys,
    RecordKind,
    RecordSigner,
    canonical_content,
)
from store.audit import APPROVAL_TARGET, GUARDIAN_TARGET, SNAPSHOT_TARGET
from store.tables import (
    GUARDIAN_MAC_FIELDS,
    ApprovalRow,
    AuditChainHeadRow,
    AuditRow,
    GuardianStateRow,
    PostTradeSnapshotRow,
)

UNREADABLE: tuple[type[Exception], ...] = (SQLAlchemyError, OSError, LookupError)
"""What reading the record raises when the database cannot be read (or is not migrated)."""

BATCH = 5000
"""Entries fetched per round trip while streaming."""
APPROVAL_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SNAPSHOT_PREFIX = f"{SNAPSHOT_TARGET}:"

# The payload is read as the text stored (canonical JSON, as the audit writer wrote it) and
# MAC'd without being parsed: most of the verifier's time would go to parsing and re-rendering it.
_ENTRY_COLUMNS = (
    AuditRow.id,
    AuditRow.seq,
    AuditRow.mac_key_id,
    AuditRow.mac,
    AuditRow.chain,
    *(
        cast(AuditRow.payload, Text) if name == "payload" else getattr(AuditRow, name)
        for name in AUDIT_CONTENT_FIELDS
    ),
)
_PAYLOAD = 5 + AUDIT_CONTENT_FIELDS.index("payload")
_CREATED_AT = 5 + AUDIT_CONTENT_FIELDS.index("created_at")
_TARGET_TYPE = 5 + AUDIT_CONTENT_FIELDS.index("target_type")
_TARGET_ID = 5 + AUDIT_CONTENT_FIELDS.index("target_id")
_RECORD_MAC = 5 + AUDIT_CONTENT_FIELDS.index("record_mac")
# The same columns for the chain's stream, with the time as the driver hands it over (SQLite's
# text, asyncpg's datetime) rather than through the column type: the verifier needs it as
# canonical text, and going through a datetime and back cost more than the MAC itself.
_RAW_ENTRY_COLUMNS = tuple(
    type_coerce(AuditRow.created_at, String).label("created_at_raw")
    if index == _CREATED_AT
    else column
    for index, column in enumerate(_ENTRY_COLUMNS)
)
_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)
"""How SQLAlchemy stores a datetime in SQLite (naive UTC here: ``store.engine.UtcDateTime``)."""
_APPROVAL_FIELDS = tuple(name for name in ApprovalRequest.model_fields if name != "row_hash")


@dataclass(kw_only=True)
class RecordReport:
    """What a check found and how much it covered."""

    finding: Finding | None
    head: ChainHead
    """The last position verified (the start position if nothing new was verified)."""
    entries: int = 0
    approvals: int = 0
    legacy_entries: int = 0
    """Entries from before the chain, covered by the genesis digest."""
    legacy_approvals: int = 0
    """Approvals unchanged since before the chain: checked with the unkeyed row hash only."""
    snapshots: int = 0
    """Post-trade snapshots checked against their MAC and their audit entry."""
    legacy_snapshots: int = 0
    """Snapshots from before migration 0007 (no entry of their own): checked by MAC only."""
    touched: set[str] = field(default_factory=set)

    @property
    def intact(self) -> bool:
        """Whether nothing was found."""
        return self.finding is None


async def _begin_snapshot(connection: AsyncConnection) -> None:
    # One consistent view of the whole record: appends that commit meanwhile are not half-seen.
    if connection.dialect.name == "postgresql":
        await connection.execution_options(isolation_level="REPEATABLE READ")


async def read_head(connection: AsyncConnection) -> AuditChainHeadRow | None:
    """The chain head row (None before migration 0004)."""
    row = (await connection.execute(select(AuditChainHeadRow))).first()
    return None if row is None else AuditChainHeadRow(**row._mapping)


async def _genesis(
    connection: AsyncConnection, head: AuditChainHeadRow
) -> tuple[LegacyDigest, Finding | None]:
    legacy = LegacyDigest()
    query = (
        select(*(getattr(AuditRow, name) for name in LEGACY_CONTENT_FIELDS))
        .where(AuditRow.seq.is_(None), AuditRow.id <= head.genesis_last_id)
        .order_by(AuditRow.id)
        .execution_options(yield_per=BATCH)
    )
    result = await connection.stream(query)
    async for rows in result.partitions():
        for row in rows:
            legacy.update(dict(zip(LEGACY_CONTENT_FIELDS, row, strict=True)))
    if legacy.count != head.genesis_count or legacy.hexdigest() != head.genesis_digest:
        return legacy, Finding(
            kind=ProblemKind.GENESIS_MISMATCH,
            detail=(
                f"the {legacy.count} entries from before the chain are not the "
                f"{head.genesis_count} the genesis record counted and digested"
            ),
        )
    stray = (
        await connection.execute(
            select(AuditRow.id)
            .where(AuditRow.seq.is_(None), AuditRow.id > head.genesis_last_id)
            .order_by(AuditRow.id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if stray is not None:
        return legacy, Finding(
            kind=ProblemKind.INSERTED,
            detail="an entry without a place in the chain (no seq) written after the genesis",
            entry_id=stray,
        )
    return legacy, None


class _StoredContent(Mapping[str, Any]):
    """An entry's content as the column types read it, made only when asked for: the verifier
    needs it for a key's first use and for a finding, not per entry."""

    __slots__ = ("_made", "_row", "_time")

    def __init__(self, row: Sequence[Any], time: Callable[[Any], Any]) -> None:
        self._row = row
        self._time = time
        self._made: dict[str, Any] | None = None

    def _content(self) -> dict[str, Any]:
        if self._made is None:
            content = _content(self._row)
            content["created_at"] = self._time(self._row[_CREATED_AT])
            self._made = content
        return self._made

    def __getitem__(self, name: str) -> Any:
        return self._content()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._content())

    def __len__(self) -> int:
        return len(self._content())


def _canonical_time(raw: Any) -> str | None:
    """A stored time, as driver-read, in its canonical text (what a MAC covers); None when it is
    not in the form the gateway stores (then the column type reads it, as everywhere else)."""
    if type(raw) is str:
        if _SQLITE_TIME.fullmatch(raw) is None:
            return None
        # Exactly what reading it as a UTC datetime and rendering that would give.
        return f"{raw[:10]}T{raw[11:]}+00:00"
    if type(raw) is datetime and raw.tzinfo is not None:
        return raw.astimezone(UTC).isoformat(timespec="microseconds")
    return None


async def _stream_chain(
    connection: AsyncConnection, verifier: ChainVerifier, *, after: int, upto: int | None
) -> set[str]:
    """Feed the entries after ``after`` to ``verifier``; the approvals they changed."""
    query: Select[Any] = select(*_RAW_ENTRY_COLUMNS).where(AuditRow.seq > after)
    if upto is not None:
        query = query.where(AuditRow.seq <= upto)
    query = query.order_by(AuditRow.seq).execution_options(yield_per=BATCH)
    # What the column type makes of a stored time (SQLite's text, asyncpg's datetime).
    dialect = connection.dialect
    processor = AuditRow.__table__.c.created_at.type.dialect_impl(dialect).result_processor(
        dialect, None
    )

    def read_time(raw: Any) -> Any:
        return raw if processor is None or raw is None else processor(raw)

    touched: set[str] = set()
    collect = upto is not None
    feed = verifier.feed
    result = await connection.stream(query)
    async for rows in result.partitions():
        for row in rows:
            content = _StoredContent(row, read_time)
            created = _canonical_time(row[_CREATED_AT])
            canonical = None if created is None else audit_content_text(row[5:], created)
            entry = ChainEntry(row[0], row[1], row[2], row[3], row[4], content, canonical)
            if feed(entry) is not None:
                await result.close()
                return touched
            if collect and row[_RECORD_MAC] is not None:
                # Approvals by trade id; the Guardian row by its target name; snapshots as
                # "snapshot:<trade id>".
                target_type = row[_TARGET_TYPE]
                if target_type == GUARDIAN_TARGET:
                    touched.add(GUARDIAN_TARGET)
                elif target_type == SNAPSHOT_TARGET:
                    touched.add(f"{_SNAPSHOT_PREFIX}{row[_TARGET_ID]}")
                else:
                    touched.add(row[_TARGET_ID])
    return touched


def _content(row: Any) -> dict[str, Any]:
    content = dict(zip(AUDIT_CONTENT_FIELDS, row[5:], strict=True))
    content["payload"] = CanonicalJSON(row[_PAYLOAD])
    return content


def approval_values(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The MAC'd content of an approval row (its record fields, as stored)."""
    return {name: row[name] for name in _APPROVAL_FIELDS}


async def _check_approvals(
    connection: AsyncConnection,
    keys: RecordKeys,
    head: AuditChainHeadRow,
    report: RecordReport,
    *,
    only: Iterable[str] | None,
) -> Finding | None:
    signer = RecordSigner(keys)
    wanted = None if only is None else sorted(only)
    last_id = 0
    position = 0
    while True:
        query = select(ApprovalRow).order_by(ApprovalRow.id).limit(APPROVAL_BATCH)
        if wanted is None:
            query = query.where(ApprovalRow.id > last_id)
        else:
            chunk = wanted[position : position + APPROVAL_BATCH]
            position += APPROVAL_BATCH
            if not chunk:
                return None
            query = query.where(ApprovalRow.trade_id.in_([UUID(t) for t in chunk]))
        rows = [r._mapping for r in (await connection.execute(query)).all()]
        if not rows:
            if wanted is None:
                return None
            continue
        last_id = rows[-1]["id"]
        trades = [str(r["trade_id"]) for r in rows]
        trail = await _last_record_macs(connection, APPROVAL_TARGET, trades)
        for row in rows:
            values = approval_values(row)
            trade = str(row["trade_id"])
            if row["mac"] is None and row["id"] <= head.legacy_approval_last_id:
                # Unchanged since before the chain: only the seed's unkeyed row hash covers it.
                report.legacy_approvals += 1
                if not RowHasher.verify(values, row["row_hash"]):
                    return Finding(
                        kind=ProblemKind.APPROVAL_DIFFERS,
                        detail="a legacy approval row (from before the chain) fails its row hash",
                        target_id=trade,
                    )
                continue
            finding = check_approval(
                signer,
                values,
                mac=row["mac"],
                key_id=row["mac_key_id"],
                trail_mac=trail.get(trade),
            )
            if finding is not None:
                return finding
            report.approvals += 1


async def _last_record_macs(
    connection: AsyncConnection, target_type: str, targets: Sequence[str]
) -> dict[str, str]:
    """For each target: the ``record_mac`` of its last entry that carries one."""
    rows = await connection.execute(
        select(AuditRow.target_id, AuditRow.seq, AuditRow.record_mac).where(
            AuditRow.target_type == target_type,
            AuditRow.target_id.in_(targets),
            AuditRow.record_mac.is_not(None),
            AuditRow.seq.is_not(None),
        )
    )
    last: dict[str, tuple[int, str]] = {}
    for target, seq, record_mac in rows:
        if target not in last or seq > last[target][0]:
            last[target] = (seq, record_mac)
    return {target: mac for target, (_seq, mac) in last.items()}


async def _check_guardian(connection: AsyncConnection, keys: RecordKeys) -> Finding | None:
    """The Guardian row against its MAC and its trail."""
    signer = RecordSigner(keys)
    guardian = (await connection.execute(select(GuardianStateRow))).first()
    trail = await _last_record_macs(connection, GUARDIAN_TARGET, [GUARDIAN_TARGET])
    # Without a MAC the row must be as the migration found it: no chained entry records a
    # Guardian state yet.
    if guardian is not None and (guardian.mac is not None or GUARDIAN_TARGET in trail):
        values = {name: getattr(guardian, name) for name in GUARDIAN_MAC_FIELDS}
        check = signer.check(
            RecordKind.GUARDIAN,
            values,
            mac=guardian.mac,
            key_id=guardian.mac_key_id,
            at=guardian.since or _EPOCH,
        )
        if check is not MacCheck.VALID or trail.get(GUARDIAN_TARGET) != guardian.mac:
            return Finding(
                kind=ProblemKind.UNKNOWN_KEY
                if check is MacCheck.UNKNOWN_KEY
                else ProblemKind.EDITED,
                detail="the Guardian row is not the state its last audit entry recorded",
            )
    return None


def _snapshot_query() -> Select[Any]:
    # An outer join: a snapshot pointing at no approval is still read (and judged).
    return select(
        *PostTradeSnapshotRow.__table__.columns, ApprovalRow.trade_id.label("trade_id")
    ).outerjoin(ApprovalRow, ApprovalRow.id == PostTradeSnapshotRow.approval_id)


def _uuids(trades: Iterable[str]) -> list[UUID]:
    found = []
    for trade in trades:
        try:
            found.append(UUID(trade))
        except ValueError:
            continue
    return found


async def _judge_snapshots(
    connection: AsyncConnection,
    signer: RecordSigner,
    head: AuditChainHeadRow,
    report: RecordReport,
    rows: Sequence[Mapping[Any, Any]],
) -> Finding | None:
    """Each snapshot row against its MAC and its ``snapshot.recorded`` entry."""
    trades = [str(row["trade_id"]) for row in rows if row["trade_id"] is not None]
    trail = await _last_record_macs(connection, SNAPSHOT_TARGET, trades)
    for row in rows:
        values = {name: value for name, value in row.items() if name != "trade_id"}
        trade = "?" if row["trade_id"] is None else str(row["trade_id"])
        legacy = values["id"] <= head.legacy_snapshot_last_id
        finding = check_snapshot(
            signer,
            values,
            trade_id=trade,
            trail_mac=trail.get(trade),
            legacy=legacy,
            unsealed=values["id"] <= head.unsealed_snapshot_last_id,
        )
        if finding is not None:
            return finding
        if legacy and trade not in trail:
            report.legacy_snapshots += 1
        else:
            report.snapshots += 1
    return None


async def _entries_have_snapshots(
    connection: AsyncConnection, entries: Sequence[tuple[int, str]]
) -> Finding | None:
    """Each ``snapshot.recorded`` entry (seq, trade id) still has its snapshot."""
    present = {
        str(trade)
        for (trade,) in await connection.execute(
            select(ApprovalRow.trade_id)
            .join(PostTradeSnapshotRow, PostTradeSnapshotRow.approval_id == ApprovalRow.id)
            .where(ApprovalRow.trade_id.in_(_uuids(trade for _seq, trade in entries)))
        )
    }
    for seq, trade in entries:
        if trade not in present:
            return missing_snapshot(trade, seq)
    return None


async def _check_snapshots(
    connection: AsyncConnection,
    keys: RecordKeys,
    head: AuditChainHeadRow,
    report: RecordReport,
    *,
    only: Iterable[str] | None = None,
) -> Finding | None:
    """The post-trade snapshots against their MACs and their entries, both ways: every snapshot
    recorded since migration 0007 has its entry, and every entry still has its snapshot.

    ``only`` (the incremental check): the snapshots of these trades, whose entries were just
    appended, and then the counts of snapshots and of entries, which differ when a snapshot was
    deleted or inserted without an entry; the whole check then runs to name it.
    """
    signer = RecordSigner(keys)
    if only is not None:
        wanted = sorted(only)
        for position in range(0, len(wanted), APPROVAL_BATCH):
            chunk = wanted[position : position + APPROVAL_BATCH]
            query = _snapshot_query().where(ApprovalRow.trade_id.in_(_uuids(chunk)))
            rows = [r._mapping for r in (await connection.execute(query)).all()]
            finding = await _judge_snapshots(connection, signer, head, report, rows)
            if finding is None:
                entries = (
                    await connection.execute(
                        select(AuditRow.seq, AuditRow.target_id).where(
                            AuditRow.target_type == SNAPSHOT_TARGET,
                            AuditRow.target_id.in_(chunk),
                            AuditRow.seq.is_not(None),
                        )
                    )
                ).all()
                finding = await _entries_have_snapshots(connection, [tuple(e) for e in entries])
            if finding is not None:
                return finding
        recorded = (
            await connection.execute(
                select(func.count()).where(PostTradeSnapshotRow.id > head.legacy_snapshot_last_id)
            )
        ).scalar_one()
        entered = (
            await connection.execute(
                select(func.count()).where(
                    AuditRow.target_type == SNAPSHOT_TARGET, AuditRow.seq.is_not(None)
                )
            )
        ).scalar_one()
        if recorded == entered:
            return None
        finding = await _check_snapshots(
            connection, keys, head, RecordReport(finding=None, head=report.head)
        )
        return finding or Finding(
            kind=ProblemKind.SNAPSHOT_DIFFERS,
            detail=(
                f"{recorded} post-trade snapshots recorded since migration 0007, "
                f"but {entered} snapshot entries"
            ),
        )
    last_id = 0
    while True:
        query = (
            _snapshot_query()
            .where(PostTradeSnapshotRow.id > last_id)
            .order_by(PostTradeSnapshotRow.id)
            .limit(APPROVAL_BATCH)
        )
        rows = [r._mapping for r in (await connection.execute(query)).all()]
        if not rows:
            break
        last_id = rows[-1]["id"]
        finding = await _judge_snapshots(connection, signer, head, report, rows)
        if finding is not None:
            return finding
    last_seq = 0
    while True:
        entries = (
            await connection.execute(
                select(AuditRow.seq, AuditRow.target_id)
                .where(
                    AuditRow.target_type == SNAPSHOT_TARGET,
                    AuditRow.seq.is_not(None),
                    AuditRow.seq > last_seq,
                )
                .order_by(AuditRow.seq)
                .limit(APPROVAL_BATCH)
            )
        ).all()
        if not entries:
            return None
        last_seq = entries[-1][0]
        finding = await _entries_have_snapshots(connection, [tuple(e) for e in entries])
        if finding is not None:
            return finding


async def verify_record(
    engine: AsyncEngine,
    keys: RecordKeys,
    *,
    checkpoints: Sequence[Checkpoint] = (),
    start: ChainHead | None = None,
) -> RecordReport:
    """Check the record: everything (``start`` None), or what was appended after ``start``.

    A full check recomputes the genesis, streams every chained entry, compares the head row and
    ``checkpoints``, then every approval against its MAC and last entry, the Guardian row and
    every post-trade snapshot against its MAC and its ``snapshot.recorded`` entry (and every
    such entry against its snapshot). An incremental check starts at ``start`` (a head verified
    before, kept outside the database): that position must still hold the same chain value,
    and only the approvals and snapshots the new entries recorded are checked, plus the counts
    of snapshots and of their entries (a snapshot deleted or inserted without an entry).
    """
    async with engine.connect() as connection:
        await _begin_snapshot(connection)
        async with connection.begin():
            head = await read_head(connection)
            if head is None:
                raise LookupError("the database has no audit chain head: run the migrations")
            recorded = ChainHead(head.seq, head.chain)
            if start is None or start.seq == 0:
                legacy, finding = await _genesis(connection, head)
                genesis = ChainHead(0, genesis_chain(legacy.count, legacy.hexdigest()))
                report = RecordReport(finding=finding, head=genesis, legacy_entries=legacy.count)
                if finding is not None:
                    return report
                begin = genesis
            else:
                report = RecordReport(finding=None, head=start)
                finding = await _position_holds(connection, start, recorded)
                if finding is not None:
                    report.finding = finding
                    return report
                begin = start
            verifier = ChainVerifier(keys, start=begin, checkpoints=checkpoints)
            touched = await _stream_chain(
                connection, verifier, after=begin.seq, upto=None if start is None else head.seq
            )
            report.finding = verifier.finish(recorded)
            report.head = verifier.head
            report.entries = verifier.checked
            if report.finding is not None:
                return report
            snapshots = {
                t[len(_SNAPSHOT_PREFIX) :] for t in touched if t.startswith(_SNAPSHOT_PREFIX)
            }
            approvals = (
                None
                if start is None
                else {
                    t
                    for t in touched
                    if t != GUARDIAN_TARGET and not t.startswith(_SNAPSHOT_PREFIX)
                }
            )
            report.finding = await _check_approvals(connection, keys, head, report, only=approvals)
            if report.finding is None and (start is None or GUARDIAN_TARGET in touched):
                report.finding = await _check_guardian(connection, keys)
            if report.finding is None:
                report.finding = await _check_snapshots(
                    connection, keys, head, report, only=None if start is None else snapshots
                )
            return report


async def _position_holds(
    connection: AsyncConnection, start: ChainHead, recorded: ChainHead
) -> Finding | None:
    """Whether the entry at ``start.seq`` still exists with the chain value seen before."""
    chain = (
        await connection.execute(select(AuditRow.chain).where(AuditRow.seq == start.seq))
    ).scalar_one_or_none()
    if chain is None:
        last = (await connection.execute(select(func.max(AuditRow.seq)))).scalar_one_or_none()
        return Finding(
            kind=ProblemKind.MISSING_TAIL,
            detail=(
                f"entries after seq {last or 0} are missing: the last verified checkpoint "
                f"recorded the chain at seq {start.seq} (head row: seq {recorded.seq})"
            ),
            seq=(last or 0) + 1,
        )
    if chain != start.chain:
        return Finding(
            kind=ProblemKind.CHECKPOINT_MISMATCH,
            detail=f"the chain at seq {start.seq} differs from the last verified checkpoint",
            seq=start.seq,
        )
    return None


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as their canonical JSON renders them (what a MAC covers), JSON-safe."""
    rendered: dict[str, Any] = json.loads(canonical_content(values))
    return rendered


def _snapshot_export(row: Mapping[Any, Any], head: AuditChainHeadRow) -> dict[str, Any]:
    values = {name: value for name, value in row.items() if name != "trade_id"}
    return {
        "id": values["id"],
        "fields": _json_values(values),
        "mac": values["mac"],
        "key_id": values["mac_key_id"],
        # Recorded before snapshots had entries of their own (migration 0007), and before
        # they had MACs (migration 0004): the same bounds as the database's own check.
        "legacy": values["id"] <= head.legacy_snapshot_last_id,
        "unsealed": values["id"] <= head.unsealed_snapshot_last_id,
    }


async def export_trail(
    engine: AsyncEngine, trade_id: UUID, *, checkpoints: Sequence[Checkpoint] = ()
) -> dict[str, Any] | None:
    """One approval's trail as ``hitl audit export`` writes it (None: no entry about it).

    Holds the approval row with its MAC, its post-trade snapshot (if any) with its MAC, every
    chained audit entry about the trade (the approval's and the snapshot's), the chain
    links (seq, key id, MAC, chain value) from its first entry to the first checkpoint at or past
    its last one, and that checkpoint (or the head row when no checkpoint covers it yet), so
    :func:`hitl.audit_chain.verify_export` can check it with the RECORD keyring alone.
    """
    async with engine.connect() as connection:
        await _begin_snapshot(connection)
        async with connection.begin():
            head = await read_head(connection)
            if head is None:
                raise LookupError("the database has no audit chain head: run the migrations")
            rows = (
                await connection.execute(
                    select(*_ENTRY_COLUMNS)
                    .where(
                        AuditRow.target_type.in_((APPROVAL_TARGET, SNAPSHOT_TARGET)),
                        AuditRow.target_id == str(trade_id),
                        AuditRow.seq.is_not(None),
                    )
                    .order_by(AuditRow.seq)
                )
            ).all()
            if not rows:
                return None
            entries = [
                {
                    "seq": row[1],
                    "id": row[0],
                    "key_id": row[2],
                    "mac": row[3],
                    "chain": row[4],
                    "content": _json_values(_content(row)),
                }
                for row in rows
            ]
            first, last = entries[0]["seq"], entries[-1]["seq"]
            covering = next(
                (c for c in sorted(checkpoints, key=lambda c: c.seq) if c.seq >= last), None
            )
            end = covering.seq if covering is not None else head.seq
            previous: str | None
            if first == 1:
                legacy, _finding = await _genesis(connection, head)
                previous = genesis_chain(legacy.count, legacy.hexdigest())
            else:
                previous = (
                    await connection.execute(
                        select(AuditRow.chain).where(AuditRow.seq == first - 1)
                    )
                ).scalar_one()
            links = [
                {"seq": seq, "key_id": key_id, "mac": mac, "chain": chain}
                for seq, key_id, mac, chain in await connection.execute(
                    select(AuditRow.seq, AuditRow.mac_key_id, AuditRow.mac, AuditRow.chain)
                    .where(AuditRow.seq >= first, AuditRow.seq <= end)
                    .order_by(AuditRow.seq)
                )
            ]
            approval = (
                await connection.execute(
                    select(ApprovalRow).where(ApprovalRow.trade_id == trade_id)
                )
            ).first()
            snapshot = (
                await connection.execute(_snapshot_query().where(ApprovalRow.trade_id == trade_id))
            ).first()
    return {
        "format": EXPORT_FORMAT,
        "trade_id": str(trade_id),
        "approval": None
        if approval is None
        else {
            "fields": _json_values(approval_values(approval._mapping)),
            "mac": approval.mac,
            "key_id": approval.mac_key_id,
        },
        "snapshot": None if snapshot is None else _snapshot_export(snapshot._mapping, head),
        "entries": entries,
        "start": {"seq": first - 1, "chain": previous},
        "links": links,
        "checkpoint": None
        if covering is None
        else {
            "seq": covering.seq,
            "chain": covering.chain,
            "at": covering.at.isoformat(timespec="microseconds") if covering.at else None,
            "key_id": covering.key_id,
            "mac": covering.mac,
            "source": covering.source,
        },
        "head": {"seq": head.seq, "chain": head.chain},
    }
