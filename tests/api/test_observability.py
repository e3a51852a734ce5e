"""Logs an operator can use and metrics that count what happened: the seed's Properties 9
(every operation moves the right counter) and 10 (every decision leaves a complete audit
record), and JSON log lines that all carry correlation id, actor, action and result."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from decimal import Decimal

import structlog
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from hitl.logs import REQUIRED_KEYS, configure_logging
from store.tables import AuditRow
from tests.api.conftest import Api, auth
from tests.api.test_approvals_api import create
from tests.api.test_guardian import lock, unlock
from tests.temporal_fixtures import make_policy


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def approve(api: Api, trade_id: str, who: str = "alice") -> int:
    response = await api.http.post(f"/api/hitl/{trade_id}/approve", json={}, headers=auth(who))
    return response.status_code


async def test_property_9_requests_total_counts_each_request(api: Api) -> None:
    before = sample("hitl_requests_total")
    for _ in range(3):
        await create(api)
    assert sample("hitl_requests_total") == before + 3


async def test_property_9_approvals_total_counts_acceptances(api: Api) -> None:
    before = sample("hitl_approvals_total")
    trade_id = (await create(api))["trade_id"]
    assert await approve(api, trade_id) == 200
    assert await approve(api, trade_id) == 200  # a double click counts once
    assert sample("hitl_approvals_total") == before + 1


async def test_property_9_rejections_total_counts_by_reason(api: Api) -> None:
    operator = sample("hitl_rejections_total", reason="OPERATOR_REJECTED")
    slippage = sample("hitl_rejections_total", reason="SLIPPAGE_EXCEEDED")
    rejected = (await create(api))["trade_id"]
    response = await api.http.post(f"/api/hitl/{rejected}/reject", json={}, headers=auth("bob"))
    assert response.status_code == 200
    slipped = (await create(api))["trade_id"]
    mid = api.gw.market.mid_price("EUR/USD")
    api.gw.market.set_price("EUR/USD", mid * Decimal("1.05"))
    try:
        assert await approve(api, slipped) == 409
    finally:
        api.gw.market.set_price("EUR/USD", mid)
    assert sample("hitl_rejections_total", reason="OPERATOR_REJECTED") == operator + 1
    assert sample("hitl_rejections_total", reason="SLIPPAGE_EXCEEDED") == slippage + 1


async def test_property_9_response_latency_observes_human_decisions(api: Api) -> None:
    before = sample("hitl_response_latency_seconds_count")
    trade_id = (await create(api))["trade_id"]
    assert await approve(api, trade_id) == 200
    assert sample("hitl_response_latency_seconds_count") == before + 1
    assert sample("hitl_response_latency_seconds_bucket", le="1.0") >= 1


async def test_property_9_blocked_by_guardian_counts_rejections_and_refusals(api: Api) -> None:
    before = sample("blocked_by_guardian_total")
    await create(api)
    await create(api)
    await lock(api)
    pending_refusal = await api.http.post(
        "/api/hitl/requests",
        json={
            "trade_id": "00000000-0000-4000-8000-000000000001",
            "instrument": "EUR/USD",
            "side": "BUY",
            "risk_pct": "1",
            "confidence": "0.5",
            "request_price": "1.1",
            "reasoning_summary": "x",
        },
        headers=auth("bot-1"),
    )
    assert pending_refusal.status_code == 423
    await unlock(api)
    # two pending approvals rejected by the cascade, and one refused request
    assert sample("blocked_by_guardian_total") == before + 3


async def test_pending_gauge_reads_the_database(api: Api) -> None:
    for _ in range(2):
        await create(api)
    metrics = (await api.http.get("/metrics")).text
    [line] = [m for m in metrics.splitlines() if m.startswith("hitl_pending_approvals ")]
    assert float(line.split()[1]) == 2.0


async def test_property_10_all_decisions_create_complete_audit_records(api: Api) -> None:
    approved = (await create(api))["trade_id"]
    rejected = (await create(api))["trade_id"]
    assert await approve(api, approved) == 200
    response = await api.http.post(
        f"/api/hitl/{rejected}/reject", json={"reason": "size"}, headers=auth("bob")
    )
    assert response.status_code == 200
    async with api.gw.sessions() as session:
        entries = (
            await session.execute(select(AuditRow).where(AuditRow.action == "approval.decided"))
        ).scalars()
        by_target = {entry.target_id: entry for entry in entries}
    for trade_id, actor, state in ((approved, "alice", "ACCEPTED"), (rejected, "bob", "REJECTED")):
        entry = by_target[trade_id]
        assert entry.actor_id == actor
        assert (entry.previous_state, entry.new_state) == ("AWAITING_APPROVAL", state)
        assert entry.payload["approval"]["trade_id"] == trade_id
        assert entry.payload["approval"]["status"] == state
        assert entry.payload["approval"]["row_hash"]
        assert entry.correlation_id == entry.payload["approval"]["correlation_id"]
        assert entry.created_at is not None


async def test_error_lines_carry_the_sec_code_and_the_request_correlation_id(api: Api) -> None:
    buffer = io.StringIO()
    configure_logging(stream=buffer)
    try:
        trade_id = (await create(api))["trade_id"]
        response = await api.http.post(
            f"/api/hitl/{trade_id}/approve",
            json={},
            headers={**auth("carol"), "X-Correlation-ID": "desk-7"},
        )
        assert response.status_code == 403
        logging.getLogger("temporalio.test").warning("a third-party line")
        structlog.get_logger("tests").info("a bare line")
    finally:
        configure_logging()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert all(key in line for key in REQUIRED_KEYS), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical")
    refusals = [line for line in lines if line.get("error_code") == "SEC-090"]
    assert refusals
    assert all(line["correlation_id"] == "desk-7" for line in refusals)
    assert all(line["level"] in ("warning", "error") for line in refusals)


# ---------------------------------------------------------------------------------------------
# Issue 18 item 8: the seed's metrics in the API's one scrape, counted from the database.
# ---------------------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SEED_FAMILIES = {
    "hitl_requests": "counter",
    "hitl_approvals": "counter",
    "hitl_rejections": "counter",
    "hitl_rejections_timeout": "counter",
    "hitl_response_latency_seconds": "histogram",
    "blocked_by_guardian": "counter",
    "hitl_pending_approvals": "gauge",
}


async def scrape(api: Api) -> Samples:
    """The API's /metrics as (sample name, labels) → value; each family appears once."""
    response = await api.http.get("/metrics")
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a metric family is exposed twice"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_the_api_scrape_holds_every_seed_metric(api: Api) -> None:
    response = await api.http.get("/metrics")
    kinds = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    for name, kind in SEED_FAMILIES.items():
        assert kinds.get(name) == kind, name
    for line in ("hitl_rejections_timeout_total ", "hitl_response_latency_seconds_bucket{"):
        assert line in response.text


async def test_the_api_scrape_counts_requests_and_decisions_from_the_database(api: Api) -> None:
    before = await scrape(api)
    approved, rejected, waiting = [(await create(api))["trade_id"] for _ in range(3)]
    assert await approve(api, approved) == 200
    assert await approve(api, approved) == 200  # a double click counts once
    answer = await api.http.post(f"/api/hitl/{rejected}/reject", json={}, headers=auth("bob"))
    assert answer.status_code == 200
    after = await scrape(api)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("hitl_requests_total") == 3
    assert moved("hitl_approvals_total") == 1
    assert moved("hitl_rejections_total", reason="OPERATOR_REJECTED") == 1
    assert moved("hitl_rejections_timeout_total") == 0
    assert moved("hitl_response_latency_seconds_count") == 2
    assert moved("hitl_response_latency_seconds_bucket", le="60.0") == 2
    assert moved("hitl_response_latency_seconds_bucket", le="+Inf") == 2
    assert 0 <= moved("hitl_response_latency_seconds_sum") < 2 * 60
    assert value(after, "hitl_pending_approvals") >= 1
    assert waiting  # still pending: counted as a request only
    # The totals are the database's: a trade's lifecycle does not make it a second acceptance.
    for step in ("fill", "close", "settle"):
        await _wait_snapshot(api, approved)
        answer = await api.http.post(
            f"/api/hitl/{approved}/{step}", json={"details": {}}, headers=auth("bot-1")
        )
        assert answer.status_code == 200, answer.text
    assert value(await scrape(api), "hitl_approvals_total") == value(after, "hitl_approvals_total")


async def _wait_snapshot(api: Api, trade_id: str) -> None:
    for _ in range(100):
        detail = (await api.http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))).json()
        if detail["snapshot"] is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no post-trade snapshot")


async def test_the_api_scrape_counts_each_expiry_once(api: Api) -> None:
    api.gw.policy = make_policy(timeout_seconds=1)
    worker_before = sample("hitl_rejections_timeout_total")
    before = await scrape(api)
    trade_id = (await create(api))["trade_id"]
    for _ in range(100):
        detail = (await api.http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))).json()
        if detail["approval"]["status"] == "REJECTED":
            break
        await asyncio.sleep(0.1)
    assert detail["approval"]["decision_reason"] == "HITL_TIMEOUT"
    await asyncio.sleep(0.5)  # room for a (wrong) second count
    after = await scrape(api)
    assert (
        value(after, "hitl_rejections_timeout_total")
        - value(before, "hitl_rejections_timeout_total")
        == 1
    )
    assert (
        value(after, "hitl_rejections_total", reason="HITL_TIMEOUT")
        - value(before, "hitl_rejections_total", reason="HITL_TIMEOUT")
        == 1
    )
    # Not a human decision: no latency observed.
    assert value(after, "hitl_response_latency_seconds_count") == value(
        before, "hitl_response_latency_seconds_count"
    )
    # The worker's own scrape counted it exactly once too.
    assert sample("hitl_rejections_timeout_total") == worker_before + 1


async def test_the_api_scrape_counts_what_the_guardian_blocked(api: Api) -> None:
    before = await scrape(api)
    await create(api)
    await create(api)
    await lock(api)
    refused = await api.http.post(
        "/api/hitl/requests",
        json={
            "trade_id": "00000000-0000-4000-8000-000000000002",
            "instrument": "EUR/USD",
            "side": "BUY",
            "risk_pct": "1",
            "confidence": "0.5",
            "request_price": "1.1",
            "reasoning_summary": "x",
        },
        headers=auth("bot-1"),
    )
    assert refused.status_code == 423
    await unlock(api)
    after = await scrape(api)
    # The two pending approvals the cascade rejected, from the database ...
    database = value(after, "blocked_by_guardian_total", source="database") - value(
        before, "blocked_by_guardian_total", source="database"
    )
    assert database == 2
    assert (
        value(after, "hitl_rejections_total", reason="GUARDIAN_LOCK")
        - value(before, "hitl_rejections_total", reason="GUARDIAN_LOCK")
        == 2
    )
    # ... and the request refused at this process's door (here the worker shares the process,
    # so its own counts of the cascade land in the same registry).
    process = value(after, "blocked_by_guardian_total", source="process") - value(
        before, "blocked_by_guardian_total", source="process"
    )
    assert process >= 1
