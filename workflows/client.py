"""ApprovalClient: start approvals and send them decisions without knowing Temporal's API.

Internal to the gateway's own processes (the API, the worker, the Discord bot): every command it
sends carries the gateway's proof (``hitl.signing``), signed with the commands keyring. Bots use
the HTTP client in ``hitl_client`` instead, with their token; they never reach Temporal.

Every call an approval or the Guardian makes on Temporal (start, Updates, query, describe)
answers SEC-070 within about 1.5 s when the server cannot be reached, and otherwise waits as long
as the call takes (``workflows.connection.unless_unreachable``): a decision's Update still waits
for its workflow up to the caller's own limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, TypeVar, cast
from uuid import UUID

import structlog
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from hitl.decisions import refusal_for_decided
from hitl.errors import ErrorCode, HITLError
from hitl.messages import (
    ApprovalWorkflowInput,
    DecisionCommand,
    GuardianCommand,
    GuardianStatus,
    LifecycleCommand,
    guardian_workflow_id,
    hub_page_link,
    workflow_id_for,
)
from hitl.models import ApprovalRequest, Decision, TradeProposal
from hitl.settings import get_settings
from hitl.signing import CommandAction, CommandSigner
from workflows import search_attributes
from workflows.approval import ApprovalWorkflow
from workflows.connection import unless_unreachable
from workflows.guardian import GuardianWorkflow, guardian_task_queue

CommandT = TypeVar("CommandT", DecisionCommand, LifecycleCommand)

log = structlog.get_logger(__name__)

_UNAVAILABLE = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)


_ABORTED_UPDATE_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)
"""Pauses between sends of an Update the server aborted unapplied (about 1.5 s in all)."""


def _aborted_unapplied(exc: RPCError) -> bool:
    """The server's answer to Updates admitted in a workflow task that then failed."""
    return (
        exc.status is RPCStatusCode.FAILED_PRECONDITION and "workflow task failure" in exc.message
    )


def _error_from_failure(exc: BaseException) -> HITLError:
    """Turn a workflow's ApplicationError (its type is our SEC code) into an HITLError."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__ or getattr(cause, "cause", None)
    if isinstance(cause, ApplicationError) and cause.type:
        try:
            error = ErrorCode.from_code(cause.type)
        except KeyError:
            error = ErrorCode.SERVICE_UNAVAILABLE
        details = cause.details[0] if cause.details else None
        message = cause.message.removeprefix(f"{error.code}: ")
        if isinstance(details, dict):
            return HITLError(error, message, approval=ApprovalRequest.from_dict(details))
        return HITLError(error, message)
    return HITLError(ErrorCode.SERVICE_UNAVAILABLE, str(exc))


def _duplicate(proposal: TradeProposal) -> HITLError:
    return HITLError(
        ErrorCode.DUPLICATE_REQUEST, f"trade {proposal.trade_id} already has an approval"
    )


class _StartOptions(TypedDict):
    """The options of an approval's start, the same for a start and an update-with-start."""

    id: str
    task_queue: str
    id_reuse_policy: WorkflowIDReusePolicy
    id_conflict_policy: WorkflowIDConflictPolicy
    search_attributes: TypedSearchAttributes
    static_summary: str
    static_details: str


@dataclass(frozen=True)
class _Start:
    """An approval's start: its signed input and its options."""

    workflow_id: str
    start_input: ApprovalWorkflowInput
    options: _StartOptions


class ApprovalHandle:
    """One trade's approval."""

    def __init__(
        self,
        handle: WorkflowHandle[ApprovalWorkflow, ApprovalRequest],
        signer: CommandSigner,
        client: Client,
    ) -> None:
        self._handle = handle
        self._signer = signer
        self._client = client

    @property
    def workflow_id(self) -> str:
        """The Temporal workflow id (``approval-<trade_id>``)."""
        return self._handle.id

    async def current(self) -> ApprovalRequest | None:
        """The approval as it stands now (None in the instant before it is recorded)."""
        try:
            return await unless_unreachable(
                self._client, self._handle.query(ApprovalWorkflow.current)
            )
        except RPCError as exc:
            raise self._rpc_error(exc) from exc

    async def recorded(self) -> ApprovalRequest:
        """Wait until the request is stored (its deadline set) and return it."""
        return await self._update(ApprovalWorkflow.recorded, None, lambda final: final)

    async def outcome(self) -> ApprovalRequest:
        """Wait until the approval is decided (or expires) and return it."""
        return await self._update(ApprovalWorkflow.decision, None, lambda final: final)

    async def approve(self, command: DecisionCommand) -> ApprovalRequest:
        """Approve; returns the final record or raises HITLError (SEC-050, SEC-012, ...)."""
        signed = self._sign(command, CommandAction.APPROVE)
        return await self._decide(ApprovalWorkflow.approve, signed, Decision.APPROVE)

    async def reject(self, command: DecisionCommand) -> ApprovalRequest:
        """Reject; returns the final record or raises HITLError."""
        signed = self._sign(command, CommandAction.REJECT)
        return await self._decide(ApprovalWorkflow.reject, signed, Decision.REJECT)

    async def advance(self, command: LifecycleCommand) -> ApprovalRequest:
        """Report FILLED, CLOSED or SETTLED; raises HITLError SEC-030 for anything else."""

        def when_completed(final: ApprovalRequest) -> ApprovalRequest:
            if final.status is command.target:
                return final
            raise HITLError(
                ErrorCode.INVALID_TRANSITION,
                f"{final.status.value} cannot become {command.target.value}",
                approval=final,
            )

        signed = self._sign(command, CommandAction.ADVANCE)
        return await self._update(ApprovalWorkflow.advance, signed, when_completed)

    def _sign(self, command: CommandT, action: CommandAction) -> CommandT:
        return self._signer.sign(command, workflow_id=self._handle.id, action=action)

    async def _decide(
        self, update: Any, command: DecisionCommand, decision: Decision
    ) -> ApprovalRequest:
        def when_completed(final: ApprovalRequest) -> ApprovalRequest:
            # Answer with the standing decision, exactly as the workflow would have.
            refusal = refusal_for_decided(final, operator_id=command.operator_id, decision=decision)
            if refusal is None:
                return final
            raise HITLError(refusal, f"already {final.status.value}", approval=final)

        return await self._update(update, command, when_completed)

    async def _update(
        self,
        update: Any,
        argument: object,
        when_completed: Callable[[ApprovalRequest], ApprovalRequest],
    ) -> ApprovalRequest:
        """Run an Update; failures become HITLErrors (SEC-070 at once when Temporal cannot be
        reached). An Update sent to a workflow that has completed comes back NOT_FOUND:
        ``when_completed`` answers from its final record."""
        return await unless_unreachable(
            self._client, self._update_reachable(update, argument, when_completed)
        )

    async def _update_reachable(
        self,
        update: Any,
        argument: object,
        when_completed: Callable[[ApprovalRequest], ApprovalRequest],
    ) -> ApprovalRequest:
        args = [] if argument is None else [argument]
        try:
            result: ApprovalRequest = await self._execute_update(update, args)
            return result
        except WorkflowUpdateFailedError as exc:
            raise _error_from_failure(exc) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise HITLError(
                ErrorCode.SERVICE_UNAVAILABLE, f"no answer from the workflow ({exc.__cause__!r})"
            ) from exc
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                final = await self._completed_result()
                if final is not None:
                    return when_completed(final)
            raise self._rpc_error(exc) from exc

    async def _execute_update(self, update: Any, args: list[object]) -> ApprovalRequest:
        """Send the Update, again when the server aborted it unapplied.

        When a workflow task fails (for instance the workflow tried to complete while a Guardian
        notice and decisions arrived together), the server aborts every Update admitted in that
        task with FAILED_PRECONDITION; none of them reached history, so sending the same command
        again is safe and gets the real answer (a completed workflow then answers NOT_FOUND)."""
        for delay in _ABORTED_UPDATE_BACKOFF:
            try:
                result: ApprovalRequest = await self._handle.execute_update(update, args=args)
                return result
            except RPCError as exc:
                if not _aborted_unapplied(exc):
                    raise
            await asyncio.sleep(delay)
        final: ApprovalRequest = await self._handle.execute_update(update, args=args)
        return final

    async def _completed_result(self) -> ApprovalRequest | None:
        try:
            description = await self._handle.describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return None
            raise self._rpc_error(exc) from exc
        if description.status is WorkflowExecutionStatus.FAILED:
            # A start the worker refused (SEC-092/093): say why, not "no such approval".
            try:
                await self._handle.result()
            except WorkflowFailureError as exc:
                raise _error_from_failure(exc) from exc
        if description.status is not WorkflowExecutionStatus.COMPLETED:
            return None
        return await self._handle.result()

    @staticmethod
    def _rpc_error(exc: RPCError) -> HITLError:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return HITLError(ErrorCode.NOT_FOUND)
        if exc.status in _UNAVAILABLE:
            return HITLError(ErrorCode.SERVICE_UNAVAILABLE, exc.message)
        return HITLError(ErrorCode.SERVICE_UNAVAILABLE, f"{exc.status.name}: {exc.message}")


class ApprovalClient:
    """Starts approvals and finds them again, by trade id; signs every command it sends."""

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = "hitl-approvals",
        signer: CommandSigner | None = None,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._signer = signer or default_signer()
        self._registered = False
        """Whether this client has made sure its search attributes are registered."""

    @property
    def temporal(self) -> Client:
        """The underlying Temporal client."""
        return self._client

    async def request_approval(
        self, proposal: TradeProposal, *, requested_by: str
    ) -> ApprovalHandle:
        """Start the approval of ``proposal`` (under the worker's policy, which the start does
        not carry); HITLError SEC-011 if the trade already has one, SEC-070 at once when
        Temporal cannot be reached."""
        return await unless_unreachable(
            self._client, self._request_approval(proposal, requested_by=requested_by)
        )

    async def request_recorded(
        self, proposal: TradeProposal, *, requested_by: str
    ) -> tuple[ApprovalHandle, ApprovalRequest]:
        """Start the approval of ``proposal`` and wait until its request is stored, in one call:
        the start and its ``recorded`` Update reach the workflow's first task together
        (update-with-start), a round trip and a workflow task fewer than a start followed by
        the Update (issue 19). The same errors as ``request_approval``, and a start the worker
        refused answers its SEC-092/093."""
        return await unless_unreachable(
            self._client, self._request_recorded(proposal, requested_by=requested_by)
        )

    async def _request_approval(
        self, proposal: TradeProposal, *, requested_by: str
    ) -> ApprovalHandle:
        start = await self._start_operation(proposal, requested_by=requested_by)
        try:
            handle = await self._client.start_workflow(
                ApprovalWorkflow.run,
                start.start_input,
                **start.options,
            )
        except WorkflowAlreadyStartedError as exc:
            raise _duplicate(proposal) from exc
        except RPCError as exc:
            raise ApprovalHandle._rpc_error(exc) from exc
        return ApprovalHandle(handle, self._signer, self._client)

    async def _request_recorded(
        self, proposal: TradeProposal, *, requested_by: str
    ) -> tuple[ApprovalHandle, ApprovalRequest]:
        start = await self._start_operation(proposal, requested_by=requested_by)
        operation = WithStartWorkflowOperation(
            ApprovalWorkflow.run, start.start_input, **start.options
        )
        handle = ApprovalHandle(
            self._client.get_workflow_handle_for(ApprovalWorkflow.run, start.workflow_id),
            self._signer,
            self._client,
        )
        try:
            recorded: ApprovalRequest = await self._client.execute_update_with_start_workflow(
                # Its decorator's options make the SDK's typing see a coroutine's result.
                cast(Any, ApprovalWorkflow.recorded),
                start_workflow_operation=operation,
            )
        except WorkflowAlreadyStartedError as exc:
            # The operation's own handle holds the same error: read it, so nothing is left
            # unretrieved.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await operation.workflow_handle()
            raise _duplicate(proposal) from exc
        except WorkflowUpdateFailedError as exc:
            # The run ended before its request was stored: a start the worker refused fails
            # its workflow with SEC-092/093, which the run's failure says.
            await handle._completed_result()
            raise _error_from_failure(exc) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise HITLError(
                ErrorCode.SERVICE_UNAVAILABLE, f"no answer from the workflow ({exc.__cause__!r})"
            ) from exc
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                await handle._completed_result()
            raise ApprovalHandle._rpc_error(exc) from exc
        return handle, recorded

    async def _start_operation(self, proposal: TradeProposal, *, requested_by: str) -> _Start:
        """What starting ``proposal``'s approval sends, signed: one definition for a plain
        start and an update-with-start."""
        workflow_id = workflow_id_for(proposal.trade_id)
        start = self._signer.sign(
            ApprovalWorkflowInput(proposal=proposal, requested_by=requested_by),
            workflow_id=workflow_id,
            action=CommandAction.START,
        )
        settings = get_settings()
        # The starter's reckoning of the deadline, for the one-line summary only: the worker's
        # policy sets the real one (HitlExpiresAt, the current details).
        expected_expiry = datetime.now(UTC) + timedelta(seconds=settings.hitl.timeout_seconds)
        await self._register_search_attributes()
        return _Start(
            workflow_id=workflow_id,
            start_input=start,
            options={
                "id": workflow_id,
                "task_queue": self._task_queue,
                "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
                "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
                "search_attributes": search_attributes.start_attributes(
                    proposal, requested_by=requested_by
                ),
                "static_summary": search_attributes.static_summary(
                    proposal, expires_at=expected_expiry
                ),
                "static_details": search_attributes.static_details(
                    proposal,
                    requested_by=requested_by,
                    page_link=hub_page_link(settings.hitl.hub_url, proposal.trade_id),
                ),
            },
        )

    async def _register_search_attributes(self) -> None:
        """Once per client: register the approvals' search attributes the server lacks.

        Best effort: make run, compose and the tests register them beforehand, and a server
        that does not let the gateway register (an authoriser, Temporal Cloud) is told by an
        operator. A refusal is logged and not asked again; an unreachable server is asked at
        the next start (the start itself then fails as it would have).
        """
        if self._registered:
            return
        try:
            added = await search_attributes.ensure_registered(self._client)
        except RPCError as exc:
            log.warning(
                "search attributes not registered",
                correlation_id="-",
                actor="gateway",
                action="temporal.search_attributes",
                result=exc.status.name,
                detail=exc.message,
            )
            if exc.status in _UNAVAILABLE:
                return
        else:
            if added:
                log.info(
                    "search attributes registered",
                    correlation_id="-",
                    actor="gateway",
                    action="temporal.search_attributes",
                    result="added",
                    names=added,
                )
        self._registered = True

    def approval(self, trade_id: UUID) -> ApprovalHandle:
        """The approval of ``trade_id`` (not checked to exist until used)."""
        return ApprovalHandle(
            self._client.get_workflow_handle_for(ApprovalWorkflow.run, workflow_id_for(trade_id)),
            self._signer,
            self._client,
        )


def default_signer() -> CommandSigner:
    """The signer over the commands keyring the settings name (SEC-040 when it is missing)."""
    return CommandSigner.from_keys_dir(get_settings().keys_dir)


class GuardianClient:
    """Locks and unlocks the Guardian through its workflow (started on first use, on the
    Guardian's own task queue; ``task_queue`` is the approvals' queue, which names it)."""

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = "hitl-approvals",
        signer: CommandSigner | None = None,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._signer = signer or default_signer()

    async def lock(self, command: GuardianCommand) -> GuardianStatus:
        """Lock; returns once acknowledged (no decision succeeds from then on); the pending
        approvals are rejected right after, in batches (``pending_remaining``)."""
        return await self._update(GuardianWorkflow.lock, command, CommandAction.GUARDIAN_LOCK)

    async def unlock(self, command: GuardianCommand) -> GuardianStatus:
        """Unlock."""
        return await self._update(GuardianWorkflow.unlock, command, CommandAction.GUARDIAN_UNLOCK)

    async def _update(
        self, update: Any, command: GuardianCommand, action: CommandAction
    ) -> GuardianStatus:
        """Run the Update (starting the Guardian if needed); SEC-070 at once when Temporal
        cannot be reached, as for approvals."""
        return await unless_unreachable(
            self._client, self._update_reachable(update, command, action)
        )

    async def _update_reachable(
        self, update: Any, command: GuardianCommand, action: CommandAction
    ) -> GuardianStatus:
        workflow_id = guardian_workflow_id(self._task_queue)
        command = self._signer.sign(command, workflow_id=workflow_id, action=action)
        start = WithStartWorkflowOperation(
            GuardianWorkflow.run,
            id=workflow_id,
            task_queue=guardian_task_queue(self._task_queue),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        try:
            status: GuardianStatus = await self._client.execute_update_with_start_workflow(
                update, command, start_workflow_operation=start
            )
            return status
        except WorkflowUpdateFailedError as exc:
            raise _error_from_failure(exc) from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise HITLError(ErrorCode.SERVICE_UNAVAILABLE, "no answer from the Guardian") from exc
        except RPCError as exc:
            raise ApprovalHandle._rpc_error(exc) from exc
