"""Prometheus metrics, named as the seed's section 17.2 names them. Defined once here.

Two scrapes, and which holds what:

- The **API's** ``/metrics`` serves the seed's approval metrics (``hitl_requests_total``,
  ``hitl_approvals_total``, ``hitl_rejections_total``, ``hitl_rejections_timeout_total``,
  ``hitl_response_latency_seconds``, ``blocked_by_guardian_total``) and
  ``hitl_pending_approvals`` *counted from the database at scrape time*
  (:func:`exposition`): totals for the whole deployment, the same on every API replica (sum
  nothing: take ``max``), exact however many workers ran or restarted. The one figure the
  database does not hold, requests the API refused at its door while the Guardian was locked,
  is ``blocked_by_guardian_total{source="process"}``, per API process (summed).
- Each **worker's** ``/metrics`` serves what that process counted as it wrote (the same names,
  per process, since its start), the reconciler's and the audit checker's figures, and the
  Temporal SDK's metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 180, 240, 300, 600, 1800, 3600)
"""Upper bounds (seconds) of ``hitl_response_latency_seconds``, in both scrapes."""

REQUESTS = Counter("hitl_requests_total", "Approval requests recorded.")
APPROVALS = Counter("hitl_approvals_total", "Approvals that ended ACCEPTED.")
REJECTIONS = Counter(
    "hitl_rejections_total", "Approvals that ended REJECTED, by decision reason.", ["reason"]
)
RESPONSE_LATENCY = Histogram(
    "hitl_response_latency_seconds",
    "Time from request to a human decision.",
    buckets=LATENCY_BUCKETS,
)
REJECTIONS_TIMEOUT = Counter(
    "hitl_rejections_timeout_total",
    "Approvals that ended REJECTED because their deadline passed (HITL_TIMEOUT).",
)
BLOCKED_BY_GUARDIAN = Counter(
    "blocked_by_guardian_total", "Operations refused or rejected because the Guardian was locked."
)
PENDING = Gauge(
    "hitl_pending_approvals",
    "Approvals awaiting a decision (read from the database when the API is scraped).",
)
COMMANDS_REFUSED = Counter(
    "hitl_commands_refused_total",
    "Commands to a workflow refused for their proof of origin (issue 14), by action and reason.",
    ["action", "reason"],
)
RECONCILE_MISMATCHES = Gauge(
    "hitl_reconcile_mismatches",
    "Rows and workflows that disagreed at the last full reconciliation pass, plus those the"
    " periodic passes found since (issue 16).",
)
RECONCILE_REPAIRS = Counter(
    "hitl_reconcile_repairs_total",
    "Approvals closed REJECTED with WORKFLOW_LOST because their workflow was gone.",
)
NOTICES = Counter(
    "hitl_notices_total",
    "Notices to the operators the worker's dispatcher finished, by kind and outcome (sent, or"
    " abandoned after the approval's window or for a failed MAC).",
    ["kind", "outcome"],
)
NOTICE_FAILURES = Counter(
    "hitl_notice_failures_total",
    "Attempts to send a notice that failed (each is retried until the approval's window ends).",
    ["kind"],
)
AUDIT_CHAIN_BROKEN = Gauge(
    "hitl_audit_chain_broken",
    "1 when the worker's last check of the audit chain found the record broken, else 0.",
)


@dataclass(frozen=True, slots=True)
class DecisionTotals:
    """The seed's approval figures as the database holds them (``store.metrics`` reads them)."""

    requests: int
    """Approvals ever recorded."""
    approvals: int
    """Approvals that ended ACCEPTED (wherever their lifecycle went since)."""
    rejections: Mapping[str, int]
    """Approvals that ended REJECTED, by decision reason."""
    latency_buckets: tuple[int, ...]
    """Human decisions whose latency is at most each of ``LATENCY_BUCKETS`` (cumulative)."""
    latency_count: int
    """Human decisions (any channel but SYSTEM)."""
    latency_sum: float
    """Their latencies (request to decision), in seconds, summed."""
    timeouts: int = field(init=False)
    guardian_rejections: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeouts", self.rejections.get("HITL_TIMEOUT", 0))
        object.__setattr__(self, "guardian_rejections", self.rejections.get("GUARDIAN_LOCK", 0))


class _DatabaseTotals(Collector):
    def __init__(self, totals: DecisionTotals, door_refusals: float) -> None:
        self._totals = totals
        self._door_refusals = door_refusals

    def collect(self) -> Iterator[Metric]:
        totals = self._totals
        yield CounterMetricFamily(
            "hitl_requests", "Approval requests recorded (database).", value=totals.requests
        )
        yield CounterMetricFamily(
            "hitl_approvals", "Approvals that ended ACCEPTED (database).", value=totals.approvals
        )
        rejections = CounterMetricFamily(
            "hitl_rejections",
            "Approvals that ended REJECTED, by decision reason (database).",
            labels=["reason"],
        )
        for reason, count in sorted(totals.rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections
        yield CounterMetricFamily(
            "hitl_rejections_timeout",
            "Approvals that ended REJECTED because their deadline passed (database).",
            value=totals.timeouts,
        )
        yield HistogramMetricFamily(
            "hitl_response_latency_seconds",
            "Time from request to a human decision (database).",
            buckets=[
                *(
                    (_bound(bound), count)
                    for bound, count in zip(LATENCY_BUCKETS, totals.latency_buckets, strict=True)
                ),
                ("+Inf", totals.latency_count),
            ],
            sum_value=totals.latency_sum,
        )
        blocked = CounterMetricFamily(
            "blocked_by_guardian",
            "Operations the Guardian stopped: approvals it rejected (source=database) and requests"
            " this API process refused at its door (source=process).",
            labels=["source"],
        )
        blocked.add_metric(["database"], totals.guardian_rejections)
        blocked.add_metric(["process"], self._door_refusals)
        yield blocked


def _bound(bound: float) -> str:
    # Prometheus' own spelling of a bucket bound, as prometheus_client writes it ("1.0").
    return repr(float(bound))


class _Without(Collector):
    """Another registry's metrics but the families the database now supplies."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str]) -> None:
        self._registry = registry
        self._names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name not in self._names:
                yield family


def exposition(totals: DecisionTotals, registry: CollectorRegistry = REGISTRY) -> bytes:
    """The API's ``/metrics`` text: ``registry``'s metrics, with the seed's approval metrics
    replaced by the database's ``totals`` (and the door refusals this process counted)."""
    door_refusals = registry.get_sample_value("blocked_by_guardian_total") or 0.0
    database = _DatabaseTotals(totals, door_refusals)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Without(registry, (family.name for family in database.collect())))
    scrape.register(database)
    return generate_latest(scrape)
