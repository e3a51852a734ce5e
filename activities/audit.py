"""The continuous check of the audit chain, as an activity (issue 15 item 6).

It verifies what was appended since the last verified head (the whole record on the first run),
appends the head it reached to the checkpoint file, records the outcome in the database's
``audit_verification`` row (which ``/readyz`` reads) and the ``hitl_audit_chain_broken`` gauge,
and raises the security alert when the record is broken.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import structlog
from temporalio import activity

from activities.notifications import Notifier
from hitl import metrics
from hitl.audit_chain import AuditCheckInput, AuditCheckResult, Checkpoint, Finding
from hitl.errors import ErrorCode
from hitl.keys import KeyringFile
from hitl.messages import SecurityAlertInput
from store.audit import record_verification
from store.audit_record import verify_record
from store.checkpoints import append_checkpoint, checkpoint_path, read_checkpoints
from store.engine import AsyncEngine, Sessions

log = structlog.get_logger(__name__)

NO_TRADE = UUID(int=0)
"""The alert's trade id when the broken entry names no trade."""


def _trade_of(finding: Finding) -> UUID:
    try:
        return UUID(finding.target_id or "")
    except ValueError:
        return NO_TRADE


class AuditActivities:
    """The audit chain's continuous check; built in ``worker.py``."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: Sessions,
        notifier: Notifier,
        keys: KeyringFile,
        data_dir: Path,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._notifier = notifier
        self._keys = keys
        self._checkpoints = checkpoint_path(data_dir)

    @activity.defn(name="verify_audit_chain")
    async def verify_audit_chain(self, data: AuditCheckInput) -> AuditCheckResult:
        """Verify the entries after ``data.start``; record, checkpoint and alert."""
        keys = self._keys.current()
        stored = await asyncio.to_thread(read_checkpoints, self._checkpoints, keys)
        checkpoints = list(stored.checkpoints)
        if data.start is not None:
            checkpoints.append(
                Checkpoint(
                    seq=data.start.seq,
                    chain=data.start.chain,
                    source="the AuditCheckpointWorkflow's last verified head",
                )
            )
        report = await verify_record(self._engine, keys, checkpoints=checkpoints, start=data.start)
        finding = stored.finding or report.finding
        now = datetime.now(UTC)
        if finding is None:
            last = stored.checkpoints[-1] if stored.checkpoints else None
            if last is None or (last.seq, last.chain) != (report.head.seq, report.head.chain):
                await asyncio.to_thread(
                    append_checkpoint, self._checkpoints, keys, report.head, at=now
                )
        metrics.AUDIT_CHAIN_BROKEN.set(0 if finding is None else 1)
        problem = None if finding is None else finding.describe()
        changed = await record_verification(
            self._sessions, checked_at=now, head=report.head, problem=problem
        )
        if finding is None:
            log.info(
                "audit chain verified",
                correlation_id="-",
                actor="worker",
                action="audit.verify",
                result="intact",
                seq=report.head.seq,
                checked=report.entries,
            )
        else:
            log.critical(
                "audit chain broken",
                correlation_id="-",
                actor="worker",
                action="audit.verify",
                result="broken",
                error_code=ErrorCode.INTEGRITY_FAILURE.code,
                problem=problem,
            )
            if changed:
                # Once per distinct problem: a break stays reported by every check, alerted once.
                await self._notifier.security_alert(
                    SecurityAlertInput(
                        trade_id=_trade_of(finding),
                        error_code=ErrorCode.INTEGRITY_FAILURE.code,
                        message=f"audit record broken: {problem}",
                        correlation_id=f"audit-verify-{report.head.seq}",
                        detected_at=now,
                    )
                )
        return AuditCheckResult(head=report.head, checked=report.entries, problem=problem)
