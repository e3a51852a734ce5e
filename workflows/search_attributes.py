"""What operators see of an approval in the Temporal UI: its search attributes, summary and details.

Search attributes are the approval's columns and filters (``HitlStatus = 'ACCEPTED' AND
HitlInstrument = 'EUR/USD' AND HitlDecidedBy = 'alice'``). They are set at start by the client and
upserted by the workflow at every change. They are encoded by the SDK's default converter, never
the payload codec, so the server can index them: they hold only the trade's public facts (status,
instrument, side, risk, deadline, who requested and decided), never the reasoning.

The summary and details are payloads like any other: encrypted by the codec, shown decoded by the
UI through the gateway's codec endpoint (``/codec``).

Each attribute must be registered with the server before use (an unregistered one is refused at
start, and makes an upsert fail its workflow task): ``make run`` passes :func:`dev_server_args` to
the dev server, compose registers them in its setup, and :func:`ensure_registered` adds any that
are missing before the first start of each client.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)
from temporalio.service import RPCError, RPCStatusCode

from hitl.messages import ReminderKind
from hitl.models import ApprovalRequest, TradeProposal

STATUS: Final = SearchAttributeKey.for_keyword("HitlStatus")
INSTRUMENT: Final = SearchAttributeKey.for_keyword("HitlInstrument")
SIDE: Final = SearchAttributeKey.for_keyword("HitlSide")
RISK_PCT: Final = SearchAttributeKey.for_float("HitlRiskPct")
EXPIRES_AT: Final = SearchAttributeKey.for_datetime("HitlExpiresAt")
DECIDED_BY: Final = SearchAttributeKey.for_keyword("HitlDecidedBy")
REQUESTED_BY: Final = SearchAttributeKey.for_keyword("HitlRequestedBy")

KEYS: Final[tuple[SearchAttributeKey[Any], ...]] = (
    STATUS,
    INSTRUMENT,
    SIDE,
    RISK_PCT,
    EXPIRES_AT,
    DECIDED_BY,
    REQUESTED_BY,
)
"""Every attribute the gateway uses (``start_local(search_attributes=KEYS)`` registers them)."""

REGISTERED: Final[dict[str, IndexedValueType.ValueType]] = {
    key.name: IndexedValueType.ValueType(key.indexed_value_type) for key in KEYS
}
"""Every attribute the gateway uses and its type, as the server must have it registered."""

_CLI_TYPES: Final = {
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
    IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE: "Double",
    IndexedValueType.INDEXED_VALUE_TYPE_DATETIME: "Datetime",
}


def cli_specs() -> list[str]:
    """``Name=Type`` for each attribute, as the ``temporal`` CLI names them."""
    return [f"{name}={_CLI_TYPES[kind]}" for name, kind in REGISTERED.items()]


def dev_server_args() -> list[str]:
    """The ``temporal server start-dev`` arguments registering every attribute."""
    args: list[str] = []
    for spec in cli_specs():
        args += ["--search-attribute", spec]
    return args


async def ensure_registered(client: Client) -> list[str]:
    """Register with ``client``'s namespace whichever attributes it lacks; the names added.

    Idempotent and cheap (one list call when nothing is missing). A server that does not let
    this client register (Temporal Cloud, an operator role it lacks) answers with an RPCError,
    which is raised: starts would be refused anyway, and the message says why.
    """
    namespace = client.namespace
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = set(listed.custom_attributes) | set(listed.system_attributes)
    except RPCError as exc:
        # The time-skipping test server does not list them; adding is still answered.
        if exc.status is not RPCStatusCode.UNIMPLEMENTED:
            raise
        known = set()
    missing = {name: kind for name, kind in REGISTERED.items() if name not in known}
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        # Another process registered them a moment ago.
        if exc.status is not RPCStatusCode.ALREADY_EXISTS:
            raise
    return sorted(missing)


def start_attributes(proposal: TradeProposal, *, requested_by: str) -> TypedSearchAttributes:
    """What a new approval is searchable by from its first instant (the workflow adds the
    deadline once it is set)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(STATUS, "AWAITING_APPROVAL"),
            SearchAttributePair(INSTRUMENT, proposal.instrument),
            SearchAttributePair(SIDE, proposal.side.value),
            SearchAttributePair(RISK_PCT, float(proposal.risk_pct)),
            SearchAttributePair(REQUESTED_BY, requested_by),
        ]
    )


def updates_for(
    approval: ApprovalRequest, *, requested_by: str
) -> Sequence[SearchAttributeUpdate[Any]]:
    """The attributes of ``approval`` as it stands, for ``upsert_search_attributes``."""
    updates: list[SearchAttributeUpdate[Any]] = [
        STATUS.value_set(approval.status.value),
        INSTRUMENT.value_set(approval.instrument),
        SIDE.value_set(approval.side.value),
        RISK_PCT.value_set(float(approval.risk_pct)),
        EXPIRES_AT.value_set(approval.expires_at),
        REQUESTED_BY.value_set(requested_by),
    ]
    if approval.decided_by is not None:
        updates.append(DECIDED_BY.value_set(approval.decided_by))
    return updates


# --- summaries and details (Temporal markdown) ---------------------------------------------

_MARKDOWN = set("\\`*_{}[]()<>#+-.!|~")


def as_text(text: str) -> str:
    """Text a bot or operator wrote, shown as typed in the UI's markdown: no live links,
    emphasis or HTML."""
    return "".join(f"\\{char}" if char in _MARKDOWN else char for char in text)


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%SZ")


def static_summary(proposal: TradeProposal, *, expires_at: datetime) -> str:
    """One line for the UI's list: ``SELL XAU/USD · risk 1.5 % · 2650.50 · expires 12:03:00Z``.

    ``expires_at`` is the starter's reckoning (its ``HITL_TIMEOUT_SECONDS`` from now); the
    workflow's own deadline is in ``HitlExpiresAt`` and the current details.
    """
    return (
        f"{proposal.side.value} {proposal.instrument} · risk {_number(proposal.risk_pct)} % · "
        f"{proposal.request_price} · expires {_clock(expires_at)}"
    )


def static_details(
    proposal: TradeProposal, *, requested_by: str, page_link: str | None = None
) -> str:
    """The request as the bot made it: reasoning, confidence, correlation id, the page's link."""
    lines = [
        f"**Reasoning:** {as_text(proposal.reasoning_summary)}",
        f"**Confidence:** {_number(proposal.confidence * 100)} %",
        f"**Requested by:** {as_text(requested_by)}",
        f"**Correlation id:** `{proposal.correlation_id}`",
        f"**Trade:** `{proposal.trade_id}`",
    ]
    if page_link:
        lines.append(f"[Open on the operators' page]({page_link})")
    return "\n\n".join(lines)


def current_details(approval: ApprovalRequest, *, notices: Sequence[ReminderKind] = ()) -> str:
    """The approval's state now, for the UI's "current details"."""
    status = f"**{approval.status.value}**"
    if approval.decided_by is not None:
        channel = approval.decision_channel.value if approval.decision_channel else "-"
        reason = approval.decision_reason.value if approval.decision_reason else "-"
        at = _clock(approval.decided_at) if approval.decided_at else "-"
        status += f" · {reason} · by {as_text(approval.decided_by)} via {channel} at {at}"
    else:
        status += f" · expires {_clock(approval.expires_at)}"
    lines = [status]
    if approval.comment:
        lines.append(f"**Comment:** {as_text(approval.comment)}")
    if notices and approval.decided_by is None:
        lines.append("Operators " + ", then ".join(_NOTICE_TEXT[kind] for kind in notices))
    return "\n\n".join(lines)


_NOTICE_TEXT: Final = {ReminderKind.REMINDER: "reminded", ReminderKind.ESCALATION: "escalated"}
