"""The worker's trust: the commands keyring it verifies with and the approval policy it applies.

Neither comes from whoever talks to Temporal. A workflow asks this module two things:

- at start, through the ``admit_approval`` local activity (its answer is recorded in history, so
  replay never reads the keyring or the settings again): is this start signed by the gateway,
  and which policy applies (HITL on/off, timeout, slippage limit, operators);
- in an Update validator (validators do not run on replay, so reading the worker's *current*
  keyring and allow-list there is replay-safe): is this command signed, and may this operator
  decide now.

A refusal is counted in ``hitl_commands_refused_total`` and logged once with the principal the
command claims to come from.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel
from temporalio import activity

from hitl import metrics
from hitl.errors import ErrorCode
from hitl.keys import KeyPurpose, Keyring, KeyringFile
from hitl.messages import (
    AdmitApprovalInput,
    ApprovalAdmission,
    ApprovalPolicy,
    ApprovalWorkflowInput,
)
from hitl.settings import Settings
from hitl.signing import CommandAction, CommandProof, Refusal, SeenProofs, verify_command

log = structlog.get_logger(__name__)


class WorkerTrust:
    """What one worker trusts: its keyring (read again when rotated) and its policy."""

    def __init__(
        self,
        *,
        keyring: Callable[[], Keyring],
        policy: Callable[[], ApprovalPolicy],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keyring = keyring
        self._policy = policy
        # The worker's wall clock, not workflow time: proofs are signed at wall-clock time, and
        # validators and the admission (recorded in history) never run on replay.
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerTrust:
        """The worker's trust from its settings: the commands keyring in the keys folder
        (SEC-040 when missing or malformed) and ``HITL_*``'s policy."""
        keyring = KeyringFile(settings.keys_dir, KeyPurpose.COMMANDS)
        return cls(keyring=keyring.current, policy=settings.policy)

    def policy(self) -> ApprovalPolicy:
        """The approval policy this worker applies now."""
        return self._policy()

    def may_decide(self, operator_id: str) -> bool:
        """Whether ``operator_id`` is on the worker's allow-list now."""
        return operator_id in self._policy().allowed_operators

    def refusal(
        self,
        proof: CommandProof | None,
        *,
        workflow_id: str,
        action: CommandAction,
        payload: BaseModel,
        claimed_by: str,
        seen: SeenProofs | None = None,
        at: datetime | None = None,
    ) -> ErrorCode | None:
        """None when the command is the gateway's (and new to ``seen``); else the SEC code that
        refuses it, counted and logged. Its proof's window is checked at ``at`` (default: the
        worker's clock now)."""
        reason = verify_command(
            self._keyring(),
            proof,
            workflow_id=workflow_id,
            action=action,
            payload=payload,
            now=at or self._clock(),
        )
        if reason is None and seen is not None and proof in seen:
            reason = Refusal.REPLAYED
        if reason is None:
            return None
        metrics.COMMANDS_REFUSED.labels(action=action.value, reason=reason.value).inc()
        log.warning(
            "command refused",
            correlation_id=getattr(payload, "correlation_id", "-"),
            actor=claimed_by,
            action=action.value,
            result="refused",
            error_code=reason.error.code,
            reason=reason.value,
            workflow_id=workflow_id,
            key_id=proof.key_id if proof is not None else None,
        )
        return reason.error

    def admit(
        self, start: ApprovalWorkflowInput, *, workflow_id: str, at: datetime | None = None
    ) -> ApprovalAdmission:
        """Whether ``start`` is the gateway's (its proof's window checked at ``at``, default
        now), and the policy it runs under: this worker's, whatever the input carried."""
        refused = self.refusal(
            start.proof,
            workflow_id=workflow_id,
            action=CommandAction.START,
            payload=start,
            claimed_by=start.requested_by,
            at=at,
        )
        if refused is not None:
            return ApprovalAdmission(error_code=refused.code)
        policy = self.policy()
        if not policy.enabled:
            log.warning(
                "HITL disabled by the worker's configuration",
                correlation_id=start.proposal.correlation_id,
                actor="worker",
                action="approval.admitted",
                result="HITL_DISABLED",
                trade_id=str(start.proposal.trade_id),
            )
        return ApprovalAdmission(policy=policy)


_TRUST: dict[str, WorkerTrust] = {}


def install_trust(task_queue: str, trust: WorkerTrust) -> None:
    """Make ``trust`` the one the workflows on ``task_queue`` in this process consult."""
    _TRUST[task_queue] = trust


def trust_for(task_queue: str) -> WorkerTrust | None:
    """The trust of the worker running ``task_queue`` in this process, if one was built."""
    return _TRUST.get(task_queue)


class PolicyActivities:
    """Admission of new approvals; built in ``worker.py`` with the worker's trust."""

    def __init__(self, trust: WorkerTrust) -> None:
        self._trust = trust

    @activity.defn(name="admit_approval")
    async def admit_approval(self, request: AdmitApprovalInput) -> ApprovalAdmission:
        """Whether the start is the gateway's (checked when the workflow first runs: a start
        that waited past its proof's window is refused), and the policy it runs under: this
        worker's, whatever the input carried."""
        return self._trust.admit(request.start, workflow_id=request.workflow_id)
