"""The tamper-evident record end to end (issue 15), on PostgreSQL and SQLite.

The gateway's own writes build a record; an attacker then changes the database directly (raw
SQL, with the SEC-080 triggers dropped or disabled, as a superuser could), and ``hitl audit
verify`` — the auditor's command — must exit 1 naming the first broken entry. An untouched record
exits 0; a missing keyring exits 2 and never claims "intact".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.audit_chain import ChainHead
from hitl.hashing import RowHasher
from hitl.keys import KeyPurpose, ensure_keyrings, keys_dir_from_environment, load_keyring
from hitl.market import MarketQuote
from hitl.messages import (
    GuardianCommand,
    RecordDecisionInput,
    RecordSnapshotInput,
    RecordTransitionInput,
)
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from hitl.record_mac import RecordKind
from launcher.cli import main as hitl
from migrations.runner import MIGRATIONS_DIR, upgrade_to_head
from store import approvals, guardian
from store.audit import AuditEntry, record_audit
from store.audit_record import verify_record
from store.checkpoints import append_checkpoint, checkpoint_path
from store.engine import Sessions, create_engine, session_factory
from store.integrity import seal
from store.tables import ApprovalRow, AuditChainHeadRow, AuditRow, PostTradeSnapshotRow
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.store.helpers import NOW, new_approval, stored_approval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Path:
    """The environment ``make run`` gives the command: the data folder and the database."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("HITL_DATA_DIR", str(folder))
    monkeypatch.setenv("DATABASE_URL", database_url)
    return folder


async def run_hitl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``hitl ARGS`` in this process (its own event loop, in a thread); exit code and output."""
    capsys.readouterr()
    code = await asyncio.to_thread(hitl, list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def decision_of(approval: ApprovalRequest, *, accept: bool, by: str = "alice") -> ApprovalRequest:
    """``approval`` accepted or rejected by ``by`` through the API."""
    return approval.model_copy(
        update={
            "status": TradeStatus.ACCEPTED if accept else TradeStatus.REJECTED,
            "decided_at": NOW + timedelta(seconds=5),
            "decided_by": by,
            "decision_channel": DecisionChannel.API,
            "decision_reason": (
                DecisionReason.OPERATOR_APPROVED if accept else DecisionReason.OPERATOR_REJECTED
            ),
        }
    )


async def build_record(sessions: Sessions) -> list[ApprovalRequest]:
    """What a working day writes: requests, decisions, a fill, a refusal, a Guardian lock and
    unlock: ten audit entries."""
    first = await stored_approval(sessions)
    second = await stored_approval(sessions)
    third = await stored_approval(sessions)
    accepted = await approvals.record_decision(
        sessions,
        RecordDecisionInput(
            expected=first, decided=decision_of(first, accept=True), event_type="hitl.decided"
        ),
    )
    filled = await approvals.record_transition(
        sessions,
        RecordTransitionInput(
            expected=accepted.value.approval,
            target=TradeStatus.FILLED,
            actor="bot-1",
            correlation_id="corr-fill",
        ),
    )
    await approvals.record_decision(
        sessions,
        RecordDecisionInput(
            expected=second, decided=decision_of(second, accept=False), event_type="hitl.decided"
        ),
    )
    await record_audit(
        sessions,
        AuditEntry(
            actor_id="mallory",
            action="approval.refused",
            target_id=third.trade_id,
            correlation_id="corr-refused",
            error_code="SEC-020",
            payload={"reason": "not an operator"},
        ),
    )
    await approvals.record_decision(
        sessions,
        RecordDecisionInput(
            expected=third, decided=decision_of(third, accept=False), event_type="hitl.decided"
        ),
    )
    # Nothing left pending: the Guardian's lock and unlock are one state change each.
    await guardian.lock_guardian(
        sessions, GuardianCommand(reason="drill", by="admin", correlation_id="corr-lock")
    )
    await guardian.unlock_guardian(
        sessions, GuardianCommand(reason="", by="admin", correlation_id="corr-unlock")
    )
    return [filled.value, second, third]


async def attack(engine: AsyncEngine, *statements: str, **params: object) -> None:
    """Run raw SQL as the database's superuser would, with the SEC-080 triggers out of the way."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            for table in ("audit_log", "hitl_approvals", "audit_chain_head"):
                await connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            for name in ("trg_audit_log_no_update", "trg_audit_log_no_delete"):
                await connection.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        for statement in statements:
            await connection.execute(text(statement), params)


async def test_an_untouched_record_verifies_and_exports(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sessions = session_factory(engine, writer=True)
    filled, _second, _third = await build_record(sessions)
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 0, out
    assert out.startswith("intact: 10 chained audit entries up to seq 10, 3 approvals")

    export = tmp_path / "trail.json"
    code, out = await run_hitl(capsys, "audit", "export", str(filled.trade_id), "-o", str(export))
    assert code == 0, out
    trail = json.loads(export.read_text())
    assert [e["content"]["action"] for e in trail["entries"]] == [
        "approval.requested",
        "approval.decided",
        "trade.transitioned",
    ]
    assert trail["approval"]["fields"]["status"] == "FILLED"
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 0, out
    assert "covered by the head row" in out

    # A checkpoint written since covers it; an edited export is refused.
    async with sessions() as session:
        head = (await session.execute(select(AuditChainHeadRow))).scalar_one()
    keys = load_keyring(keys_dir_from_environment(), KeyPurpose.RECORD)
    append_checkpoint(
        checkpoint_path(data_dir), keys, ChainHead(head.seq, head.chain), at=datetime.now(UTC)
    )
    code, out = await run_hitl(capsys, "audit", "export", str(filled.trade_id), "-o", str(export))
    assert code == 0, out
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 0, out
    assert "audit-checkpoints.jsonl line 1" in out
    trail = json.loads(export.read_text())
    trail["entries"][1]["content"]["actor_id"] = "mallory"
    export.write_text(json.dumps(trail))
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 1
    assert out.startswith("BROKEN: edited at seq")


def _trade(trade_id: uuid.UUID, dialect: str) -> str:
    # How the Uuid column stores it: native on PostgreSQL, 32 hex digits on SQLite.
    return str(trade_id) if dialect == "postgresql" else trade_id.hex


Tamper = Callable[[AsyncEngine, list[ApprovalRequest]], Awaitable[str]]


async def _edit_entry(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(engine, "UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 5")
    return "BROKEN: edited at seq 5"


async def _delete_middle(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(engine, "DELETE FROM audit_log WHERE seq = 7")
    return "BROKEN: missing at seq 7"


async def _delete_first(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(engine, "DELETE FROM audit_log WHERE seq = 1")
    return "BROKEN: missing at seq 1"


async def _delete_last(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(engine, "DELETE FROM audit_log WHERE seq = 10")
    return "BROKEN: missing tail at seq 10: entries after seq 9 are missing"


async def _swap(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(
        engine,
        "UPDATE audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 8",
        "UPDATE audit_log SET seq = 8 WHERE seq = -1",
    )
    return "BROKEN: reordered at seq 3"


async def _insert(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    await attack(
        engine,
        "INSERT INTO audit_log (actor_id, action, target_type, target_id, payload,"
        " correlation_id, created_at, seq, mac_key_id, mac, chain)"
        " SELECT 'mallory', 'approval.decided', target_type, target_id, payload, correlation_id,"
        " created_at, 11, mac_key_id, mac, chain FROM audit_log WHERE seq = 10",
        "UPDATE audit_chain_head SET seq = 11",
    )
    return "BROKEN: inserted at seq 11"


async def _edit_approval(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    async with engine.begin() as connection:
        await connection.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == trades[1].trade_id)
            .values(decided_by="mallory")
        )
    return f"BROKEN: approval differs from its trail at trade {trades[1].trade_id}"


async def _old_state_back(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    # The FILLED trade put back to ACCEPTED, with the genuine MAC it had in that state.
    async with engine.begin() as connection:
        entry = (
            await connection.execute(
                select(AuditRow.payload, AuditRow.record_mac).where(
                    AuditRow.target_id == str(trades[0].trade_id),
                    AuditRow.action == "approval.decided",
                )
            )
        ).one()
        state = ApprovalRequest.from_dict(entry.payload["approval"])
        await connection.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == trades[0].trade_id)
            .values(status=state.status.value, row_hash=state.row_hash, mac=entry.record_mac)
        )
    return f"BROKEN: approval differs from its trail at trade {trades[0].trade_id}"


async def _rewound_tail(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    # Without a checkpoint this would pass: the head row is rewound with the entries.
    await attack(
        engine,
        "DELETE FROM audit_log WHERE seq > 8",
        "UPDATE audit_chain_head SET seq = 8, chain = (SELECT chain FROM audit_log WHERE seq = 8)",
    )
    return "BROKEN: missing tail at seq 9: entries after seq 8 are missing: audit-checkpoints"


async def _edit_guardian(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE guardian_state SET locked = true"))
    return "BROKEN: edited: the Guardian row is not the state its last audit entry recorded"


async def _unseal_guardian(engine: AsyncEngine, _: list[ApprovalRequest]) -> str:
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE guardian_state SET locked = true, mac = NULL, mac_key_id = NULL")
        )
    return "BROKEN: edited: the Guardian row is not the state its last audit entry recorded"


TAMPERING: dict[str, Tamper] = {
    "edit": _edit_entry,
    "delete first": _delete_first,
    "delete middle": _delete_middle,
    "delete last": _delete_last,
    "swap": _swap,
    "insert a copy": _insert,
    "edit an approval": _edit_approval,
    "put an old approval back": _old_state_back,
    "delete the tail and rewind the head": _rewound_tail,
    "edit the Guardian row": _edit_guardian,
    "empty the Guardian row's MAC": _unseal_guardian,
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
async def test_hitl_audit_verify_names_the_first_broken_entry(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    sessions = session_factory(engine, writer=True)
    trades = await build_record(sessions)
    async with sessions() as session:
        head = (await session.execute(select(AuditChainHeadRow))).scalar_one()
    keys = load_keyring(keys_dir_from_environment(), KeyPurpose.RECORD)
    append_checkpoint(
        checkpoint_path(data_dir), keys, ChainHead(head.seq, head.chain), at=datetime.now(UTC)
    )
    assert (await run_hitl(capsys, "audit", "verify"))[0] == 0
    expected = await TAMPERING[tamper](engine, trades)
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 1, out
    assert out.startswith(expected), out


async def test_a_missing_or_foreign_keyring_never_says_intact(
    engine: AsyncEngine, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_record(session_factory(engine, writer=True))
    environment = {**os.environ, "HITL_KEYS_DIR": str(tmp_path / "no-keys")}
    # The installed console script, as an auditor runs it.
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("hitl")),
        "audit",
        "verify",
        env=environment,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2, stderr
    assert "hitl keys init" in stderr.decode()
    assert stdout == b""

    foreign = tmp_path / "foreign-keys"
    ensure_keyrings(foreign, (KeyPurpose.RECORD,), now=datetime.now(UTC))
    os.environ["HITL_KEYS_DIR"], kept = str(foreign), os.environ["HITL_KEYS_DIR"]
    try:
        code, out = await run_hitl(capsys, "audit", "verify")
    finally:
        os.environ["HITL_KEYS_DIR"] = kept
    assert code == 1
    assert out.startswith("BROKEN: unknown key id at seq 1")


@pytest.mark.postgres
@pytest.mark.timeout(600)  # 1,220 appends, one at a time by design, on a shared CI machine
async def test_concurrent_appends_on_postgresql_stay_one_gapless_chain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 refusals appended from 50 concurrent sessions, racing writers of the same
    idempotency keys, and 100 decisions at once (each locking its approval row before the
    chain's head); then the auditor's check."""
    url = await create_postgres_database()
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        engine = create_engine(url, pool_size=30, max_overflow=30)
        sessions = session_factory(engine, writer=True)
        pending = [await stored_approval(sessions) for _ in range(100)]

        async def writer(number: int) -> None:
            for step in range(20):
                await record_audit(
                    sessions,
                    AuditEntry(
                        actor_id=f"bot-{number}",
                        action="approval.refused",
                        target_id=str(uuid.uuid4()),
                        correlation_id=f"corr-{number}-{step}",
                        idempotency_key=f"refusal-{number}-{step}",
                    ),
                )
                # Every writer races the others to record the same notice, once.
                await record_audit(
                    sessions,
                    AuditEntry(
                        actor_id=f"bot-{number}",
                        action="discord.posted",
                        target_id=str(uuid.uuid4()),
                        correlation_id=f"corr-race-{step}",
                        idempotency_key=f"race-{step}",
                    ),
                    once=True,
                )

        async def decide(approval: ApprovalRequest, accept: bool) -> None:
            decided = decision_of(approval, accept=accept)
            await approvals.record_decision(
                sessions,
                RecordDecisionInput(expected=approval, decided=decided, event_type="hitl.decided"),
            )

        await asyncio.gather(
            *(writer(n) for n in range(50)),
            *(decide(a, n % 2 == 0) for n, a in enumerate(pending)),
        )
        async with engine.connect() as connection:
            seqs = (await connection.execute(select(AuditRow.seq).order_by(AuditRow.seq))).all()
        await engine.dispose()
        # 100 requests, 1,000 refusals, 20 notices written once each, 100 decisions.
        assert [s for (s,) in seqs] == list(range(1, 1221))
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path))
        code, out = await run_hitl(capsys, "audit", "verify")
        assert code == 0, out
        assert out.startswith("intact: 1220 chained audit entries up to seq 1220, 100 approvals")
    finally:
        await drop_postgres_database(url)


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    return config


@contextlib.asynccontextmanager
async def _database_at(engine: str, revision: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database of ``engine`` migrated to ``revision`` (dropped afterwards)."""
    if engine == "postgresql":
        url = await create_postgres_database()
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / f'at-{revision}.db'}"
    try:
        await asyncio.to_thread(command.upgrade, _config(url), revision)
        yield url
    finally:
        if engine == "postgresql":
            await drop_postgres_database(url)


@pytest.fixture(params=["postgresql", "sqlite"])
async def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database at revision 0003, before the chain."""
    async with _database_at(request.param, "0003", tmp_path) as url:
        yield url


async def test_a_database_from_before_the_chain_gets_a_genesis(
    old_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Entries and approvals written before migration 0004 are covered by its genesis record;
    the chain continues from it; changing a legacy entry afterwards is detected."""
    engine = create_engine(old_database)
    legacy = new_approval()
    legacy = legacy.model_copy(update={"row_hash": RowHasher.compute(legacy)})
    values = {k: (v.value if hasattr(v, "value") else v) for k, v in legacy.model_dump().items()}
    async with engine.begin() as connection:
        # The 0003 schema, written as the gateway of that day wrote it.
        await connection.execute(insert(ApprovalRow).values(**values))
        # ... with its post-trade snapshot, which had no MAC then (migration 0004 added them).
        await connection.execute(
            text(
                "INSERT INTO post_trade_snapshots (approval_id, bid, ask, spread, mid_price,"
                " response_latency_ms, price_deviation_pct, correlation_id, created_at)"
                " SELECT id, 1.16010, 1.16030, 0.00020, 1.16020, 12, 0.01, 'corr-old', :at"
                " FROM hitl_approvals"
            ),
            {"at": NOW.replace(tzinfo=None) if "sqlite" in old_database else NOW},
        )
        for number, action in enumerate(("approval.requested", "approval.refused")):
            await connection.execute(
                text(
                    "INSERT INTO audit_log (actor_id, action, target_type, target_id, payload,"
                    " correlation_id, created_at, idempotency_key) VALUES ('bot-1', :action,"
                    " 'approval', :target, :payload, 'corr-old', :at, :key)"
                ),
                {
                    "action": action,
                    "target": str(legacy.trade_id),
                    "payload": json.dumps({"approval": legacy.to_dict(), "n": number}),
                    "at": NOW.replace(tzinfo=None) if "sqlite" in old_database else NOW,
                    "key": f"old-{number}",
                },
            )
    await engine.dispose()
    await asyncio.to_thread(upgrade_to_head, old_database)
    monkeypatch.setenv("DATABASE_URL", old_database)
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path))
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 0, out
    assert "before the chain: 2 entries (genesis digest), 1 approvals" in out

    engine = create_engine(old_database)
    try:
        sessions = session_factory(engine, writer=True)
        decided = await approvals.record_decision(
            sessions,
            RecordDecisionInput(
                expected=legacy, decided=decision_of(legacy, accept=True), event_type="hitl.decided"
            ),
        )
        assert decided.value.approval.status is TradeStatus.ACCEPTED
        code, out = await run_hitl(capsys, "audit", "verify")
        assert code == 0, out
        assert out.startswith("intact: 1 chained audit entries up to seq 1, 1 approvals")
        # Its trail exported checks out on its own too, the snapshot from before MACs included.
        export = tmp_path / "trail.json"
        code, out = await run_hitl(
            capsys, "audit", "export", str(legacy.trade_id), "-o", str(export)
        )
        assert code == 0, out
        assert json.loads(export.read_text())["snapshot"]["mac"] is None
        code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
        assert code == 0, out
        await attack(engine, "UPDATE audit_log SET actor_id = 'mallory' WHERE seq IS NULL")
    finally:
        await engine.dispose()
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 1
    assert out.startswith("BROKEN: genesis mismatch")


async def test_a_database_that_cannot_be_read_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path))  # no database migrated there
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 2
    assert out.startswith("hitl audit: cannot read the database")
    assert "intact" not in out


# Edits the verifier's fast reading of the raw columns (store.audit_record._stream_chain) must
# see exactly as the column types would: (SQLite statement, PostgreSQL statement or None).
RAW_EDITS: dict[str, tuple[str, str | None]] = {
    "a second later": (
        "UPDATE audit_log SET created_at = strftime('%Y-%m-%d %H:%M:%f000', created_at,"
        " '+1 second') WHERE seq = 4",
        "UPDATE audit_log SET created_at = created_at + interval '1 second' WHERE seq = 4",
    ),
    "the same time in SQLite's short form, a minute later": (
        "UPDATE audit_log SET created_at = datetime(created_at, '+1 minute') WHERE seq = 4",
        None,
    ),
    "a number where text belongs": ("UPDATE audit_log SET actor_id = 5 WHERE seq = 4", None),
    "non-ASCII in the payload": (
        """UPDATE audit_log SET payload = '{"reason":"nöt"}' WHERE seq = 4""",
        """UPDATE audit_log SET payload = '{"reason":"nöt"}'::json WHERE seq = 4""",
    ),
    "the payload re-spaced": (
        """UPDATE audit_log SET payload = replace(payload, ':', ': ') WHERE seq = 4""",
        """UPDATE audit_log SET payload = replace(payload::text, ':', ': ')::json WHERE seq = 4""",
    ),
}


@pytest.mark.parametrize("edit", list(RAW_EDITS))
async def test_the_verifiers_raw_reading_misses_no_edit(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    del data_dir
    sqlite, postgresql = RAW_EDITS[edit]
    statement = sqlite if engine.dialect.name == "sqlite" else postgresql
    if statement is None:
        pytest.skip("PostgreSQL's column types refuse this value")
    await build_record(session_factory(engine, writer=True))
    assert (await run_hitl(capsys, "audit", "verify"))[0] == 0
    await attack(engine, statement)
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 1, out
    assert out.startswith("BROKEN: edited at seq 4"), out


# --- post-trade snapshots: each has its own chained entry (``snapshot.recorded``) -------------

QUOTE = MarketQuote(
    instrument="EUR/USD",
    bid=Decimal("1.16012"),
    ask=Decimal("1.16031"),
    as_of=NOW,
    response_latency_ms=Decimal("42.5"),
)


async def record_snapshot_of(sessions: Sessions, approval: ApprovalRequest) -> None:
    """The post-trade snapshot the workflow records after acceptance."""
    await approvals.record_snapshot(sessions, RecordSnapshotInput(approval=approval, quote=QUOTE))


async def build_record_with_snapshot(sessions: Sessions) -> list[ApprovalRequest]:
    """:func:`build_record`, then the accepted (now FILLED) trade's snapshot: entry 11, the
    snapshot with id 1."""
    trades = await build_record(sessions)
    await record_snapshot_of(sessions, trades[0])
    return trades


async def _head(engine: AsyncEngine) -> ChainHead:
    async with engine.connect() as connection:
        head = (await connection.execute(select(AuditChainHeadRow))).one()
    return ChainHead(head.seq, head.chain)


async def test_a_snapshot_recorded_twice_has_one_entry_carrying_its_mac(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del data_dir
    sessions = session_factory(engine, writer=True)
    trades = await build_record(sessions)
    # A retried activity runs the store's write again: one snapshot, one entry.
    await record_snapshot_of(sessions, trades[0])
    await record_snapshot_of(sessions, trades[0])
    async with engine.connect() as connection:
        entries = (
            await connection.execute(select(AuditRow).where(AuditRow.action == "snapshot.recorded"))
        ).all()
        (snapshot,) = (await connection.execute(select(PostTradeSnapshotRow))).all()
        approval_trail = (
            await connection.execute(
                select(AuditRow.action)
                .where(AuditRow.target_type == "approval")
                .where(AuditRow.target_id == str(trades[0].trade_id))
                .order_by(AuditRow.seq)
            )
        ).all()
    (entry,) = entries
    assert (entry.seq, entry.target_type, entry.target_id) == (
        11,
        "snapshot",
        str(trades[0].trade_id),
    )
    assert entry.idempotency_key == f"{trades[0].trade_id}:snapshot"
    assert entry.record_mac == snapshot.mac is not None
    assert entry.payload["snapshot"]["bid"] == "1.16012000"
    # The approval's own trail still ends with its own last state change.
    assert [a for (a,) in approval_trail][-1] == "trade.transitioned"
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 0, out
    assert out.startswith("intact: 11 chained audit entries up to seq 11, 3 approvals")


async def test_an_exported_trail_holds_the_snapshot_and_its_entry(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    del data_dir
    trades = await build_record_with_snapshot(session_factory(engine, writer=True))
    export = tmp_path / "trail.json"
    trade = str(trades[0].trade_id)
    code, out = await run_hitl(capsys, "audit", "export", trade, "-o", str(export))
    assert code == 0, out
    trail = json.loads(export.read_text())
    assert [e["content"]["action"] for e in trail["entries"]] == [
        "approval.requested",
        "approval.decided",
        "trade.transitioned",
        "snapshot.recorded",
    ]
    assert trail["snapshot"]["mac"] == trail["entries"][-1]["content"]["record_mac"]
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 0, out

    edited = json.loads(export.read_text())
    edited["snapshot"]["fields"]["bid"] = "1.15000000"
    export.write_text(json.dumps(edited))
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 1, out
    assert out.startswith(
        f"BROKEN: snapshot differs from its trail at trade {trade}: post-trade snapshot 1"
        " does not match its MAC (edited)"
    ), out
    edited["snapshot"] = None
    export.write_text(json.dumps(edited))
    code, out = await run_hitl(capsys, "audit", "verify", "--export", str(export))
    assert code == 1, out
    assert out.startswith(f"BROKEN: snapshot differs from its trail at seq 11, trade {trade}")


_COPY_SNAPSHOT = (
    "INSERT INTO post_trade_snapshots (approval_id, bid, ask, spread, mid_price,"
    " response_latency_ms, price_deviation_pct, correlation_id, created_at, mac, mac_key_id)"
    " SELECT 2, bid, ask, spread, mid_price, response_latency_ms, price_deviation_pct,"
    " correlation_id, created_at, {mac} FROM post_trade_snapshots WHERE id = 1"
)


async def _edit_snapshot(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    await attack(engine, "UPDATE post_trade_snapshots SET bid = 1.15 WHERE id = 1")
    return (
        f"snapshot differs from its trail at trade {trades[0].trade_id}:"
        " post-trade snapshot 1 does not match its MAC (edited)"
    )


async def _delete_snapshot(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    await attack(engine, "DELETE FROM post_trade_snapshots WHERE id = 1")
    return (
        f"snapshot differs from its trail at seq 11, trade {trades[0].trade_id}:"
        " the post-trade snapshot this entry recorded is missing (deleted)"
    )


async def _copy_snapshot(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    # The genuine snapshot's figures and MAC, given to the rejected trade.
    await attack(engine, _COPY_SNAPSHOT.format(mac="mac, mac_key_id"))
    return (
        f"snapshot differs from its trail at trade {trades[1].trade_id}:"
        " post-trade snapshot 2 does not match its MAC (edited)"
    )


async def _insert_unsealed_snapshot(engine: AsyncEngine, trades: list[ApprovalRequest]) -> str:
    await attack(engine, _COPY_SNAPSHOT.format(mac="NULL, NULL"))
    return (
        f"snapshot differs from its trail at trade {trades[1].trade_id}:"
        " post-trade snapshot 2 has no MAC"
    )


SNAPSHOT_TAMPERING: dict[str, Tamper] = {
    "edit the snapshot": _edit_snapshot,
    "delete the snapshot": _delete_snapshot,
    "insert a copy for another trade": _copy_snapshot,
    "insert one without a MAC": _insert_unsealed_snapshot,
}


@pytest.mark.parametrize("tamper", list(SNAPSHOT_TAMPERING))
async def test_a_tampered_snapshot_is_named_by_verify_and_the_continuous_check(
    engine: AsyncEngine, data_dir: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    del data_dir
    sessions = session_factory(engine, writer=True)
    trades = await build_record(sessions)
    before = await _head(engine)  # seq 10: the continuous check's last verified head
    await record_snapshot_of(sessions, trades[0])
    after = await _head(engine)
    keys = load_keyring(keys_dir_from_environment(), KeyPurpose.RECORD)
    assert (await run_hitl(capsys, "audit", "verify"))[0] == 0
    for start in (before, after):
        assert (await verify_record(engine, keys, start=start)).intact
    expected = await SNAPSHOT_TAMPERING[tamper](engine, trades)
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 1, out
    assert out.startswith(f"BROKEN: {expected}"), out
    # The continuous check that verifies the snapshot's entry sees it; one that started after
    # it sees a snapshot deleted or inserted without an entry (the counts differ).
    starts = [before] if tamper == "edit the snapshot" else [before, after]
    for start in starts:
        report = await verify_record(engine, keys, start=start)
        assert report.finding is not None, start
        assert report.finding.describe() == expected


@pytest.fixture(params=["postgresql", "sqlite"])
async def database_0006(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database at revision 0006: snapshots have a MAC but no audit entry of their own."""
    async with _database_at(request.param, "0006", tmp_path) as url:
        yield url


async def _snapshot_as_0006_wrote_it(sessions: Sessions, approval: ApprovalRequest) -> None:
    """``record_snapshot`` as it was at revision 0006: the row and its MAC, no entry."""
    async with sessions.begin() as session:
        approval_id = (
            await session.execute(
                select(ApprovalRow.id).where(ApprovalRow.trade_id == approval.trade_id)
            )
        ).scalar_one()
        values = {
            "approval_id": approval_id,
            "bid": Decimal("1.16012000"),
            "ask": Decimal("1.16031000"),
            "spread": Decimal("0.00019000"),
            "mid_price": Decimal("1.16021500"),
            "response_latency_ms": Decimal("42.50000000"),
            "price_deviation_pct": Decimal("0.01853000"),
            "correlation_id": approval.correlation_id,
            "created_at": datetime.now(UTC),
        }
        sealed = seal(RecordKind.SNAPSHOT, values)
        session.add(PostTradeSnapshotRow(**values, mac=sealed.mac, mac_key_id=sealed.key_id))


async def test_a_database_migrated_from_0006_with_snapshots_verifies_intact(
    database_0006: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Snapshots recorded before their entries existed verify by their MAC; one recorded after
    the upgrade has its entry; a legacy snapshot moved past the migration's bound (as if it
    were new) has none, and is named."""
    monkeypatch.setenv("DATABASE_URL", database_0006)
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path))
    engine = create_engine(database_0006)
    try:
        sessions = session_factory(engine, writer=True)
        old = []
        for _ in range(2):
            pending = await stored_approval(sessions)
            decided = await approvals.record_decision(
                sessions,
                RecordDecisionInput(
                    expected=pending,
                    decided=decision_of(pending, accept=True),
                    event_type="hitl.decided",
                ),
            )
            await _snapshot_as_0006_wrote_it(sessions, decided.value.approval)
            old.append(decided.value.approval)
        await asyncio.to_thread(upgrade_to_head, database_0006)
        async with engine.connect() as connection:
            head = (await connection.execute(select(AuditChainHeadRow))).one()
        assert (head.legacy_snapshot_last_id, head.unsealed_snapshot_last_id) == (2, 0)
        code, out = await run_hitl(capsys, "audit", "verify")
        assert code == 0, out
        assert out.startswith("intact: 4 chained audit entries up to seq 4, 2 approvals")

        new = await stored_approval(sessions)
        accepted = await approvals.record_decision(
            sessions,
            RecordDecisionInput(
                expected=new, decided=decision_of(new, accept=True), event_type="hitl.decided"
            ),
        )
        await record_snapshot_of(sessions, accepted.value.approval)
        code, out = await run_hitl(capsys, "audit", "verify")
        assert code == 0, out
        assert out.startswith("intact: 7 chained audit entries up to seq 7, 3 approvals")
        keys = load_keyring(keys_dir_from_environment(), KeyPurpose.RECORD)
        report = await verify_record(engine, keys)
        assert (report.snapshots, report.legacy_snapshots) == (1, 2)

        # The first legacy snapshot given a new id: its MAC still holds (the id is not MAC'd),
        # but a snapshot past the bound must have its entry.
        await attack(engine, "UPDATE post_trade_snapshots SET id = 10 WHERE id = 1")
    finally:
        await engine.dispose()
    code, out = await run_hitl(capsys, "audit", "verify")
    assert code == 1, out
    assert out.startswith(
        f"BROKEN: snapshot differs from its trail at trade {old[0].trade_id}:"
        " post-trade snapshot 10 has no audit entry (inserted)"
    ), out
