"""The one catalogue of error codes (SEC-xxx) the gateway emits.

Handlers, OpenAPI ``responses=`` declarations, workflow failures and tests all read the codes and
messages from here; no other module spells a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One error code: its identifier, the HTTP status it maps to and a default message."""

    code: str
    http_status: int
    message: str


class ErrorCode(Enum):
    """Every error the gateway can report, with its HTTP status and default message."""

    UNAUTHENTICATED = ErrorSpec("SEC-001", 401, "Missing or invalid bearer token.")
    RATE_LIMITED = ErrorSpec("SEC-002", 429, "Too many requests; retry later.")
    INVALID_INPUT = ErrorSpec("SEC-003", 422, "The request is invalid.")
    NO_SUCH_ROUTE = ErrorSpec("SEC-004", 404, "No such endpoint.")
    METHOD_NOT_ALLOWED = ErrorSpec("SEC-005", 405, "Method not allowed on this endpoint.")
    PAYLOAD_TOO_LARGE = ErrorSpec("SEC-006", 413, "The request body is too large.")
    NOT_FOUND = ErrorSpec("SEC-010", 404, "No approval exists for this trade.")
    DUPLICATE_REQUEST = ErrorSpec("SEC-011", 409, "An approval already exists for this trade.")
    ALREADY_DECIDED = ErrorSpec("SEC-012", 409, "The approval has already been decided.")
    EXPIRED = ErrorSpec("SEC-013", 410, "The approval expired before a decision.")
    SAME_APPROVER = ErrorSpec(
        "SEC-014",
        409,
        "This operator has already approved; above the four-eyes risk level a second, "
        "different operator must approve.",
    )
    GUARDIAN_LOCKED = ErrorSpec("SEC-020", 423, "The Guardian is locked; trading is halted.")
    INVALID_TRANSITION = ErrorSpec("SEC-030", 409, "Invalid trade lifecycle transition.")
    CONFIGURATION = ErrorSpec("SEC-040", 500, "Invalid or missing configuration.")
    SLIPPAGE_EXCEEDED = ErrorSpec("SEC-050", 409, "Price moved beyond the slippage limit.")
    MARKET_DATA_UNAVAILABLE = ErrorSpec("SEC-060", 503, "Market data is unavailable.")
    SERVICE_UNAVAILABLE = ErrorSpec("SEC-070", 503, "The approval service is unavailable.")
    INTEGRITY_FAILURE = ErrorSpec("SEC-080", 409, "Stored record failed its integrity check.")
    UNAUTHORISED_OPERATOR = ErrorSpec("SEC-090", 403, "This principal may not take this action.")
    INVALID_DEEP_LINK = ErrorSpec("SEC-091", 403, "The link is invalid, expired or already used.")
    COMMAND_NOT_SIGNED = ErrorSpec("SEC-092", 403, "The command was not signed by the gateway.")
    COMMAND_EXPIRED = ErrorSpec("SEC-093", 403, "The command's proof expired or was already used.")
    INTERNAL = ErrorSpec("SEC-099", 500, "Internal error; it has been logged.")

    @property
    def code(self) -> str:
        """The SEC-xxx identifier."""
        return self.value.code

    @property
    def http_status(self) -> int:
        """The HTTP status the API answers with."""
        return self.value.http_status

    @property
    def message(self) -> str:
        """The default human-readable message."""
        return self.value.message

    @classmethod
    def from_code(cls, code: str) -> ErrorCode:
        """Look an error up by its SEC-xxx identifier."""
        for member in cls:
            if member.code == code:
                return member
        raise KeyError(code)


class HITLError(Exception):
    """A failure that carries one of the catalogue's codes and optional structured details."""

    def __init__(self, error: ErrorCode, message: str | None = None, **details: Any) -> None:
        self.error = error
        self.message = message or error.message
        self.details = details
        super().__init__(f"{error.code}: {self.message}")


class ConfigurationError(HITLError):
    """Raised at start-up when a setting is missing or invalid (SEC-040)."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(
            ErrorCode.CONFIGURATION,
            f"{variable} {problem}",
            variable=variable,
        )
        self.variable = variable
