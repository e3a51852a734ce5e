"""Dependency aliases used by every router (``Annotated`` style)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from api.auth import authenticate
from api.correlation import current_correlation_id
from api.services import Services
from hitl.decisions import MAY_DECIDE, MAY_DRIVE_GUARDIAN, MAY_READ, MAY_REQUEST
from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal, Role
from store.engine import AsyncSession


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
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The authenticated caller (SEC-001 otherwise), counted against its rate limit."""
    principal = await authenticate(
        authorization, declared=services.declared_tokens, session=session
    )
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
OperatorDep = Annotated[Principal, Depends(require(*MAY_DECIDE))]
ReaderDep = Annotated[Principal, Depends(require(*MAY_READ))]
GuardianDep = Annotated[Principal, Depends(require(*MAY_DRIVE_GUARDIAN))]
