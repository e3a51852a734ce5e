"""Prometheus metrics, named as the seed's section 17.2 names them. Defined once here; the worker
and the API each expose their own process's values on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("hitl_requests_total", "Approval requests recorded.")
APPROVALS = Counter("hitl_approvals_total", "Approvals that ended ACCEPTED.")
REJECTIONS = Counter(
    "hitl_rejections_total", "Approvals that ended REJECTED, by decision reason.", ["reason"]
)
RESPONSE_LATENCY = Histogram(
    "hitl_response_latency_seconds",
    "Time from request to a human decision.",
    buckets=(1, 5, 10, 30, 60, 120, 180, 240, 300, 600, 1800, 3600),
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
    "Rows and workflows that disagreed at the last reconciliation pass (issue 16).",
)
RECONCILE_REPAIRS = Counter(
    "hitl_reconcile_repairs_total",
    "Approvals closed REJECTED with WORKFLOW_LOST because their workflow was gone.",
)
AUDIT_CHAIN_BROKEN = Gauge(
    "hitl_audit_chain_broken",
    "1 when the worker's last check of the audit chain found the record broken, else 0.",
)
