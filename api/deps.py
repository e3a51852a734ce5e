"""Dependency aliases used by every router (``Annotated`` style)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header, Request

from api.auth import authenticate
from api.correlation import current_correlation_id
from api.limits import client_address
from api.services import Services
from hitl.decisions import (
    MAY_DECIDE,
    MAY_DRIVE_GUARDIAN,
    MAY_READ,
    MAY_READ_GUARDIAN,
    MAY_REPORT,
    MAY_REQUEST,
    SEES_ALL_APPROVALS,
    may_see,
)
from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal, Role
from store.engine import AsyncSession
from store.ownership import requester_of


def get_services(request: Request) -> Services:
    """The process's services, built in the lifespan hook."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """A database session for one request."""
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_correlation_id() -> str:
    """The request's correlation id (see CorrelationIdMiddleware)."""
    return current_correlation_id()


CorrelationIdDep = Annotated[str, Depends(get_correlation_id)]


async def get_principal(
    services: ServicesDep,
    session: SessionDep,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The authenticated caller (SEC-001 otherwise, counted among its address's failed logins),
    counted against its own rate limit."""
    try:
        principal = await authenticate(
            authorization, declared=services.declared_tokens, session=session
        )
    except HITLError:
        services.failed_logins.note(client_address(request.scope))
        raise
    await services.rate_limiter.hit(principal.id)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting only ``roles``; others get SEC-090, audited."""

    async def dependency(
        principal: PrincipalDep, services: ServicesDep, request: Request
    ) -> Principal:
        if principal.role not in roles:
            await services.audit(
                actor_id=principal.id,
                action="api.refused",
                target_id=request.path_params.get("trade_id", "-"),
                correlation_id=current_correlation_id(),
                error_code=ErrorCode.UNAUTHORISED_OPERATOR.code,
                payload={"path": request.url.path, "role": principal.role.value},
            )
            raise HITLError(
                ErrorCode.UNAUTHORISED_OPERATOR,
                f"the {principal.role.value} role may not {request.method} {request.url.path}",
            )
        return principal

    return dependency


BotDep = Annotated[Principal, Depends(require(*MAY_REQUEST))]
ReporterDep = Annotated[Principal, Depends(require(*MAY_REPORT))]
OperatorDep = Annotated[Principal, Depends(require(*MAY_DECIDE))]
ReaderDep = Annotated[Principal, Depends(require(*MAY_READ))]
GuardianReaderDep = Annotated[Principal, Depends(require(*MAY_READ_GUARDIAN))]
GuardianDep = Annotated[Principal, Depends(require(*MAY_DRIVE_GUARDIAN))]


def not_found(trade_id: UUID) -> HITLError:
    """SEC-010 for ``trade_id``: the one answer to an absent approval and to another bot's."""
    return HITLError(ErrorCode.NOT_FOUND, f"no approval for trade {trade_id}")


async def ensure_visible(session: AsyncSession, principal: Principal, trade_id: UUID) -> None:
    """SEC-010 unless ``principal`` may see ``trade_id``'s approval: a bot sees only those it
    requested, and another's answers exactly as if it did not exist."""
    if principal.role in SEES_ALL_APPROVALS:
        return
    if not may_see(principal, requested_by=await requester_of(session, trade_id)):
        raise not_found(trade_id)
