"""One-time deep links: the operators' page opens an approval from the link Discord carried.

The token is the credential: opening it uses it up and shows the approval, read-only. It never
decides anything, so a link scanner following the link cannot approve or reject a trade; the
page decides through the authenticated approve and reject endpoints.
"""

from __future__ import annotations

from uuid import UUID

import structlog
from fastapi import APIRouter, Response
from pydantic import BaseModel

from api.deps import CorrelationIdDep, ServicesDep, SessionDep
from api.errors import responses
from api.queries import approval_detail
from api.schemas import ApprovalDetail
from hitl.errors import ErrorCode, HITLError
from hitl.principals import hash_token
from store.deep_links import consume_deep_link

router = APIRouter(prefix="/api/hitl/deep-links", tags=["deep-links"])

log = structlog.get_logger(__name__)


class DeepLinkView(BaseModel):
    """What a deep link opens: one approval, to read."""

    trade_id: UUID
    approval: ApprovalDetail
    correlation_id: str
    """This access's correlation id (the approval's own is in ``approval``)."""


@router.post(
    "/{token}",
    responses=responses(
        ErrorCode.INVALID_DEEP_LINK, ErrorCode.NOT_FOUND, ErrorCode.INTEGRITY_FAILURE
    ),
)
async def open_deep_link(
    token: str,
    services: ServicesDep,
    session: SessionDep,
    correlation_id: CorrelationIdDep,
    response: Response,
) -> DeepLinkView:
    """Use a one-time link up and show its approval; a used, expired or unknown link is
    refused (SEC-091). Nothing is decided.

    A POST, because it uses the link up: a GET never changes state, so a link scanner or a
    browser's prefetch that follows the Discord link (the page) uses nothing."""
    # The token is a secret: shown nowhere, cached nowhere, sent on to nobody.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    # A fingerprint ties the log lines of one link together without revealing it.
    fingerprint = hash_token(token)[:12]
    grant = await consume_deep_link(services.sessions, token)
    if grant is None:
        log.warning(
            "deep link refused",
            correlation_id=correlation_id,
            actor="deep_link",
            action="deep_link.open",
            result="refused",
            error_code=ErrorCode.INVALID_DEEP_LINK.code,
            link=fingerprint,
        )
        raise HITLError(ErrorCode.INVALID_DEEP_LINK)
    log.info(
        "deep link opened",
        correlation_id=correlation_id,
        actor="deep_link",
        action="deep_link.open",
        result="granted",
        link=fingerprint,
        trade_id=str(grant.trade_id),
        trade_correlation_id=grant.correlation_id,
    )
    detail = await approval_detail(session, grant.trade_id)
    if detail is None:
        raise HITLError(ErrorCode.NOT_FOUND, f"no approval for trade {grant.trade_id}")
    return DeepLinkView(trade_id=grant.trade_id, approval=detail, correlation_id=correlation_id)
