"""Structured JSON logging for every process: one JSON object per line, on stderr."""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

import structlog

REQUIRED_KEYS = ("correlation_id", "actor", "action", "result")
"""Keys every gateway log line carries; a line missing one gets ``"-"``."""


def _ensure_required_keys(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in REQUIRED_KEYS:
        event_dict.setdefault(key, "-")
    return event_dict


_SECRET_IN_URL = re.compile(r"(token=)[^&\s\"']+")


def _redact_secrets(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    # uvicorn logs request paths, and a browser's WebSocket or a deep link carries its token
    # in the query string: never write one to a log.
    for key, value in event_dict.items():
        if isinstance(value, str) and "token=" in value:
            event_dict[key] = _SECRET_IN_URL.sub(r"\1[redacted]", value)
    return event_dict


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (Temporal, uvicorn) through one JSON renderer,
    one object per line on ``stream`` (stderr by default)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _ensure_required_keys,
        _redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn configures its own plain-text handlers before it builds the app: hand its loggers
    # back to the root so that they, too, write JSON.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
