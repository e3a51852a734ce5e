"""Rules for text that people and bots write: size bounds and the characters refused (pure).

Free text travels far: into the audit trail, logs, Discord messages and the operators' page. A
control character can forge log lines or terminal output, and a bidirectional override can make
a reasoning read differently from what it says (the "Trojan Source" attack, CVE-2021-42574).
So free text is refused, never silently cleaned: what was stored is what the sender sent.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field

FREE_TEXT_MAX_CHARS = 2000
"""A comment, a rejection's reason, a bot's reasoning, a Guardian lock's reason."""
DETAILS_MAX_BYTES = 8 * 1024
"""A lifecycle report's ``details`` as compact UTF-8 JSON."""
DETAILS_MAX_DEPTH = 4
"""Nesting of objects and arrays in ``details`` (the top-level object is depth 1)."""
DETAILS_MAX_KEY_CHARS = 64
"""Each key of ``details``, at any depth."""

BIDI_CONTROLS = frozenset(
    "\u061c"  # ARABIC LETTER MARK
    "\u200e\u200f"  # LEFT-TO-RIGHT / RIGHT-TO-LEFT MARK
    "\u202a\u202b\u202c\u202d\u202e"  # LRE, RLE, PDF, LRO, RLO
    "\u2066\u2067\u2068\u2069"  # LRI, RLI, FSI, PDI
)
"""Unicode's Bidi_Control characters: each reorders how the text around it is displayed."""

_ALLOWED_CONTROLS = frozenset("\t\n\r")
"""Layout characters a multi-line comment legitimately holds."""


def unsafe_character(text: str) -> str | None:
    """The first refused character of ``text`` as ``U+XXXX``, or None when it is clean.

    Refused: every control character (Unicode category Cc, C0 and C1) except tab, line feed and
    carriage return; the line and paragraph separators; every bidirectional control.
    """
    for char in text:
        if char in _ALLOWED_CONTROLS:
            continue
        if char in BIDI_CONTROLS or char in "\u2028\u2029" or unicodedata.category(char) == "Cc":
            return f"U+{ord(char):04X}"
    return None


def check_text(text: str) -> str:
    """``text`` unchanged if clean; ``ValueError`` naming the first refused character otherwise.

    Usable as a pydantic ``AfterValidator``.
    """
    found = unsafe_character(text)
    if found is not None:
        raise ValueError(f"control and bidirectional-override characters are refused ({found})")
    return text


SafeText = Annotated[str, Field(max_length=FREE_TEXT_MAX_CHARS), AfterValidator(check_text)]
"""Free text within its size bound, free of control and bidirectional-override characters."""


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


def _strings(value: Any) -> list[str]:
    """Every key and string value, at any depth."""
    if isinstance(value, dict):
        found = [str(key) for key in value]
        for item in value.values():
            found.extend(_strings(item))
        return found
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [str(key) for key in value] + [k for item in value.values() for k in _keys(item)]
    if isinstance(value, list):
        return [k for item in value for k in _keys(item)]
    return []


def check_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` unchanged if within its bounds; ``ValueError`` saying which bound it breaks.

    Bounds: :data:`DETAILS_MAX_BYTES` as compact JSON, :data:`DETAILS_MAX_DEPTH` levels,
    :data:`DETAILS_MAX_KEY_CHARS` per key, and every key and string clean (:func:`check_text`).
    Usable as a pydantic ``AfterValidator``.
    """
    size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > DETAILS_MAX_BYTES:
        raise ValueError(f"details hold {size} bytes as JSON; at most {DETAILS_MAX_BYTES}")
    if _depth(details) > DETAILS_MAX_DEPTH:
        raise ValueError(f"details nest deeper than {DETAILS_MAX_DEPTH} levels")
    for key in _keys(details):
        if len(key) > DETAILS_MAX_KEY_CHARS:
            raise ValueError(f"a details key is longer than {DETAILS_MAX_KEY_CHARS} characters")
    for text in _strings(details):
        check_text(text)
    return details


Details = Annotated[dict[str, Any], AfterValidator(check_details)]
"""A lifecycle report's free-form data within its bounds."""
