"""The banner ``make run`` prints once the gateway is ready: URLs, tokens and a first request."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from hitl.settings import Settings
from launcher.addresses import split_address, url_host
from launcher.demo_bot import DEMO_PRICES
from launcher.dev_defaults import DEV_PRINCIPALS, TOKENS_FILE

READY_LINE = "HITL gateway ready"
"""The banner's first line: scripts and tests wait for it on stdout."""


def banner(
    settings: Settings,
    *,
    temporal_started: bool,
    dev_tokens: Mapping[str, str] | None,
    demo: bool,
) -> str:
    """What a newcomer needs once the gateway is ready: URLs, tokens and a first request."""
    api = f"http://{url_host(settings.api.host)}:{settings.api.port}"
    temporal_host, _ = split_address(settings.temporal.address)
    if temporal_started:
        temporal_ui = f"http://{url_host(temporal_host)}:{settings.temporal.ui_port}"
    else:
        temporal_ui = f"(the server at {settings.temporal.address} was already running)"
    metrics_port = settings.worker.metrics_port
    worker_metrics = (
        f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "(on a random port)"
    )
    lines = [
        "=" * 78,
        f"  {READY_LINE}",
        "",
        f"  API docs        {api}/docs",
        f"  Operator page   {api}/",
        f"  API metrics     {api}/metrics",
        f"  Temporal UI     {temporal_ui}",
        f"  Worker metrics  {worker_metrics}",
        f"  Data folder     {settings.hitl.data_dir.resolve()}",
        "",
    ]
    if dev_tokens is None:
        lines.append("  API tokens      as declared in HITL_API_TOKENS")
        bot_token, operator_token = "$BOT_TOKEN", "$OPERATOR_TOKEN"
    else:
        tokens_file = settings.hitl.data_dir / TOKENS_FILE
        lines.append(f"  Development tokens (kept in {tokens_file}):")
        for principal, role in DEV_PRINCIPALS:
            lines.append(f"    {role:<9} {principal:<6} {dev_tokens[principal]}")
        bot_token, operator_token = dev_tokens["bot-1"], dev_tokens["alice"]
    trade_id = uuid.uuid4()
    body = (
        f'{{"trade_id":"{trade_id}","instrument":"EUR/USD","side":"BUY","risk_pct":"1.5",'
        f'"confidence":"0.8","request_price":"{DEMO_PRICES["EUR/USD"]}",'
        '"reasoning_summary":"My first request"}'
    )
    json_header = "-H 'Content-Type: application/json'"
    lines += [
        "",
        "  Create a request as the bot, then approve it as the operator:",
        f"    curl -s -X POST {api}/api/hitl/requests -H 'Authorization: Bearer {bot_token}'"
        f" {json_header} -d '{body}'",
        f"    curl -s -X POST {api}/api/hitl/{trade_id}/approve"
        f" -H 'Authorization: Bearer {operator_token}' {json_header} -d '{{\"comment\":\"ok\"}}'",
        "",
    ]
    if demo:
        lines.append(
            "  The demo bot proposes a trade now and then; decide them on the operator page."
        )
    lines += ["  Ctrl-C stops everything; running again resumes where it stopped.", "=" * 78]
    return "\n".join(lines)
