"""What the gateway's Discord messages look like: embeds, the decision buttons and their custom
ids, and the texts the bot answers a click with.

Shared by the notifier (which posts messages) and the bot (which edits them after a click), so
that a message looks the same whichever process drew it. Nothing here talks to Discord.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final
from uuid import UUID

import discord

from hitl.decisions import FOUR_EYES
from hitl.errors import ErrorCode, HITLError
from hitl.messages import GuardianCascadeSummary, ReminderKind, SecurityAlertInput
from hitl.models import ApprovalRequest, Decision, DecisionReason, TradeStatus
from hitl.preview import SlippagePreview, preview_text

CUSTOM_ID_TEMPLATE: Final = (
    r"hitl:(?P<action>approve|reject):"
    r"(?P<trade_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
"""What a decision button's custom id looks like: ``hitl:approve:<trade_id>``."""


def decision_custom_id(decision: Decision, trade_id: UUID) -> str:
    """The custom id of the button that makes ``decision`` on ``trade_id``'s approval."""
    return f"hitl:{decision.value.lower()}:{trade_id}"


# --- the parts ---------------------------------------------------------------------------------


def as_text(text: str) -> str:
    """Text someone else wrote, as Discord must show it: as typed, never as markup.

    A bot's reasoning (or an operator's comment) could otherwise carry a live masked link
    (``[click](http://…)``), a code fence, emphasis that hides text, or a mention; every markdown
    character is escaped, masked links included, and mentions are broken with a zero-width
    space. (Mentions could not ping anyway: every message is sent with mentions disallowed.)
    """
    escaped = discord.utils.escape_markdown(text, ignore_links=False)
    return discord.utils.escape_mentions(escaped)


NO_MENTIONS: Final = discord.AllowedMentions.none()
"""What every message the gateway sends allows to ping: nobody (see the clients' set-up)."""


def escalation_mentions(role_id: int | None) -> discord.AllowedMentions:
    """What an escalation may ping: exactly the escalation role (nobody when none is set)."""
    if role_id is None:
        return NO_MENTIONS
    return discord.AllowedMentions(
        everyone=False, users=False, roles=[discord.Object(id=role_id)], replied_user=False
    )


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _stamp(moment: datetime, style: str) -> str:
    """Discord's timestamp markup: every reader sees it in their own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


def _title(approval: ApprovalRequest) -> str:
    return f"{approval.side.value} {approval.instrument}"


def _add_trade_fields(embed: discord.Embed, approval: ApprovalRequest) -> None:
    embed.add_field(name="Instrument", value=approval.instrument)
    embed.add_field(name="Side", value=approval.side.value)
    embed.add_field(name="Risk", value=f"{_number(approval.risk_pct)}%")
    embed.add_field(name="Confidence", value=f"{_number(approval.confidence * 100)}%")
    embed.add_field(name="Request price", value=_number(approval.request_price))
    embed.add_field(name="Trade", value=f"`{approval.trade_id}`", inline=False)


def _why(approval: ApprovalRequest) -> str:
    reason = approval.decision_reason.value if approval.decision_reason else "-"
    return f"{reason}: {as_text(approval.comment)}" if approval.comment else reason


# --- the notifier's messages -------------------------------------------------------------------


def approval_text(approval: ApprovalRequest) -> str:
    """The line of text above the request's embed: what Discord's push notification shows.
    Once an approval that needs two operators (four eyes) has its first, the message is edited
    to this line with ``1 of 2 approvals`` and who gave it; embed and buttons stay."""
    text = f"Approval needed: {_title(approval)}, expires {_stamp(approval.expires_at, 'R')}"
    if approval.approvers and not approval.is_decided:
        text += f" · {approvals_progress(approval)}; a second, different operator must approve"
    return text


def approvals_progress(approval: ApprovalRequest) -> str:
    """``1 of 2 approvals (alice)``: an approval that needs two operators, so far."""
    names = ", ".join(as_text(name) for name in approval.approvers)
    return f"{len(approval.approvers)} of {FOUR_EYES} approvals ({names})"


MARKET_FIELD: Final = "Market"
"""The approval embed's field holding the slippage preview."""


def approval_embed(
    approval: ApprovalRequest,
    *,
    link: str,
    temporal_link: str | None = None,
    preview: SlippagePreview | None = None,
) -> discord.Embed:
    """The request: the trade, a live countdown, the bot's reasoning and the deep link (and,
    when ``HITL_TEMPORAL_UI_URL`` is set, the approval's workflow in the Temporal UI), with the
    market as it stood when drawn (``preview``)."""
    embed = discord.Embed(
        title=f"Approval needed: {_title(approval)}",
        url=link,
        description=as_text(approval.reasoning_summary),
        colour=discord.Colour.orange(),
        timestamp=approval.requested_at,
    )
    _add_trade_fields(embed, approval)
    if preview is not None:
        embed.add_field(name=MARKET_FIELD, value=preview_field(preview))
    embed.add_field(name="Expires", value=_stamp(approval.expires_at, "R"))
    embed.add_field(name="Review", value=f"[Open in the HITL Hub]({link}) (one-time link)")
    if temporal_link:
        embed.add_field(name="Workflow", value=f"[Open in the Temporal UI]({temporal_link})")
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def preview_field(preview: SlippagePreview, *, at_posting: bool = True) -> str:
    """``at posting: now 1.1619, +0.06 %`` (refreshed by the bot: ``now 1.1619, +0.06 %``),
    marked when approving would already be refused (``⚠️ … — exceeds the 0.5 % limit``)."""
    text = preview_text(preview)
    if at_posting:
        text = f"at posting: {text}"
    return f"⚠️ {text}" if preview.exceeds else text


def reminder_text(approval: ApprovalRequest, kind: ReminderKind, *, role_id: int | None) -> str:
    """The reminder (or escalation, mentioning the escalation role) of an undecided approval."""
    expires = _stamp(approval.expires_at, "R")
    if kind is ReminderKind.REMINDER:
        return f"Reminder: {_title(approval)} still awaits a decision; it expires {expires}."
    mention = f"<@&{role_id}> " if role_id is not None else ""
    return f"{mention}Escalation: {_title(approval)} is still undecided and expires {expires}."


def outcome_embed(approval: ApprovalRequest) -> discord.Embed:
    """A decided approval: who decided, when and why, in place of the request."""
    expired = approval.decision_reason is DecisionReason.HITL_TIMEOUT
    accepted = approval.status is not TradeStatus.REJECTED
    heading = "EXPIRED" if expired else approval.status.value
    embed = discord.Embed(
        title=f"{heading}: {_title(approval)}",
        description=as_text(approval.reasoning_summary),
        colour=discord.Colour.green() if accepted else discord.Colour.red(),
        timestamp=approval.decided_at,
    )
    _add_trade_fields(embed, approval)
    channel = approval.decision_channel.value if approval.decision_channel else "-"
    embed.add_field(name="Decided by", value=f"{approval.decided_by or '-'} via {channel}")
    if approval.approvers:
        embed.add_field(name="Approvals", value=approvals_progress(approval))
    if approval.decided_at is not None:
        embed.add_field(name="Decided", value=_stamp(approval.decided_at, "f"))
    embed.add_field(name="Why", value=_why(approval), inline=False)
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def expiry_notice_embed(approval: ApprovalRequest) -> discord.Embed:
    """The timeout notice: nobody decided in time, so the trade was rejected."""
    embed = discord.Embed(
        title=f"Approval expired: {_title(approval)}",
        description="No operator decided before the deadline; the trade was rejected.",
        colour=discord.Colour.dark_grey(),
        timestamp=approval.decided_at or approval.expires_at,
    )
    _add_trade_fields(embed, approval)
    embed.add_field(name="Requested", value=_stamp(approval.requested_at, "f"))
    embed.add_field(name="Expired", value=_stamp(approval.expires_at, "f"))
    embed.add_field(name="Reason", value=_why(approval), inline=False)
    if approval.approvers:
        embed.add_field(name="Approvals", value=approvals_progress(approval))
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def security_alert_embed(alert: SecurityAlertInput) -> discord.Embed:
    """A security alert (an integrity failure)."""
    embed = discord.Embed(
        title=f"Security alert {alert.error_code}",
        description=alert.message,
        colour=discord.Colour.red(),
        timestamp=alert.detected_at,
    )
    embed.add_field(name="Trade", value=f"`{alert.trade_id}`", inline=False)
    embed.add_field(name="Detected", value=_stamp(alert.detected_at, "f"))
    embed.set_footer(text=f"correlation {alert.correlation_id}")
    return embed


def cascade_embed(summary: GuardianCascadeSummary) -> discord.Embed:
    """The one summary of a Guardian lock and the approvals it rejected."""
    embed = discord.Embed(
        title="Guardian lock: trading halted",
        description=as_text(summary.reason),
        colour=discord.Colour.dark_red(),
        timestamp=summary.locked_at,
    )
    embed.add_field(name="Locked by", value=summary.locked_by)
    embed.add_field(name="Locked", value=_stamp(summary.locked_at, "f"))
    embed.add_field(name="Pending approvals rejected", value=str(summary.rejected))
    embed.set_footer(text=f"correlation {summary.correlation_id}")
    return embed


def decision_view(trade_id: UUID) -> discord.ui.View:
    """The APPROVE and REJECT buttons of ``trade_id``'s approval message."""
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(
            label="APPROVE",
            style=discord.ButtonStyle.success,
            custom_id=decision_custom_id(Decision.APPROVE, trade_id),
        )
    )
    view.add_item(
        discord.ui.Button(
            label="REJECT",
            style=discord.ButtonStyle.danger,
            custom_id=decision_custom_id(Decision.REJECT, trade_id),
        )
    )
    # The worker never receives clicks (the bot process does): a stopped view is sent without
    # being kept in this client's view store for ever.
    view.stop()
    return view


# --- the bot's answers to a click (private to the clicker) -------------------------------------


def decided_text(approval: ApprovalRequest) -> str:
    """The clicker's decision went through: the approval's new status."""
    subject = _title(approval)
    if approval.status is TradeStatus.REJECTED:
        return f"Rejected: {subject} is REJECTED."
    if not approval.is_decided:
        return (
            f"Approved ({approvals_progress(approval)}): {subject} still awaits a second "
            "approval from a different operator."
        )
    return f"Approved: {subject} is {approval.status.value}."


def not_decided_text(exc: HITLError) -> str:
    """Why the clicker's decision was not taken, from the workflow's refusal."""
    approval: ApprovalRequest | None = exc.details.get("approval")
    code = exc.error.code
    if exc.error is ErrorCode.SLIPPAGE_EXCEEDED:
        return f"Not accepted: {exc.message}. The trade is REJECTED ({code})."
    if exc.error is ErrorCode.ALREADY_DECIDED and approval is not None:
        reason = approval.decision_reason.value if approval.decision_reason else "-"
        return (
            f"Already decided by {approval.decided_by}: {approval.status.value} "
            f"({reason}) ({code})."
        )
    if exc.error is ErrorCode.SAME_APPROVER:
        return f"You already approved this; a second, different operator must approve ({code})."
    if exc.error is ErrorCode.EXPIRED:
        return f"This approval expired before a decision; the trade was rejected ({code})."
    if exc.error is ErrorCode.NOT_FOUND:
        return f"No approval exists for this trade ({code})."
    return f"Nothing was decided: {exc.message} ({code})."


def no_answer_text() -> str:
    """The approval service did not answer within the decision's deadline."""
    code = ErrorCode.SERVICE_UNAVAILABLE.code
    return f"No answer from the approval service in time ({code}); check the approval."


def refused_text() -> str:
    """The clicker may not decide approvals (and the attempt is audited)."""
    code = ErrorCode.UNAUTHORISED_OPERATOR.code
    return f"You may not decide approvals ({code}). This attempt has been recorded."


def apology_text(reference: str) -> str:
    """Something broke while handling the click; ``reference`` finds it in the logs."""
    return (
        f"Something went wrong ({ErrorCode.INTERNAL.code}, reference {reference}); "
        "check the approval in the HITL Hub before trying again."
    )
