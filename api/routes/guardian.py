"""The Guardian kill-switch: admins (or the risk engine's ``guardian`` principal) lock and unlock;
anyone signed in may read the status."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import (
    CorrelationIdDep,
    GuardianDep,
    GuardianReaderDep,
    ServicesDep,
    SessionDep,
)
from api.errors import responses
from hitl.errors import ErrorCode
from hitl.messages import GuardianCommand, GuardianStatus
from hitl.text_rules import SafeText
from store.guardian import pending_remaining, read_guardian

router = APIRouter(prefix="/api/guardian", tags=["guardian"])


class LockBody(BaseModel):
    """Why trading is halted."""

    model_config = ConfigDict(extra="forbid")

    reason: SafeText
    """At most 2000 characters; control and bidirectional-override characters are refused."""


class UnlockBody(BaseModel):
    """Why trading may resume (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: SafeText = ""


class GuardianStatusView(GuardianStatus):
    """The Guardian as it stands, and how far a lock's rejection of the pending has got."""

    pending_remaining: int = 0
    """Approvals still awaiting a decision while locked (the lock is in force already; they are
    being rejected, in batches); 0 when unlocked or done."""


_ERRORS = responses(ErrorCode.UNAUTHENTICATED, ErrorCode.UNAUTHORISED_OPERATOR)


@router.get("/status", responses=_ERRORS)
async def status(_: GuardianReaderDep, session: SessionDep) -> GuardianStatusView:
    """Whether the Guardian is locked, since when, by whom and why, and how many approvals
    its lock has still to reject."""
    current = await read_guardian(session)
    return GuardianStatusView(
        **current.model_dump(), pending_remaining=await pending_remaining(session)
    )


@router.post("/lock", responses=_ERRORS)
async def lock(
    body: LockBody, by: GuardianDep, services: ServicesDep, correlation_id: CorrelationIdDep
) -> GuardianStatus:
    """Lock: when this answers, the lock is in force (no decision can succeed); the pending
    approvals are rejected within seconds after (``pending_remaining`` in the status)."""
    command = GuardianCommand(reason=body.reason, by=by.id, correlation_id=correlation_id)
    return await services.bounded(services.guardian.lock(command))


@router.post("/unlock", responses=_ERRORS)
async def unlock(
    by: GuardianDep,
    services: ServicesDep,
    correlation_id: CorrelationIdDep,
    body: UnlockBody | None = None,
) -> GuardianStatus:
    """Unlock: approvals may be decided again."""
    command = GuardianCommand(
        reason=body.reason if body else "", by=by.id, correlation_id=correlation_id
    )
    return await services.bounded(services.guardian.unlock(command))
