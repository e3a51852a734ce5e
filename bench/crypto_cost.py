"""``python -m bench.crypto_cost``: the CPU that signing and encryption cost per approval.

Issue 14 made the gateway sign every command (``hitl/signing.py``, verified by the worker's
:class:`~activities.policy.WorkerTrust`) and encrypt every Temporal payload with AES-GCM
(``workflows/codec.py``). This measures both with the real code and a real keyring
(``hitl.keys.new_keyring``), in one process, with ``time.process_time_ns``: CPU time, which other
processes on a busy machine barely disturb in loops that never wait.

Recording one approval on a Temporal server to count its payloads is too slow here, so the
payloads of one approval (request, approve, post-trade snapshot, as ``python -m bench`` drives
it) are built from the real message models through ``pydantic_data_converter``, and each is
counted as often as it crosses the codec: encoded once by its sender, decoded once by its reader.
Not counted: the decoding again of a workflow's history when a worker replays it after a cache
miss, queries, and the payloads of the workflow's completion (the approval waits for its trade's
lifecycle beyond what is measured).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.policy import WorkerTrust
from hitl.keys import KeyPurpose, new_keyring
from hitl.market import MarketQuote
from hitl.messages import (
    AdmitApprovalInput,
    ApprovalAdmission,
    ApprovalPolicy,
    ApprovalWorkflowInput,
    DecisionCommand,
    DecisionRecorded,
    FetchQuoteInput,
    NotifyInput,
    PostTradeSnapshot,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
    workflow_id_for,
)
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)
from hitl.signing import CommandAction, CommandSigner, SeenProofs
from workflows.codec import EncryptionCodec
from workflows.search_attributes import static_details, static_summary

BATCHES = 5
"""Batches per figure; the figure is their median."""
REPETITIONS = 2000
"""Operations per batch by default: a few ms of CPU each, well above the clock's resolution."""
ROWS = 4 + 19
"""Rows of the table: four for signing, nineteen for the payloads of one approval."""


@dataclass(frozen=True, slots=True)
class Row:
    """One figure of the table: what, its size, how often per approval, and its CPU cost."""

    what: str
    size: str
    """Bytes: the payload as the converter makes it → as the codec stores it ("" for signing)."""
    per_approval: str
    """How often it happens per approval, and where."""
    ns_each: float
    """Median CPU ns of one occurrence (for a payload: one encode plus one decode when both)."""
    ns_per_approval: float


@dataclass(frozen=True, slots=True)
class CryptoCost:
    """The table and its total."""

    rows: list[Row]

    @property
    def ms_per_approval(self) -> float:
        """CPU ms per approval of all rows together."""
        return sum(row.ns_per_approval for row in self.rows) / 1e6


@dataclass(frozen=True, slots=True)
class _Crossing:
    what: str
    values: Sequence[object]
    """One payload per value (several only for the summaries, which all cross alike)."""
    encodes: int
    decodes: int
    where: str


def cpu_ns(operation: Callable[[], object], *, repetitions: int, batches: int = BATCHES) -> float:
    """Median over ``batches`` of the CPU ns one call of ``operation`` takes."""
    per_call: list[float] = []
    for _ in range(batches):
        started = time.process_time_ns()
        for _ in range(repetitions):
            operation()
        per_call.append((time.process_time_ns() - started) / repetitions)
    return statistics.median(per_call)


def _to_payload(value: object) -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([value])[0]


def approval_commands(now: datetime) -> tuple[ApprovalWorkflowInput, DecisionCommand]:
    """The start and the decision command of one approval, unsigned."""
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.82"),
        request_price=Decimal("1.08515"),
        reasoning_summary="Breakout above resistance with rising volume.",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )
    start = ApprovalWorkflowInput(proposal=proposal, requested_by="trading-bot")
    command = DecisionCommand(
        operator_id="alice",
        channel=DecisionChannel.API,
        comment="bench",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
        not_after=now + timedelta(seconds=10),
    )
    return start, command


def approval_crossings(
    now: datetime, start: ApprovalWorkflowInput, command: DecisionCommand
) -> list[_Crossing]:
    """Every payload of one approval that crosses the codec, ``start`` and ``command`` signed."""
    proposal = start.proposal
    workflow_id = workflow_id_for(proposal.trade_id)
    policy = ApprovalPolicy(allowed_operators=frozenset({"alice", "bob"}))
    draft = ApprovalRequest.from_proposal(
        proposal, requested_at=now, expires_at=now + timedelta(seconds=300)
    )
    pending = draft.model_copy(update={"row_hash": "a" * 64})
    decided = pending.model_copy(
        update={
            "status": TradeStatus.ACCEPTED,
            "decided_at": now,
            "decided_by": "alice",
            "decision_channel": DecisionChannel.API,
            "decision_reason": DecisionReason.OPERATOR_APPROVED,
            "comment": "bench",
        }
    )
    stored = decided.model_copy(update={"row_hash": "b" * 64})
    quote = MarketQuote(
        instrument="EUR/USD",
        bid=Decimal("1.08510"),
        ask=Decimal("1.08520"),
        as_of=now,
        response_latency_ms=Decimal("0.41"),
    )
    market = {
        "bid": "1.08510",
        "ask": "1.08520",
        "current_price": "1.08520",
        "deviation_pct": "0.0046",
        "max_slippage_pct": "0.5",
    }
    snapshot = PostTradeSnapshot(
        trade_id=proposal.trade_id,
        bid=quote.bid,
        ask=quote.ask,
        spread=quote.ask - quote.bid,
        mid_price=Decimal("1.08515"),
        response_latency_ms=quote.response_latency_ms,
        price_deviation_pct=Decimal("0.0046"),
        correlation_id=proposal.correlation_id,
        created_at=now,
    )
    fetch = FetchQuoteInput(instrument="EUR/USD", correlation_id=command.correlation_id)
    summaries = [
        "record the request",
        "approval requested",
        "deadline",
        "quote EUR/USD",
        "record ACCEPTED (OPERATOR_APPROVED)",
        "approval decided",
        "quote EUR/USD",
        "record the post-trade snapshot",
    ]
    crossings = [
        _Crossing("start: ApprovalWorkflowInput (signed)", [start], 1, 1, "API → worker"),
        _Crossing(
            "start: static summary and details",
            [
                static_summary(proposal, expires_at=draft.expires_at),
                static_details(proposal, requested_by="trading-bot"),
            ],
            1,
            0,
            "API; read by the UI only",
        ),
        _Crossing(
            "admission: AdmitApprovalInput",
            [AdmitApprovalInput(workflow_id=workflow_id, start=start)],
            1,
            1,
            "workflow → local activity",
        ),
        _Crossing(
            "admission: ApprovalAdmission",
            [ApprovalAdmission(policy=policy)],
            1,
            1,
            "local activity → workflow",
        ),
        _Crossing(
            "record request: RecordRequestInput",
            [RecordRequestInput(approval=draft, requested_by="trading-bot")],
            1,
            1,
            "workflow → local activity",
        ),
        _Crossing("record request: ApprovalRequest", [pending], 1, 1, "local activity → workflow"),
        _Crossing("`recorded` update: ApprovalRequest", [pending], 1, 1, "worker → API"),
        _Crossing(
            "notify requested: NotifyInput",
            [NotifyInput(approval=pending, event="notify_approval_requested")],
            1,
            1,
            "workflow → activity",
        ),
        _Crossing("notify results: None", [None, None], 1, 1, "activity → workflow, 2 notices"),
        _Crossing("approve update: DecisionCommand (signed)", [command], 1, 1, "API → worker"),
        _Crossing(
            "quote: FetchQuoteInput",
            [fetch, fetch],
            1,
            1,
            "workflow → local activity, decision and snapshot",
        ),
        _Crossing(
            "quote: MarketQuote",
            [quote, quote],
            1,
            1,
            "local activity → workflow, decision and snapshot",
        ),
        _Crossing(
            "record decision: RecordDecisionInput",
            [
                RecordDecisionInput(
                    expected=pending,
                    decided=decided,
                    event_type="hitl.decided",
                    audit_payload={
                        "market": market,
                        "request_correlation_id": command.correlation_id,
                    },
                )
            ],
            1,
            1,
            "workflow → local activity",
        ),
        _Crossing(
            "record decision: DecisionRecorded",
            [DecisionRecorded(approval=stored)],
            1,
            1,
            "local activity → workflow",
        ),
        _Crossing("approve update: ApprovalRequest", [stored], 1, 1, "worker → API"),
        _Crossing(
            "notify decided: NotifyInput",
            [NotifyInput(approval=stored, event="notify_approval_decided")],
            1,
            1,
            "workflow → activity",
        ),
        _Crossing(
            "snapshot: RecordSnapshotInput",
            [RecordSnapshotInput(approval=stored, quote=quote)],
            1,
            1,
            "workflow → local activity",
        ),
        _Crossing("snapshot: PostTradeSnapshot", [snapshot], 1, 1, "local activity → workflow"),
        _Crossing(
            "activity and timer summaries (8 strings)",
            summaries,
            1,
            0,
            "worker; read by the UI only",
        ),
    ]
    return crossings


def measure(*, repetitions: int = REPETITIONS, batches: int = BATCHES) -> CryptoCost:
    """Measure every row with ``repetitions`` operations per batch, median of ``batches``."""
    now = datetime.now(UTC)
    start, command = approval_commands(now)
    commands = new_keyring(KeyPurpose.COMMANDS, now=now)
    signer = CommandSigner(lambda: commands)
    trust = WorkerTrust(
        keyring=lambda: commands,
        policy=lambda: ApprovalPolicy(allowed_operators=frozenset({"alice"})),
    )
    workflow_id = workflow_id_for(start.proposal.trade_id)
    rows = [
        *_signing_rows(
            "start",
            start,
            CommandAction.START,
            start.requested_by,
            signer=signer,
            trust=trust,
            workflow_id=workflow_id,
            repetitions=repetitions,
            batches=batches,
        ),
        *_signing_rows(
            "decision",
            command,
            CommandAction.APPROVE,
            command.operator_id,
            signer=signer,
            trust=trust,
            workflow_id=workflow_id,
            repetitions=repetitions,
            batches=batches,
        ),
    ]
    signed_start = signer.sign(start, workflow_id=workflow_id, action=CommandAction.START)
    signed_command = signer.sign(command, workflow_id=workflow_id, action=CommandAction.APPROVE)
    codec = EncryptionCodec(new_keyring(KeyPurpose.PAYLOADS, now=now))
    for crossing in approval_crossings(now, signed_start, signed_command):
        rows.append(_codec_row(codec, crossing, repetitions=repetitions, batches=batches))
    return CryptoCost(rows)


def _signing_rows(
    what: str,
    command: ApprovalWorkflowInput | DecisionCommand,
    action: CommandAction,
    claimed_by: str,
    *,
    signer: CommandSigner,
    trust: WorkerTrust,
    workflow_id: str,
    repetitions: int,
    batches: int,
) -> list[Row]:
    """Signing ``command`` in the API, and verifying it as the worker does (with a fresh
    replay memory, as a new approval's workflow has)."""
    signed = signer.sign(command, workflow_id=workflow_id, action=action)

    def sign() -> object:
        return signer.sign(command, workflow_id=workflow_id, action=action)

    def verify() -> object:
        return trust.refusal(
            signed.proof,
            workflow_id=workflow_id,
            action=action,
            payload=signed,
            claimed_by=claimed_by,
            seen=SeenProofs(),
        )

    if verify() is not None:
        raise AssertionError("the real verification refused the real signature")
    sign_ns = cpu_ns(sign, repetitions=repetitions, batches=batches)
    verify_ns = cpu_ns(verify, repetitions=repetitions, batches=batches)
    return [
        Row(f"sign the {what} (CommandSigner.sign)", "", "1 (API)", sign_ns, sign_ns),
        Row(f"verify the {what} (WorkerTrust.refusal)", "", "1 (worker)", verify_ns, verify_ns),
    ]


def _codec_row(
    codec: EncryptionCodec, crossing: _Crossing, *, repetitions: int, batches: int
) -> Row:
    """The codec's cost for one kind of payload: encrypt and decrypt each value, weighted by
    how often it is encoded and decoded per approval.

    The codec's ``encode``/``decode`` are coroutines that only loop over ``encrypt``/``decrypt``;
    those are timed directly so that no event loop's cost is counted as the codec's.
    """
    plain = [_to_payload(value) for value in crossing.values]
    sealed = [codec.encrypt(payload) for payload in plain]
    for original, stored in zip(plain, sealed, strict=True):
        if codec.decrypt(stored) != original:
            raise AssertionError(f"{crossing.what}: the codec did not give the payload back")
    total = 0.0
    for original, stored in zip(plain, sealed, strict=True):
        if crossing.encodes:
            total += crossing.encodes * cpu_ns(
                functools.partial(codec.encrypt, original), repetitions=repetitions, batches=batches
            )
        if crossing.decodes:
            total += crossing.decodes * cpu_ns(
                functools.partial(codec.decrypt, stored), repetitions=repetitions, batches=batches
            )
    plain_sizes = sorted({p.ByteSize() for p in plain})
    sealed_sizes = sorted({p.ByteSize() for p in sealed})
    size = f"{_span(plain_sizes)} → {_span(sealed_sizes)}"
    count = len(plain)
    times = f"{count} x " if count > 1 else ""
    often = f"{times}{crossing.encodes} enc + {crossing.decodes} dec ({crossing.where})"
    return Row(crossing.what, size, often, total / count, total)


def _span(sizes: list[int]) -> str:
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def render(cost: CryptoCost, *, repetitions: int, batches: int) -> str:
    """The table in Markdown, then the total per approval."""
    lines = [
        f"CPU per operation: median of {batches} batches of {repetitions} "
        "(time.process_time_ns), one process.",
        "",
        "| what | bytes (plain → stored) | per approval | CPU µs each | CPU µs per approval |",
        "|---|---|---|---|---|",
    ]
    for row in cost.rows:
        lines.append(
            f"| {row.what} | {row.size} | {row.per_approval} "
            f"| {row.ns_each / 1e3:,.1f} | {row.ns_per_approval / 1e3:,.1f} |"
        )
    signing = sum(row.ns_per_approval for row in cost.rows[:4]) / 1e6
    lines += [
        "",
        f"signing and verifying: {signing:.3f} ms; payload codec: "
        f"{cost.ms_per_approval - signing:.3f} ms; total: {cost.ms_per_approval:.3f} ms "
        "of CPU per approval",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.crypto_cost", description=__doc__)
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    parser.add_argument("--batches", type=int, default=BATCHES)
    args = parser.parse_args(argv)
    cost = measure(repetitions=args.repetitions, batches=args.batches)
    print(render(cost, repetitions=args.repetitions, batches=args.batches))


if __name__ == "__main__":
    main()
