"""Benchmark of the tamper-evident record (docs/audit.md "Cost").

``python -m bench.audit_verify [--entries N] [--url URL]``: on a fresh SQLite file (or the
PostgreSQL database named by --url, which must be empty), it measures

- the extra cost per append: transactions of one audit entry each, written by the one audit
  writer (MAC, chain link, head row) and, for comparison, the same rows inserted bare;
- the verification speed: ``N`` chained entries shaped like a decision's (the approval in the
  payload), then the full check ``hitl audit verify`` runs (``--runs`` times, the median
  reported), in entries per second of wall-clock and of this process's CPU time.

The machine's load moves every figure: the HMAC calibration printed with them (one
``hmac.digest`` of 200 bytes) lets a reader scale them to another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import statistics
import tempfile
import time
import timeit
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from hitl.keys import KeyPurpose, ensure_keyrings, load_keyring
from migrations.runner import upgrade_to_head
from store.audit import AuditEntry, write_audit
from store.audit_record import verify_record
from store.engine import create_engine, session_factory
from store.tables import AuditRow

APPROVAL = {
    "trade_id": "6f1c2e3a-0b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "instrument": "EUR/USD",
    "side": "BUY",
    "risk_pct": "1.50000000",
    "confidence": "0.80000000",
    "request_price": "1.08765000",
    "reasoning_summary": "Breakout above resistance on rising volume",
    "correlation_id": "corr-bench",
    "status": "ACCEPTED",
    "requested_at": "2026-12-02T09:30:00.000000Z",
    "expires_at": "2026-12-02T09:35:00.000000Z",
    "decided_at": "2026-12-02T09:31:00.000000Z",
    "decided_by": "alice",
    "decision_channel": "API",
    "decision_reason": "OPERATOR_APPROVED",
    "comment": "ok",
    "row_hash": "ab" * 32,
}


def _entry(number: int) -> AuditEntry:
    return AuditEntry(
        actor_id="alice",
        action="approval.decided",
        target_id=str(uuid.UUID(int=number)),
        correlation_id=f"corr-{number}",
        payload={"approval": APPROVAL, "market": {"bid": "1.08760000", "ask": "1.08770000"}},
        previous_state="AWAITING_APPROVAL",
        new_state="ACCEPTED",
        idempotency_key=f"bench:{number}",
    )


def _bare_values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "actor_id": entry.actor_id,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": str(entry.target_id),
        "previous_state": entry.previous_state,
        "new_state": entry.new_state,
        "payload": entry.payload,
        "correlation_id": entry.correlation_id,
        "error_code": entry.error_code,
        "created_at": datetime.now(UTC),
        "idempotency_key": f"bare:{entry.idempotency_key}",
    }


async def _per_transaction(url: str, *, transactions: int, chained: bool) -> tuple[float, float]:
    """Seconds per transaction writing one audit entry, chained or bare: wall clock and this
    process's CPU (SQLite runs in this process)."""
    engine = create_engine(url)
    sessions = session_factory(engine, writer=True)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for number in range(transactions):
            async with sessions.begin() as session:
                if chained:
                    await write_audit(session, _entry(number))
                else:
                    await session.execute(insert(AuditRow).values(**_bare_values(_entry(number))))
        return (
            (time.perf_counter() - start) / transactions,
            (time.process_time() - cpu) / transactions,
        )
    finally:
        await engine.dispose()


async def run(
    url: str, *, bare_url: str | None, entries: int, transactions: int, runs: int = 3
) -> dict[str, float]:
    """Measure and return the figures."""
    await asyncio.to_thread(upgrade_to_head, url)
    keys = load_keyring(Path(os.environ["HITL_KEYS_DIR"]), KeyPurpose.RECORD)
    figures: dict[str, float] = {}
    # One entry per transaction, as an approval's state change writes it. The bare rows go to a
    # database of their own: in the chained one the verifier would rightly call them inserted.
    chained, chained_cpu = await _per_transaction(url, transactions=transactions, chained=True)
    figures["append_chained_ms"] = chained * 1000
    figures["append_chained_cpu_ms"] = chained_cpu * 1000
    if bare_url is not None:
        await asyncio.to_thread(upgrade_to_head, bare_url)
        bare, bare_cpu = await _per_transaction(bare_url, transactions=transactions, chained=False)
        figures["append_bare_ms"] = bare * 1000
        figures["append_bare_cpu_ms"] = bare_cpu * 1000
        figures["append_extra_ms"] = (chained - bare) * 1000
        figures["append_extra_cpu_ms"] = (chained_cpu - bare_cpu) * 1000
    engine = create_engine(url)
    sessions = session_factory(engine, writer=True)
    try:
        # Bulk: the rest of the entries, a thousand per transaction, to have something to verify.
        number = transactions
        while number < entries:
            async with sessions.begin() as session:
                for _ in range(min(1000, entries - number)):
                    await write_audit(session, _entry(number))
                    number += 1
        walls, cpus = [], []
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            report = await verify_record(engine, keys)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            assert report.intact, report.finding
        figures["verified_entries"] = report.entries
        figures["verify_runs"] = runs
        # Medians of the runs; CPU is this process's (SQLite's reads run in a thread of it).
        figures["verify_entries_per_s_wall"] = report.entries / statistics.median(walls)
        figures["verify_entries_per_s_cpu"] = report.entries / statistics.median(cpus)
        figures["verify_entries_per_s_wall_best"] = report.entries / min(walls)
    finally:
        await engine.dispose()
    figures["hmac_digest_us"] = (
        min(
            timeit.repeat(
                lambda: hmac.digest(b"k" * 32, b"x" * 200, "sha256"), number=20000, repeat=5
            )
        )
        / 20000
        * 1e6
    )
    figures["load_average_1m"] = os.getloadavg()[0]
    return figures


def main() -> None:
    """Parse the arguments, run, print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="verifications (median reported)")
    parser.add_argument("--url", help="an empty database (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        keys_dir = Path(folder) / "keys"
        os.environ["HITL_KEYS_DIR"] = str(keys_dir)
        ensure_keyrings(keys_dir, (KeyPurpose.RECORD,), now=datetime.now(UTC))
        url = args.url or f"sqlite+aiosqlite:///{Path(folder) / 'hitl.db'}"
        bare_url = None if args.url else f"sqlite+aiosqlite:///{Path(folder) / 'bare.db'}"
        figures = asyncio.run(
            run(
                url,
                bare_url=bare_url,
                entries=args.entries,
                transactions=args.transactions,
                runs=args.runs,
            )
        )
    for name, value in figures.items():
        print(f"{name}\t{value:,.2f}")


if __name__ == "__main__":
    main()
