"""The JSON log format: every line an object with the required keys, tokens never written."""

from __future__ import annotations

import io
import json
import logging

import structlog

from hitl.logs import REQUIRED_KEYS, configure_logging


def test_lines_are_json_with_required_keys_and_no_tokens() -> None:
    buffer = io.StringIO()
    configure_logging(stream=buffer)
    try:
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/1.1" %d', "127.0.0.1", "GET", "/ws/hitl?token=s3cret&after=4", 101
        )
        structlog.get_logger("tests").error(
            "refused", error_code="SEC-090", correlation_id="c-1", actor="a", action="x"
        )
    finally:
        configure_logging()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert all(key in line for key in REQUIRED_KEYS)
        assert "timestamp" in line
        assert "level" in line
    assert "s3cret" not in buffer.getvalue()
    assert "token=[redacted]&after=4" in lines[0]["event"]
    assert lines[1]["error_code"] == "SEC-090"
    assert lines[1]["correlation_id"] == "c-1"
