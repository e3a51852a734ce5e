"""Approvals: bots create them and report fills; operators list and decide them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from fastapi import APIRouter

from api.deps import (
    BotDep,
    CorrelationIdDep,
    OperatorDep,
    ReaderDep,
    ServicesDep,
    SessionDep,
)
from api.errors import responses
from api.guardian import refuse_if_locked
from api.queries import approval_detail, pending_approvals
from api.schemas import (
    ApprovalDetail,
    ApproveBody,
    CreateApprovalBody,
    CreatedApproval,
    DecisionResult,
    LifecycleBody,
    PendingApproval,
    RejectBody,
)
from api.services import Services
from hitl.decisions import refusal_at_door
from hitl.errors import ErrorCode, HITLError
from hitl.messages import DecisionCommand, LifecycleCommand
from hitl.models import ApprovalRequest, Decision, DecisionChannel, TradeProposal, TradeStatus
from hitl.principals import Principal

router = APIRouter(prefix="/api/hitl", tags=["approvals"])

_DECISION_ERRORS = (
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.UNAUTHORISED_OPERATOR,
    ErrorCode.NOT_FOUND,
    ErrorCode.ALREADY_DECIDED,
    ErrorCode.EXPIRED,
    ErrorCode.SLIPPAGE_EXCEEDED,
    ErrorCode.GUARDIAN_LOCKED,
    ErrorCode.INTEGRITY_FAILURE,
    ErrorCode.MARKET_DATA_UNAVAILABLE,
)


@router.post(
    "/requests",
    status_code=201,
    responses=responses(
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.UNAUTHORISED_OPERATOR,
        ErrorCode.DUPLICATE_REQUEST,
        ErrorCode.GUARDIAN_LOCKED,
    ),
)
async def create_request(
    body: CreateApprovalBody,
    bot: BotDep,
    services: ServicesDep,
    session: SessionDep,
    correlation_id: CorrelationIdDep,
) -> CreatedApproval:
    """Start the approval of a proposed trade; it waits for an operator until it expires."""
    await refuse_if_locked(session)
    proposal = TradeProposal(
        **body.model_dump(exclude={"correlation_id"}),
        correlation_id=body.correlation_id or correlation_id,
    )
    handle = await services.bounded(
        services.approvals.request_approval(
            proposal, requested_by=bot.id, policy=services.settings.policy()
        ),
    )
    approval = await services.bounded(handle.recorded())
    return CreatedApproval(
        trade_id=approval.trade_id,
        status=approval.status,
        requested_at=approval.requested_at,
        expires_at=approval.expires_at,
        correlation_id=approval.correlation_id,
    )


@router.get(
    "/pending",
    responses=responses(ErrorCode.UNAUTHENTICATED, ErrorCode.UNAUTHORISED_OPERATOR),
)
async def list_pending(_: OperatorDep, session: SessionDep) -> list[PendingApproval]:
    """Approvals awaiting a decision, soonest deadline first; unsound rows are flagged."""
    return await pending_approvals(session)


@router.get(
    "/{trade_id}",
    responses=responses(
        ErrorCode.UNAUTHENTICATED, ErrorCode.NOT_FOUND, ErrorCode.INTEGRITY_FAILURE
    ),
)
async def get_approval(trade_id: UUID, _: ReaderDep, session: SessionDep) -> ApprovalDetail:
    """One approval: request, decision, lifecycle state and post-trade snapshot."""
    detail = await approval_detail(session, trade_id)
    if detail is None:
        raise HITLError(ErrorCode.NOT_FOUND, f"no approval for trade {trade_id}")
    return detail


async def _decide(
    services: Services,
    *,
    trade_id: UUID,
    operator: Principal,
    claimed_by: str | None,
    channel: DecisionChannel,
    comment: str | None,
    correlation_id: str,
    decision: Decision,
) -> ApprovalRequest:
    refusal = refusal_at_door(
        operator, claimed_by=claimed_by, allowed_operators=services.settings.hitl.allowed_operators
    )
    try:
        if refusal is not None:
            raise HITLError(refusal.error, refusal.message)
        async with services.sessions() as session:
            await refuse_if_locked(session)
        timeout = services.settings.api.decision_timeout_seconds
        command = DecisionCommand(
            operator_id=operator.id,
            channel=channel,
            comment=comment,
            correlation_id=correlation_id,
            not_after=datetime.now(UTC) + timedelta(seconds=timeout),
        )
        handle = services.approvals.approval(trade_id)
        call = handle.approve(command) if decision is Decision.APPROVE else handle.reject(command)
        return await services.bounded(call)
    except HITLError as exc:
        if exc.error is ErrorCode.UNAUTHORISED_OPERATOR:
            await services.audit(
                actor_id=operator.id,
                action=f"approval.{decision.value.lower()}_refused",
                target_id=str(trade_id),
                correlation_id=correlation_id,
                error_code=exc.error.code,
                payload={"reason": exc.message, "claimed_by": claimed_by},
            )
        raise


@router.post("/{trade_id}/approve", responses=responses(*_DECISION_ERRORS))
async def approve(
    trade_id: UUID,
    body: ApproveBody,
    operator: OperatorDep,
    services: ServicesDep,
    correlation_id: CorrelationIdDep,
) -> DecisionResult:
    """Approve: the price is checked against the market, then the trade is ACCEPTED."""
    approval = await _decide(
        services,
        trade_id=trade_id,
        operator=operator,
        claimed_by=body.approved_by,
        channel=body.channel,
        comment=body.comment,
        correlation_id=correlation_id,
        decision=Decision.APPROVE,
    )
    return DecisionResult.of(approval)


@router.post("/{trade_id}/reject", responses=responses(*_DECISION_ERRORS))
async def reject(
    trade_id: UUID,
    body: RejectBody,
    operator: OperatorDep,
    services: ServicesDep,
    correlation_id: CorrelationIdDep,
) -> DecisionResult:
    """Reject, with a reason."""
    approval = await _decide(
        services,
        trade_id=trade_id,
        operator=operator,
        claimed_by=body.rejected_by,
        channel=body.channel,
        comment=body.reason,
        correlation_id=correlation_id,
        decision=Decision.REJECT,
    )
    return DecisionResult.of(approval)


_LIFECYCLE_ERRORS = responses(
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.UNAUTHORISED_OPERATOR,
    ErrorCode.NOT_FOUND,
    ErrorCode.INVALID_TRANSITION,
    ErrorCode.INTEGRITY_FAILURE,
)


def _lifecycle_route(step: str, target: TradeStatus, summary: str) -> None:
    """Register ``POST /{trade_id}/<step>``: the bot reports the trade reached ``target``."""

    async def report(
        trade_id: UUID,
        bot: BotDep,
        services: ServicesDep,
        correlation_id: CorrelationIdDep,
        body: LifecycleBody | None = None,
    ) -> DecisionResult:
        command = LifecycleCommand(
            target=target,
            reported_by=bot.id,
            correlation_id=correlation_id,
            details=body.details if body else {},
        )
        handle = services.approvals.approval(trade_id)
        return DecisionResult.of(await services.bounded(handle.advance(command)))

    report.__doc__ = summary
    router.post(f"/{{trade_id}}/{step}", responses=_LIFECYCLE_ERRORS, name=step)(report)


_lifecycle_route("fill", TradeStatus.FILLED, "The accepted trade was filled.")
_lifecycle_route("close", TradeStatus.CLOSED, "The filled position was closed.")
_lifecycle_route("settle", TradeStatus.SETTLED, "The closed trade settled; its workflow ends.")
