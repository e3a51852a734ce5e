"""Error bodies and their OpenAPI declarations, built from the one catalogue in hitl.errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hitl.errors import ErrorCode


class ErrorBody(BaseModel):
    """Every error the API answers: a SEC code, a message and the request's correlation id."""

    error_code: str
    message: str
    correlation_id: str
    decision: dict[str, Any] | None = None
    """The standing decision, when the error is about one (already decided, expired, slippage)."""


def responses(*errors: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the given errors, grouped by HTTP status."""
    by_status: dict[int, list[ErrorCode]] = {}
    for error in (
        ErrorCode.INVALID_INPUT,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.SERVICE_UNAVAILABLE,
        ErrorCode.RATE_LIMITED,
        *errors,
    ):
        by_status.setdefault(error.http_status, []).append(error)
    return {
        status: {
            "model": ErrorBody,
            "description": "; ".join(f"{e.code}: {e.message}" for e in dict.fromkeys(codes)),
        }
        for status, codes in sorted(by_status.items())
    }
