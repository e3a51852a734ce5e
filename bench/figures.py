"""The measurements of one run, phase by phase, on one started stack.

Each phase adds named numbers to ``Measurement.values``; the report takes medians over runs.
Phases run in order on the same stack and leave nothing pending for the next (the scale phase,
which leaves 10,000 pending, comes last).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import procs
from bench.databases import fresh_database
from bench.driver import (
    INSTRUMENT,
    REQUEST_PRICE,
    Gateway,
    Timed,
    bounded_map,
    paced,
    percentile,
)
from bench.floor import run_floor
from bench.profile import Profile, py_spy, record, summarise
from bench.stack import Stack
from hitl.models import DecisionReason, Side, TradeProposal, TradeStatus
from store.tables import ApprovalRow, AuditRow

POLL_SECONDS = 0.05
GATEWAY_PROCESSES = ("server", "worker", "api")
"""The processes of ``make run`` whose CPU is the gateway's (the load driver's is not)."""
GATEWAY_CPU = "cpu_ms_per_approval_gateway"
"""Measurement key: their CPU per approval, summed (issue 19 item 1)."""


def gateway_cpu_ms(values: dict[str, float]) -> float | None:
    """The gateway's CPU per approval from its processes' (``GATEWAY_CPU``); None without them."""
    parts = [f"cpu_ms_per_approval_{name}" for name in GATEWAY_PROCESSES]
    if not all(part in values for part in parts):
        return None
    return sum(values[part] for part in parts)


METRICS_FLUSH_SECONDS = 1.5
LOCKED = 423

SERVER_REQUESTS: dict[str, frozenset[str] | None] = {
    "server_requests_per_approval": None,
    "server_workflow_tasks_per_approval": frozenset({"RespondWorkflowTaskCompleted"}),
    "server_activity_tasks_per_approval": frozenset({"RespondActivityTaskCompleted"}),
    "server_starts_and_updates_per_approval": frozenset(
        {"StartWorkflowExecution", "UpdateWorkflowExecution", "ExecuteMultiOperation"}
    ),
}
"""Measurement keys: the dev server frontend's requests of these operations (None: all), per
approval, in the saturation phase."""


@dataclass(frozen=True)
class Sizes:
    """How much each phase does."""

    concurrency: int = 32
    warmup: int = 30
    saturation: int = 400
    floor: int = 400
    latency_decisions: int = 200
    decision_rate: float = 10.0
    expiry: int = 1000
    """Approvals requested in one burst for the expiry phase (issue 19 item 3: 1,000 deadlines)."""
    expiry_timeout_seconds: int = 90
    """Their deadline: longer than the burst takes, so that every deadline falls after the last
    request, one after another at the rate they were requested."""
    effect_pending: int = 300
    effect_rate: float = 20.0
    """Decisions attempted per second around the lock."""
    cascade: int = 1000
    scale_pending: int = 10_000
    scale_decisions: int = 200
    profile_seconds: float = 10.0
    settle_seconds: float = 2.0
    """Quiet time between filling and measuring, so the fill's tail does not count."""

    @property
    def expiry_concurrency(self) -> int:
        """Requests in flight at once in the expiry phase's burst."""
        return min(self.expiry, self.concurrency)


QUICK = Sizes(
    concurrency=8,
    warmup=2,
    saturation=16,
    floor=16,
    latency_decisions=8,
    decision_rate=20.0,
    expiry=5,
    expiry_timeout_seconds=1,
    effect_pending=24,
    effect_rate=40.0,
    cascade=20,
    scale_pending=30,
    scale_decisions=8,
    profile_seconds=0.0,
    settle_seconds=0.3,
)
"""The smoke mode: every phase, tiny counts; proves the benchmark works, measures nothing."""


@dataclass
class Measurement:
    """What one run measured."""

    values: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _chunks(items: Sequence[uuid.UUID], size: int = 500) -> list[Sequence[uuid.UUID]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Bench:
    """The phases of one run."""

    def __init__(
        self,
        *,
        stack: Stack,
        gateway: Gateway,
        engine: AsyncEngine,
        sizes: Sizes,
        profile_dir: Path | None,
    ) -> None:
        self.stack = stack
        self.gw = gateway
        self.engine = engine
        self.sizes = sizes
        self.profile_dir = profile_dir
        self.m = Measurement()
        self._run_start = (time.perf_counter(), procs.MachineCpu.now(), self._cpu())

    # --- helpers -------------------------------------------------------------------------

    def _cpu(self) -> dict[str, float]:
        cpu = {name: proc.cpu_seconds() for name, proc in self.stack.procs.items()}
        cpu["driver"] = procs.cpu_seconds(os.getpid())
        return cpu

    async def _count(self, ids: Sequence[uuid.UUID], status: TradeStatus) -> int:
        total = 0
        async with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                total += (
                    await conn.execute(
                        select(func.count())
                        .select_from(ApprovalRow)
                        .where(ApprovalRow.trade_id.in_(chunk), ApprovalRow.status == status.value)
                    )
                ).scalar_one()
        return int(total)

    async def _pending_total(self) -> int:
        async with self.engine.connect() as conn:
            count = (
                await conn.execute(
                    select(func.count())
                    .select_from(ApprovalRow)
                    .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
                )
            ).scalar_one()
        return int(count)

    def _notified(self, ids: Sequence[uuid.UUID]) -> int:
        """How many of ``ids`` the worker logged a request notice for (the console notifier;
        sent by its notice dispatcher, or by the notify activity in runs from before it)."""
        wanted = {str(trade_id) for trade_id in ids}
        seen: set[str] = set()
        log_path = self.stack.procs["worker"].log_path
        with log_path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if "notify.approval_requested" not in line:
                    continue
                try:
                    record_ = json.loads(line)
                except ValueError:
                    continue
                trade_id = record_.get("trade_id")
                if trade_id in wanted:
                    seen.add(trade_id)
        return len(seen)

    async def _wait_notified(self, ids: Sequence[uuid.UUID], *, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while True:
            notified = await asyncio.to_thread(self._notified, ids)
            if notified >= len(ids) or time.monotonic() > deadline:
                return notified
            await asyncio.sleep(0.5)

    async def _fill(self, count: int, prefix: str) -> list[uuid.UUID]:
        """Create ``count`` pending approvals; those refused are counted as
        ``<prefix>_create_errors`` (the ids of created ones are returned)."""
        ids, refused = await self.gw.create_pending(count, concurrency=self.sizes.concurrency)
        errors = self.m.values.get(f"{prefix}_create_errors", 0.0) + len(refused)
        self.m.values[f"{prefix}_create_errors"] = errors
        if refused:
            sample = refused[0]
            self.m.notes.append(
                f"{prefix}: {len(refused)} of {count} creations answered other than 201, e.g."
                f" {sample.status} after {sample.seconds:.1f} s: {sample.body}"
            )
        return ids

    async def _create_and_approve(self, _: int) -> tuple[uuid.UUID, bool]:
        trade_id, created = await self.gw.create()
        if created.status != httpx.codes.CREATED:
            return trade_id, False
        approved = await self.gw.approve(trade_id)
        ok = approved.status == httpx.codes.OK and approved.body.get("status") == "ACCEPTED"
        return trade_id, ok

    async def _decisions(self, ids: Sequence[uuid.UUID], prefix: str) -> None:
        """Approve ``ids`` at the steady decision rate; p50 and p99 of the answers."""
        timed = await paced(self.gw.approve, ids, per_second=self.sizes.decision_rate)
        ok = [t for t in timed if t.status == httpx.codes.OK and t.body.get("status") == "ACCEPTED"]
        seconds = [t.seconds for t in ok]
        self.m.values[f"{prefix}_p50_ms"] = percentile(seconds, 50) * 1000
        self.m.values[f"{prefix}_p99_ms"] = percentile(seconds, 99) * 1000
        self.m.values[f"{prefix}_max_ms"] = max(seconds) * 1000
        self.m.values[f"{prefix}_errors"] = len(timed) - len(ok)

    def begin(self) -> None:
        """Note the CPU counters at the start of the run."""
        self._run_start = (time.perf_counter(), procs.MachineCpu.now(), self._cpu())

    def finish(self) -> None:
        """Whole-run figures: other processes' share of the CPU, failed activity attempts."""
        began, machine_before, cpu_before = self._run_start
        wall = time.perf_counter() - began
        machine_after, cpu_after = procs.MachineCpu.now(), self._cpu()
        ours = sum(cpu_after[name] - cpu_before[name] for name in cpu_after)
        busy = machine_after.busy - machine_before.busy
        cores = float(os.cpu_count() or 1)
        self.m.values["run_foreign_cpu_pct"] = max(0.0, busy - ours) / (wall * cores) * 100
        failed = 0
        with self.stack.procs["worker"].log_path.open(encoding="utf-8", errors="replace") as log:
            for line in log:
                if "Completing activity as failed" in line:
                    failed += 1
        self.m.values["worker_activity_failures"] = failed

    # --- phases --------------------------------------------------------------------------

    async def saturation(self) -> None:
        """Sustained approvals per second: create → notified → approve → recorded ACCEPTED."""
        sizes = self.sizes
        await bounded_map(self._create_and_approve, range(sizes.warmup), concurrency=8)
        served_before = await self._server_requests()
        machine_before, cpu_before = procs.MachineCpu.now(), self._cpu()
        started = time.perf_counter()
        outcomes = await bounded_map(
            self._create_and_approve, range(sizes.saturation), concurrency=sizes.concurrency
        )
        wall = time.perf_counter() - started
        machine_after, cpu_after = procs.MachineCpu.now(), self._cpu()
        ids = [trade_id for trade_id, _ in outcomes]
        accepted = await self._count(ids, TradeStatus.ACCEPTED)
        notified = await self._wait_notified(ids, seconds=15)
        served_after = await self._server_requests()
        self._count_requests(served_before, served_after, approvals=len(ids))
        values = self.m.values
        values["saturation_per_s"] = accepted / wall
        values["saturation_errors"] = sum(1 for _, ok in outcomes if not ok)
        values["saturation_not_recorded"] = len(ids) - accepted
        values["saturation_not_notified"] = len(ids) - notified
        ours = 0.0
        for name in cpu_after:
            used = cpu_after[name] - cpu_before[name]
            ours += used
            values[f"cpu_ms_per_approval_{name}"] = used / len(ids) * 1000
        values["cpu_ms_per_approval_total"] = ours / len(ids) * 1000
        gateway = gateway_cpu_ms(values)
        assert gateway is not None, "the saturation phase measures every gateway process"
        values[GATEWAY_CPU] = gateway
        cores = float(os.cpu_count() or 1)
        machine_busy = machine_after.busy - machine_before.busy
        values["saturation_our_cpu_pct"] = ours / (wall * cores) * 100
        values["saturation_foreign_cpu_pct"] = max(0.0, machine_busy - ours) / (wall * cores) * 100
        if self.profile_dir is not None and sizes.profile_seconds > 0:
            await self._profile_saturation()

    async def _server_requests(self) -> dict[str, float]:
        """The dev server's request counts, once it has published what it served so far (its
        metrics reporter flushes every second)."""
        await asyncio.sleep(METRICS_FLUSH_SECONDS)
        return await self.stack.server_requests()

    def _count_requests(
        self, before: dict[str, float], after: dict[str, float], *, approvals: int
    ) -> None:
        """Requests the dev server served per approval, from the saturation phase's start until
        its last notification was logged (so each approval's last activity is in): what the
        server's CPU follows, counted rather than timed."""
        served = {name: after[name] - before.get(name, 0.0) for name in after}
        for key, operations in SERVER_REQUESTS.items():
            total = sum(
                count for name, count in served.items() if operations is None or name in operations
            )
            self.m.values[key] = total / approvals

    async def _profile_saturation(self) -> None:
        """Load as in the saturation phase while py-spy samples the worker and the API."""
        assert self.profile_dir is not None
        if py_spy() is None:
            self.m.notes.append("py-spy is not installed: no sampling profile (pip install py-spy)")
            return
        seconds = self.sizes.profile_seconds
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        outputs = {name: self.profile_dir / f"{name}.txt" for name in ("worker", "api")}
        recorders = [
            await record(self.stack.procs[name].pid, seconds=seconds, out=out)
            for name, out in outputs.items()
        ]
        deadline = time.perf_counter() + seconds

        async def until_deadline(_: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                await self._create_and_approve(0)
                done += 1
            return done

        await bounded_map(until_deadline, range(self.sizes.concurrency), concurrency=64)
        for recorder in recorders:
            await recorder.wait()
        for name, out in outputs.items():
            self.m.profiles[name] = summarise(out)

    async def floor(self) -> None:
        """The same database writes per approval, done directly, at the same concurrency.

        In a database of their own (on the same server, or a file beside the gateway's): the
        gateway's reconciler (issue 17) would rightly close approvals that have no workflow."""
        workdir = self.stack.config.workdir / "floor"
        workdir.mkdir(exist_ok=True)
        async with fresh_database(self.stack.config.database_url, workdir) as url:
            await self.stack.migrate(url)
            rate = await run_floor(
                url,
                keys_dir=self.stack.keys_dir,
                count=self.sizes.floor,
                concurrency=self.sizes.concurrency,
            )
        self.m.values["floor_per_s"] = rate
        if "saturation_per_s" in self.m.values:
            self.m.values["floor_ratio"] = self.m.values["saturation_per_s"] / rate

    async def latency(self) -> None:
        """Decision latency at a steady rate, over approvals created beforehand."""
        ids = await self._fill(self.sizes.latency_decisions, "latency")
        await self._wait_notified(ids, seconds=15)
        await asyncio.sleep(self.sizes.settle_seconds)
        await self._decisions(ids, "latency")

    async def expiry(self) -> None:
        """Lateness of the expiry of approvals created together with a short deadline."""
        # The deadline is the worker's policy (issue 14): a worker with the short one for these
        # approvals, then the stack's long one again for the phases after.
        await self.stack.restart_worker(
            {"HITL_TIMEOUT_SECONDS": str(self.sizes.expiry_timeout_seconds)}
        )
        try:
            await self._expiry()
        finally:
            await self.stack.restart_worker()

    async def _expiry(self) -> None:
        approvals = self.stack.approvals()
        marker = datetime.now(UTC)
        await asyncio.sleep(0.01)
        price = Decimal(REQUEST_PRICE)

        async def start(_: int) -> tuple[uuid.UUID, datetime]:
            proposal = TradeProposal(
                trade_id=uuid.uuid4(),
                instrument=INSTRUMENT,
                side=Side.BUY,
                risk_pct=Decimal("1.5"),
                confidence=Decimal("0.8"),
                request_price=price,
                reasoning_summary="benchmark expiry",
                correlation_id=str(uuid.uuid4()),
            )
            handle = await approvals.request_approval(proposal, requested_by="bot-1")
            recorded = await handle.recorded()
            return recorded.trade_id, recorded.expires_at

        started = await bounded_map(
            start,
            range(self.sizes.expiry),
            concurrency=self.sizes.expiry_concurrency,
        )
        ids = [trade_id for trade_id, _ in started]
        deadlines = [expires_at for _, expires_at in started]
        wait_until = time.monotonic() + self.sizes.expiry_timeout_seconds + 90
        while await self._count(ids, TradeStatus.REJECTED) < len(ids):
            if time.monotonic() > wait_until:
                raise RuntimeError("approvals did not expire within 90 s of their deadline")
            await asyncio.sleep(0.2)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        ApprovalRow.trade_id,
                        ApprovalRow.expires_at,
                        ApprovalRow.decided_at,
                        ApprovalRow.decision_reason,
                    ).where(ApprovalRow.trade_id.in_(ids))
                )
            ).all()
            written = await conn.execute(
                select(AuditRow.target_id, AuditRow.created_at).where(
                    AuditRow.idempotency_key.in_([f"{t}:decided" for t in ids])
                )
            )
            # A comprehension, not dict(): a result has keys() and would pass for a mapping.
            audits = {target_id: created_at for target_id, created_at in written}
        lateness = [(row.decided_at - row.expires_at).total_seconds() for row in rows]
        committed = [(audits[str(row.trade_id)] - row.expires_at).total_seconds() for row in rows]
        values = self.m.values
        values["expiry_p50_s"] = percentile(lateness, 50)
        values["expiry_p99_s"] = percentile(lateness, 99)
        values["expiry_committed_p50_s"] = percentile(committed, 50)
        values["expiry_committed_p99_s"] = percentile(committed, 99)
        values["expiry_deadline_spread_s"] = (max(deadlines) - min(deadlines)).total_seconds()
        values["expiry_not_timeout"] = sum(
            1 for row in rows if row.decision_reason != DecisionReason.HITL_TIMEOUT.value
        )
        # Their workflows finish (the decision's notice) before the worker is replaced: a fresh
        # worker would otherwise take up 1,000 of them cold, behind the next phase's work.
        await self._wait_closed(marker, time.perf_counter() + 300, "the expired approvals'")

    async def guardian_effect(self) -> None:
        """Lock acknowledged → first refused decision, while decisions are attempted
        continuously; and no decision attempted after the acknowledgement may succeed."""
        sizes = self.sizes
        ids = await self._fill(sizes.effect_pending, "guardian")
        await self._wait_notified(ids, seconds=15)
        # One approval is kept back for the attempt at the acknowledgement, so that there is
        # always a decision attempted after it, however quickly the others were used up.
        reserved = ids[-1]
        queue = deque(ids[:-1])
        attempts: list[asyncio.Task[Timed]] = []
        stop = asyncio.Event()

        def attempt() -> None:
            if queue:
                attempts.append(asyncio.create_task(self.gw.approve(queue.popleft())))

        async def operators() -> None:
            # Decisions attempted at a steady rate (an open loop), whatever the answers take.
            while queue and not stop.is_set():
                attempt()
                await asyncio.sleep(1 / sizes.effect_rate)

        attempting = asyncio.create_task(operators())
        await asyncio.sleep(sizes.settle_seconds / 2)
        lock = await self.gw.lock("benchmark: Guardian effect")
        acknowledged = lock.ended
        queue.appendleft(reserved)
        attempt()  # one more the instant the lock is acknowledged
        await asyncio.sleep(sizes.settle_seconds / 4)
        stop.set()
        await attempting
        async with asyncio.timeout(60):
            answers = list(await asyncio.gather(*attempts))
        if lock.status != httpx.codes.OK:
            raise RuntimeError(f"lock answered {lock.status}: {lock.body}")
        after = [a for a in answers if a.started >= acknowledged]
        refused = [a for a in after if a.status == LOCKED]
        values = self.m.values
        values["guardian_lock_ms"] = lock.seconds * 1000
        if refused:
            values["guardian_effect_ms"] = (min(a.ended for a in refused) - acknowledged) * 1000
        else:
            self.m.notes.append("Guardian effect: no decision was attempted after the lock")
        values["guardian_leaks"] = sum(1 for a in after if a.status == httpx.codes.OK)
        values["guardian_refused_in_flight"] = sum(
            1 for a in answers if a.started < acknowledged and a.status == LOCKED
        )
        unlock = await self.gw.unlock()
        if unlock.status != httpx.codes.OK:
            raise RuntimeError(f"unlock answered {unlock.status}: {unlock.body}")
        await asyncio.sleep(sizes.settle_seconds)

    async def _wait_closed(self, since: datetime, until: float, whose: str) -> None:
        """Until every approval workflow started since ``since`` has completed.

        Raises:
            RuntimeError: some were still running at ``until`` (a ``time.perf_counter()``).
        """
        assert self.stack.client is not None
        query = (
            "WorkflowType='ApprovalWorkflow' AND ExecutionStatus='Running'"
            f" AND StartTime >= '{since.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
        )
        while (await self.stack.client.count_workflows(query)).count > 0:
            if time.perf_counter() > until:
                raise RuntimeError(f"{whose} workflows were still running")
            await asyncio.sleep(0.2)

    async def cascade(self) -> None:
        """1,000 pending, then a lock: how long until all are REJECTED in the database, and
        until all their workflows have taken the signal and completed."""
        assert self.stack.client is not None
        marker = datetime.now(UTC)
        await asyncio.sleep(0.01)
        ids = await self._fill(self.sizes.cascade, "cascade")
        await self._wait_notified(ids, seconds=30)
        await asyncio.sleep(self.sizes.settle_seconds)
        values = self.m.values
        values["cascade_pending_before"] = await self._pending_total()
        lock = await self.gw.lock("benchmark: Guardian cascade")
        if lock.status != httpx.codes.OK:
            raise RuntimeError(f"lock answered {lock.status}: {lock.body}")
        acknowledged = lock.ended
        values["cascade_lock_ms"] = lock.seconds * 1000
        while await self._count(ids, TradeStatus.REJECTED) < len(ids):
            if time.perf_counter() - acknowledged > 120:
                raise RuntimeError("the cascade did not reject everything within 120 s")
            await asyncio.sleep(POLL_SECONDS)
        values["cascade_rejected_s"] = time.perf_counter() - acknowledged
        await self._wait_closed(marker, acknowledged + 300, "the cascade's")
        values["cascade_completed_s"] = time.perf_counter() - acknowledged
        unlock = await self.gw.unlock()
        if unlock.status != httpx.codes.OK:
            raise RuntimeError(f"unlock answered {unlock.status}: {unlock.body}")

    async def scale(self) -> None:
        """Worker memory with many approvals pending, and decision latency while they wait."""
        worker = self.stack.procs["worker"]
        values = self.m.values
        values["scale_rss_before_mb"] = worker.rss_mb()
        started = time.perf_counter()
        ids = await self._fill(self.sizes.scale_pending, "scale")
        values["scale_create_per_s"] = len(ids) / (time.perf_counter() - started)
        await self._wait_notified(ids[-200:], seconds=60)
        await asyncio.sleep(self.sizes.settle_seconds)
        values["scale_pending"] = await self._pending_total()
        values["scale_rss_mb"] = worker.rss_mb()
        values["scale_server_rss_mb"] = self.stack.procs["server"].rss_mb()
        values["scale_api_rss_mb"] = self.stack.procs["api"].rss_mb()
        peak = 0.0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, worker.rss_mb())
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        chosen = random.Random(7).sample(ids, min(self.sizes.scale_decisions, len(ids)))
        try:
            await self._decisions(chosen, "scale")
        finally:
            sampling = False
            await sampler
        values["scale_rss_peak_mb"] = max(peak, worker.rss_mb())

    async def scale_lock(self) -> None:
        """A Guardian lock with every scale approval still pending: the lock call's latency
        and answer (the API gives a call ``HITL_API_DECISION_TIMEOUT_SECONDS``, 10 s), then
        how long until none is pending in the database. The fan-out is not waited for."""
        values = self.m.values
        values["scale_lock_pending"] = await self._pending_total()
        started = time.perf_counter()
        lock = await self.gw.lock("benchmark: Guardian lock at scale")
        values["scale_lock_ms"] = lock.seconds * 1000
        values["scale_lock_status"] = lock.status
        while await self._pending_total() > 0:
            if time.perf_counter() - started > 300:
                raise RuntimeError("the lock at scale did not reject everything within 300 s")
            await asyncio.sleep(0.2)
        values["scale_lock_all_rejected_s"] = time.perf_counter() - started
