"""BotClient: what a trading bot needs from the gateway, over HTTP with its bearer token.

A bot holds a token of role ``bot`` and nothing else: it cannot reach Temporal, and it could not
approve its own trade if it did. Every call is safe to retry, so the client retries what failed on
the way (connection errors, 502/503/504, 429 after its Retry-After):

- a request is idempotent by trade id: if an earlier attempt was recorded and only its answer was
  lost, the retry finds it and returns it rather than failing with SEC-011;
- a lifecycle report (fill, close, settle) the gateway already has is answered as before.

Waiting for a decision is a long poll: the gateway holds ``GET /api/hitl/{id}?wait=N`` until the
approval is decided or N seconds (at most 60) pass, so a waiting bot sends a request a minute,
not one a second, and hears of the decision at once.

Errors are :class:`GatewayError`, an ``HITLError`` with the API's SEC code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import httpx
from pydantic import BaseModel, ConfigDict

from hitl.errors import ErrorCode, HITLError
from hitl.models import ApprovalRequest, DecisionReason, TradeProposal, TradeStatus

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_UNDECIDED = frozenset({TradeStatus.PENDING, TradeStatus.AWAITING_APPROVAL})
_MAX_RETRY_AFTER = 30.0
MAX_WAIT_SECONDS = 60.0
"""The longest ``?wait=`` the gateway holds a request for."""


class Ticket(BaseModel):
    """A request the gateway has recorded: it now waits for an operator until ``expires_at``,
    unless the gateway decided it at once (``decision_reason`` says why, e.g. HITL_DISABLED)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trade_id: UUID
    status: TradeStatus
    requested_at: datetime
    expires_at: datetime
    correlation_id: str
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: DecisionReason | None = None


class Outcome(BaseModel):
    """Where a trade stands after a lifecycle report."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trade_id: UUID
    status: TradeStatus
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: DecisionReason | None = None
    correlation_id: str


class GatewayError(HITLError):
    """The gateway refused or failed a call; ``error`` is its SEC code (``code`` spells it as the
    API did, even one this client does not know)."""

    def __init__(
        self,
        error: ErrorCode,
        message: str,
        *,
        code: str,
        http_status: int,
        correlation_id: str | None = None,
        approval: ApprovalRequest | None = None,
    ) -> None:
        details: dict[str, Any] = {"http_status": http_status, "correlation_id": correlation_id}
        if approval is not None:
            details["approval"] = approval
        super().__init__(error, message, **details)
        self.code = code
        self.http_status = http_status
        self.correlation_id = correlation_id
        self.approval = approval

    @classmethod
    def from_response(cls, response: httpx.Response) -> GatewayError:
        """The error an API answer carries (``{"error_code", "message", ...}``)."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.get("error_code") or "")
        try:
            error = ErrorCode.from_code(code)
        except KeyError:
            error = (
                ErrorCode.SERVICE_UNAVAILABLE if response.status_code >= 500 else ErrorCode.INTERNAL
            )
            code = code or error.code
        decision = body.get("decision")
        return cls(
            error,
            str(body.get("message") or response.reason_phrase or error.message),
            code=code,
            http_status=response.status_code,
            correlation_id=body.get("correlation_id"),
            approval=ApprovalRequest.from_dict(decision) if isinstance(decision, dict) else None,
        )


class BotClient:
    """A bot's connection to the gateway's HTTP API (``base_url``, e.g. http://127.0.0.1:8000)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 15.0,
        attempts: int = 5,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- the approval ---------------------------------------------------------------------

    async def request(self, proposal: TradeProposal, *, wait: float = 0) -> Ticket:
        """Ask for approval of ``proposal``. With ``wait`` (seconds, at most 60) the answer comes
        when an operator decides, or after ``wait`` with the request still awaiting a decision.

        Retrying is safe: a request the gateway already recorded for this trade id with these
        same terms is returned as it stands; a different proposal under the same trade id is
        SEC-011."""
        seconds = _bounded_wait(wait)
        body = proposal.model_dump(mode="json")
        try:
            data = await self._send(
                "POST", "/api/hitl/requests", json=body, params=_wait_params(seconds), wait=seconds
            )
        except GatewayError as exc:
            if exc.error is not ErrorCode.DUPLICATE_REQUEST:
                raise
            existing = await self._recorded(proposal.trade_id)
            if existing is None or not _same_terms(existing, proposal):
                raise
            return Ticket.model_validate(existing.model_dump())
        return Ticket.model_validate(data)

    async def approval(self, trade_id: UUID, *, wait: float = 0) -> ApprovalRequest:
        """The approval as it stands (SEC-010 if the gateway has none for ``trade_id``); with
        ``wait`` (seconds, at most 60), as soon as it is decided or as it stands then."""
        seconds = _bounded_wait(wait)
        data = await self._send(
            "GET", f"/api/hitl/{trade_id}", params=_wait_params(seconds), wait=seconds
        )
        return ApprovalRequest.model_validate(data["approval"])

    async def outcome(
        self, trade_id: UUID, *, max_wait: float | None = None, poll_interval: float = 1.0
    ) -> ApprovalRequest:
        """Wait until the approval is decided (ACCEPTED, or REJECTED with its reason: operator,
        timeout, slippage, Guardian) and return it. Without ``max_wait`` it waits until a little
        after the approval's own deadline, by which the gateway has always decided;
        TimeoutError after ``max_wait`` seconds otherwise.

        Each call to the gateway is held there until the decision (``?wait=``, a minute at
        most); ``poll_interval`` is the pause between calls only when a gateway answers before
        its wait without a decision (one that does not hold requests)."""
        started = time.monotonic()
        deadline: float | None = None if max_wait is None else started + max_wait
        # Without max_wait the first answer (at once) tells the deadline to wait for.
        wait = 0.0 if max_wait is None else min(max(max_wait, 0.0), MAX_WAIT_SECONDS)
        while True:
            asked = time.monotonic()
            approval = await self.approval(trade_id, wait=wait)
            if approval.status not in _UNDECIDED:
                return approval
            now = time.monotonic()
            if deadline is None:
                # The deadline is the gateway's; a generous margin covers clocks and a busy worker.
                left = (approval.expires_at - datetime.now(UTC)).total_seconds() + 60
                deadline = now + left
            left = deadline - now
            if left <= 0:
                raise TimeoutError(f"trade {trade_id} is still {approval.status.value}")
            if wait > 0 and now - asked < wait:
                # Answered early yet undecided: this gateway does not hold requests.
                await asyncio.sleep(min(poll_interval, left))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"trade {trade_id} is still {approval.status.value}")
            wait = min(left, MAX_WAIT_SECONDS)

    # --- the trade's life after acceptance ------------------------------------------------

    async def fill(self, trade_id: UUID, details: Mapping[str, Any] | None = None) -> Outcome:
        """Report the accepted trade filled (SEC-030 if it was not accepted)."""
        return await self._report(trade_id, "fill", details)

    async def close(self, trade_id: UUID, details: Mapping[str, Any] | None = None) -> Outcome:
        """Report the filled position closed."""
        return await self._report(trade_id, "close", details)

    async def settle(self, trade_id: UUID, details: Mapping[str, Any] | None = None) -> Outcome:
        """Report the closed trade settled; its approval's life ends there."""
        return await self._report(trade_id, "settle", details)

    async def _report(
        self, trade_id: UUID, step: str, details: Mapping[str, Any] | None
    ) -> Outcome:
        data = await self._send(
            "POST", f"/api/hitl/{trade_id}/{step}", json={"details": dict(details or {})}
        )
        return Outcome.model_validate(data)

    # --- transport --------------------------------------------------------------------------

    async def _recorded(self, trade_id: UUID) -> ApprovalRequest | None:
        """The approval a duplicate request points at; it may take a moment to be stored."""
        for attempt in range(self._attempts):
            try:
                return await self.approval(trade_id)
            except GatewayError as exc:
                if exc.error is not ErrorCode.NOT_FOUND:
                    raise
            await asyncio.sleep(self._backoff * 2**attempt)
        return None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        wait: float = 0,
    ) -> Any:
        """One call, retried while the failure is on the way rather than in the request; a call
        the gateway holds for ``wait`` seconds may take that much longer."""
        timeout = self._timeout + wait
        for attempt in range(self._attempts):
            last = attempt == self._attempts - 1
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, timeout=timeout
                )
            except httpx.TransportError as exc:
                if last:
                    raise GatewayError(
                        ErrorCode.SERVICE_UNAVAILABLE,
                        f"the gateway cannot be reached: {exc!r}",
                        code=ErrorCode.SERVICE_UNAVAILABLE.code,
                        http_status=503,
                    ) from exc
                await asyncio.sleep(self._backoff * 2**attempt)
                continue
            if response.is_success:
                return response.json()
            if response.status_code not in _RETRY_STATUSES or last:
                raise GatewayError.from_response(response)
            await asyncio.sleep(self._retry_delay(response, attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        retry_after = response.headers.get("Retry-After", "")
        if retry_after.isdigit():
            return min(float(retry_after), _MAX_RETRY_AFTER)
        return float(self._backoff * 2**attempt)


def _bounded_wait(wait: float) -> float:
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise ValueError(f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
    return wait


def _wait_params(wait: float) -> dict[str, str]:
    # Whole milliseconds: a short, exact spelling the gateway's 0-60 bound reads as given.
    return {"wait": f"{wait:.3f}"} if wait > 0 else {}


def _same_terms(existing: ApprovalRequest, proposal: TradeProposal) -> bool:
    """Whether the stored approval is this proposal (the correlation id may differ)."""
    fields = set(TradeProposal.model_fields) - {"correlation_id"}
    return all(getattr(existing, name) == getattr(proposal, name) for name in fields)
