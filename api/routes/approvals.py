"""Approvals: bots create them, wait for them and report fills; operators list, preview and
decide them.

A bot sees and reports only the approvals it requested (another's answer 404, as if absent).
The channel a decision is recorded with follows from the route: ``/api/hitl/…`` records API,
the operators' page's ``/approvals/…`` records WEB; a body cannot choose it.

``?wait=N`` (a request, or reading one approval) holds the answer until the approval is decided
or N seconds passed, whichever comes first: the waiter is woken by the outbox (``ApprovalWatch``:
one reader per process, however many wait), never by asking Temporal, and a client that hangs
up stops its wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Query, Request, Response

from api.deps import (
    BotDep,
    CorrelationIdDep,
    OperatorDep,
    ReaderDep,
    ReporterDep,
    ServicesDep,
    SessionDep,
    ensure_visible,
    not_found,
)
from api.errors import responses
from api.guardian import refuse_if_locked
from api.pagination import Page, PageDep, decode_cursor, page_of
from api.queries import approval_detail, pending_approvals
from api.schemas import (
    ApprovalDetail,
    ApproveBody,
    CreateApprovalBody,
    DecisionResult,
    LifecycleBody,
    PendingApproval,
    PendingPreviews,
    RejectBody,
    UnavailablePreview,
)
from api.services import Services
from hitl.decisions import refusal_at_door
from hitl.errors import ErrorCode, HITLError
from hitl.market import MarketQuote
from hitl.messages import DecisionCommand, LifecycleCommand
from hitl.models import ApprovalRequest, Decision, DecisionChannel, TradeProposal, TradeStatus
from hitl.preview import SlippagePreview, slippage_preview
from hitl.principals import Principal
from store.ownership import requester_of

router = APIRouter(prefix="/api/hitl", tags=["approvals"])
page_router = APIRouter(prefix="/approvals", tags=["page"])
"""The operators' page decides here: the same decisions, recorded with the WEB channel."""

log = structlog.get_logger(__name__)

_AUDITED_REFUSALS = (
    ErrorCode.UNAUTHORISED_OPERATOR,
    ErrorCode.INVALID_INPUT,
    ErrorCode.ALREADY_DECIDED,
    ErrorCode.SAME_APPROVER,
    ErrorCode.EXPIRED,
    ErrorCode.GUARDIAN_LOCKED,
)
"""Refused decisions written to the audit trail: who was refused, and on what."""

_DECISION_ERRORS = (
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.UNAUTHORISED_OPERATOR,
    ErrorCode.NOT_FOUND,
    ErrorCode.ALREADY_DECIDED,
    ErrorCode.SAME_APPROVER,
    ErrorCode.EXPIRED,
    ErrorCode.SLIPPAGE_EXCEEDED,
    ErrorCode.GUARDIAN_LOCKED,
    ErrorCode.INTEGRITY_FAILURE,
    ErrorCode.MARKET_DATA_UNAVAILABLE,
)


MAX_WAIT_SECONDS = 60

WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Hold the answer until the approval is decided or this many seconds (at"
        " most 60) passed, whichever comes first; 0 answers at once.",
    ),
]


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
    request: Request,
    wait: WaitQuery = 0,
) -> ApprovalDetail:
    """Start the approval of a proposed trade; it waits for an operator until it expires.

    The answer is the full approval record, as ``GET /api/hitl/{trade_id}`` gives it: one the
    gateway decided at once (HITL switched off) already says so, with its
    ``decision_reason``. With ``?wait=N`` the answer comes when an operator decides, or after N
    seconds with the approval still awaiting a decision."""
    await refuse_if_locked(session)
    # Nothing below reads this session: release its connection before a long wait.
    await session.close()
    proposal = TradeProposal(
        **body.model_dump(exclude={"correlation_id"}),
        correlation_id=body.correlation_id or correlation_id,
    )
    _, recorded = await services.bounded(
        services.approvals.request_recorded(proposal, requested_by=bot.id),
    )
    return await _awaited(services, request, recorded.trade_id, wait=wait)


def _pending_key(item: PendingApproval) -> tuple[str, str]:
    return (item.expires_at.isoformat(), str(item.trade_id))


def _sort_key(item: PendingApproval) -> tuple[datetime, str]:
    return (item.expires_at, str(item.trade_id))


@router.get(
    "/pending",
    responses=responses(ErrorCode.UNAUTHENTICATED, ErrorCode.UNAUTHORISED_OPERATOR),
)
async def list_pending(_: OperatorDep, session: SessionDep, page: PageDep) -> Page[PendingApproval]:
    """Approvals awaiting a decision, soonest deadline first (``limit`` at a time; pass
    ``next_cursor`` back as ``cursor`` for the next page); unsound rows are flagged."""
    after: tuple[datetime, str] | None = None
    if page.cursor is not None:
        expires_at, trade_id = decode_cursor(page.cursor, arity=2)
        try:
            after = (datetime.fromisoformat(str(expires_at)), str(UUID(str(trade_id))))
        except ValueError:
            raise HITLError(
                ErrorCode.INVALID_INPUT, "invalid request: cursor is not a valid cursor"
            ) from None
    # Pending approvals live minutes at most, so they are few: the page is cut here, over the
    # same order the cursor names (deadline, then trade id), and never repeats or skips one.
    pending = sorted(await pending_approvals(session), key=_sort_key)
    rows = [item for item in pending if after is None or _sort_key(item) > after]
    return page_of(rows[: page.limit + 1], limit=page.limit, key_of=_pending_key)


@router.get(
    "/pending/previews",
    responses=responses(ErrorCode.UNAUTHENTICATED, ErrorCode.UNAUTHORISED_OPERATOR),
)
async def pending_previews(_: OperatorDep, services: ServicesDep) -> PendingPreviews:
    """The slippage preview of every approval awaiting a decision: the price an approval would
    get now and its deviation from the requested price, with the decision's arithmetic and
    limit (advice: the decision takes its own quote). One quote per instrument; an instrument
    without one is listed under ``unavailable``."""
    async with services.sessions() as session:
        pending = await pending_approvals(session)
    instruments = sorted({item.instrument for item in pending})
    quotes = dict(
        zip(
            instruments,
            await asyncio.gather(*(_quote(services, name) for name in instruments)),
            strict=True,
        )
    )
    previews: list[SlippagePreview] = []
    unavailable: list[UnavailablePreview] = []
    for item in sorted(pending, key=_sort_key):
        quote = quotes[item.instrument]
        if isinstance(quote, HITLError):
            unavailable.append(
                UnavailablePreview(
                    trade_id=item.trade_id,
                    instrument=item.instrument,
                    error_code=quote.error.code,
                    message=quote.message,
                )
            )
            continue
        previews.append(_preview(services, item.trade_id, item, quote))
    return PendingPreviews(items=previews, unavailable=unavailable)


@router.get(
    "/{trade_id}",
    responses=responses(
        ErrorCode.UNAUTHENTICATED, ErrorCode.NOT_FOUND, ErrorCode.INTEGRITY_FAILURE
    ),
)
async def get_approval(
    trade_id: UUID,
    reader: ReaderDep,
    session: SessionDep,
    services: ServicesDep,
    request: Request,
    wait: WaitQuery = 0,
) -> ApprovalDetail:
    """One approval: request, decision, lifecycle state and post-trade snapshot (a bot reads
    only those it requested). With ``?wait=N`` an approval awaiting a decision is answered when
    it is decided, or as it stands after N seconds."""
    await ensure_visible(session, reader, trade_id)
    # The check above used this request's session; the wait reads with short sessions of its
    # own, so a long wait holds no connection.
    await session.close()
    return await _awaited(services, request, trade_id, wait=wait)


@router.get(
    "/{trade_id}/preview",
    responses=responses(
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.UNAUTHORISED_OPERATOR,
        ErrorCode.NOT_FOUND,
        ErrorCode.ALREADY_DECIDED,
        ErrorCode.MARKET_DATA_UNAVAILABLE,
    ),
)
async def get_preview(
    trade_id: UUID, _: OperatorDep, services: ServicesDep, session: SessionDep
) -> SlippagePreview:
    """The slippage preview of one approval awaiting a decision (see ``/pending/previews``);
    409 SEC-012 once it is decided, 503 SEC-060 when there is no quote."""
    detail = await approval_detail(session, trade_id)
    if detail is None:
        raise not_found(trade_id)
    if not detail.awaiting:
        raise HITLError(
            ErrorCode.ALREADY_DECIDED,
            f"trade {trade_id} is {detail.status.value}: there is nothing left to preview",
            approval=detail.approval,
        )
    quote = await _quote(services, detail.approval.instrument)
    if isinstance(quote, HITLError):
        raise quote
    return _preview(services, trade_id, detail.approval, quote)


def _preview(
    services: Services,
    trade_id: UUID,
    approval: PendingApproval | ApprovalRequest,
    quote: MarketQuote,
) -> SlippagePreview:
    return slippage_preview(
        trade_id=trade_id,
        side=approval.side,
        request_price=approval.request_price,
        quote=quote,
        # The API's HITL_SLIPPAGE_MAX_PERCENT, which deployments share with the worker's.
        max_slippage_pct=services.settings.hitl.slippage_max_percent,
    )


async def _quote(services: Services, instrument: str) -> MarketQuote | HITLError:
    """The market's quote of ``instrument`` for a preview, or the SEC-060 error saying why not."""
    if services.market is None:
        return HITLError(
            ErrorCode.MARKET_DATA_UNAVAILABLE,
            f"the API has no market to preview with: {services.market_problem}",
        )
    try:
        async with asyncio.timeout(_QUOTE_SECONDS):
            return await services.market.quote(instrument)
    except HITLError as exc:
        return exc
    except TimeoutError:
        return HITLError(
            ErrorCode.MARKET_DATA_UNAVAILABLE,
            f"no quote of {instrument!r} within {_QUOTE_SECONDS} s",
        )


_QUOTE_SECONDS = 5.0
"""A preview never waits longer for its quote (HTTP quotes have their own, shorter, limit)."""


async def _awaited(
    services: Services, request: Request, trade_id: UUID, *, wait: float
) -> ApprovalDetail:
    """The approval's full record once it is decided, or as it stands after ``wait`` seconds
    (at once with 0), or when the client hangs up (the answer then goes nowhere)."""
    if wait <= 0:
        return await _read_detail(services, trade_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # Registered before the first read, so a decision landing between the read and the wait
    # still wakes it.
    async with services.approval_watch.watch(trade_id) as news:
        gone = asyncio.ensure_future(_until_disconnected(request))
        try:
            while True:
                detail = await _read_detail(services, trade_id)
                left = deadline - loop.time()
                if not detail.awaiting or left <= 0 or gone.done():
                    return detail
                changed = asyncio.ensure_future(news.changed(left))
                await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not changed.done():
                    changed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await changed
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


async def _read_detail(services: Services, trade_id: UUID) -> ApprovalDetail:
    """The stored record, read in a short session of its own (a long wait holds no
    connection)."""
    async with services.sessions() as session:
        detail = await approval_detail(session, trade_id)
    if detail is None:
        raise not_found(trade_id)
    return detail


async def _until_disconnected(request: Request) -> None:
    """Return when the client hangs up (the ASGI server's ``http.disconnect``)."""
    # The body, if any, was read before the route ran: what comes next is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _decide(
    services: Services,
    *,
    trade_id: UUID,
    operator: Principal,
    claimed_by: str | None,
    channel: DecisionChannel,
    claimed_channel: DecisionChannel | None,
    comment: str | None,
    correlation_id: str,
    decision: Decision,
) -> ApprovalRequest:
    try:
        if claimed_channel is not None and claimed_channel is not channel:
            raise HITLError(
                ErrorCode.INVALID_INPUT,
                f"invalid request: channel follows from the route, which records "
                f"{channel.value}, not {claimed_channel.value}",
            )
        async with services.sessions() as session:
            requested_by = await requester_of(session, trade_id)
            refusal = refusal_at_door(
                operator,
                claimed_by=claimed_by,
                allowed_operators=services.settings.hitl.allowed_operators,
                requested_by=requested_by,
            )
            if refusal is not None:
                raise HITLError(refusal.error, refusal.message)
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
        if exc.error in _AUDITED_REFUSALS:
            await _audit_refusal(
                services,
                exc,
                trade_id=trade_id,
                operator=operator,
                decision=decision,
                channel=channel,
                claimed_by=claimed_by,
                claimed_channel=claimed_channel,
                correlation_id=correlation_id,
            )
        raise


async def _audit_refusal(
    services: Services,
    exc: HITLError,
    *,
    trade_id: UUID,
    operator: Principal,
    decision: Decision,
    channel: DecisionChannel,
    claimed_by: str | None,
    claimed_channel: DecisionChannel | None,
    correlation_id: str,
) -> None:
    """Write a refused decision's audit entry; a failure to write is logged, and the caller
    still gets the refusal (not a 500 in its place)."""
    try:
        await services.audit(
            actor_id=operator.id,
            action=f"approval.{decision.value.lower()}_refused",
            target_id=str(trade_id),
            correlation_id=correlation_id,
            error_code=exc.error.code,
            payload={
                "reason": exc.message,
                "claimed_by": claimed_by,
                "channel": channel.value,
                "claimed_channel": claimed_channel.value if claimed_channel else None,
            },
        )
    except Exception:
        log.exception(
            "a refused decision could not be audited",
            correlation_id=correlation_id,
            actor=operator.id,
            action="audit.write",
            result="failed",
            error_code=exc.error.code,
            trade_id=str(trade_id),
        )


def _decision_routes(target: APIRouter, channel: DecisionChannel) -> None:
    """Register ``POST /{trade_id}/approve`` and ``/reject`` on ``target``, recording
    ``channel``."""

    async def approve(
        trade_id: UUID,
        body: ApproveBody,
        operator: OperatorDep,
        services: ServicesDep,
        correlation_id: CorrelationIdDep,
        response: Response,
    ) -> DecisionResult:
        """Approve: the price is checked against the market, then the trade is ACCEPTED.

        Above the worker's four-eyes risk level (``HITL_FOUR_EYES_RISK_PCT``) an approval needs
        two different operators: the first approval answers **202** with the approval still
        ``AWAITING_APPROVAL`` and its ``approvers`` so far; the same operator again gets 409
        SEC-014; a second operator's approval checks the price and accepts (200)."""
        approval = await _decide(
            services,
            trade_id=trade_id,
            operator=operator,
            claimed_by=body.approved_by,
            channel=channel,
            claimed_channel=body.channel,
            comment=body.comment,
            correlation_id=correlation_id,
            decision=Decision.APPROVE,
        )
        if not approval.is_decided:
            response.status_code = 202  # one of two approvals; the approval still waits
        return DecisionResult.of(approval)

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
            channel=channel,
            claimed_channel=body.channel,
            comment=body.reason,
            correlation_id=correlation_id,
            decision=Decision.REJECT,
        )
        return DecisionResult.of(approval)

    suffix = "" if channel is DecisionChannel.API else f"_{channel.value.lower()}"
    errors = responses(*_DECISION_ERRORS)
    first_of_two: dict[int | str, dict[str, Any]] = {
        202: {
            "model": DecisionResult,
            "description": "A first approval of an approval that needs two different operators"
            " (four eyes): recorded; still AWAITING_APPROVAL, with its approvers so far.",
        }
    }
    target.post(
        "/{trade_id}/approve", responses={**first_of_two, **errors}, name=f"approve{suffix}"
    )(approve)
    target.post("/{trade_id}/reject", responses=errors, name=f"reject{suffix}")(reject)


_decision_routes(router, DecisionChannel.API)
_decision_routes(page_router, DecisionChannel.WEB)


_LIFECYCLE_ERRORS = responses(
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.UNAUTHORISED_OPERATOR,
    ErrorCode.NOT_FOUND,
    ErrorCode.INVALID_TRANSITION,
    ErrorCode.INTEGRITY_FAILURE,
)


def _lifecycle_route(step: str, target: TradeStatus, summary: str) -> None:
    """Register ``POST /{trade_id}/<step>``: the bot that requested the trade (or an admin)
    reports it reached ``target``."""

    async def report(
        trade_id: UUID,
        reporter: ReporterDep,
        services: ServicesDep,
        session: SessionDep,
        correlation_id: CorrelationIdDep,
        body: LifecycleBody | None = None,
    ) -> DecisionResult:
        await ensure_visible(session, reporter, trade_id)
        command = LifecycleCommand(
            target=target,
            reported_by=reporter.id,
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
