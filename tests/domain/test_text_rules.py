"""Free-text rules: size bounds, control and bidirectional-override characters refused."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hitl.text_rules import (
    BIDI_CONTROLS,
    DETAILS_MAX_BYTES,
    DETAILS_MAX_DEPTH,
    DETAILS_MAX_KEY_CHARS,
    FREE_TEXT_MAX_CHARS,
    Details,
    SafeText,
    check_details,
    check_text,
    unsafe_character,
)


class Body(BaseModel):
    text: SafeText
    details: Details = {}


@pytest.mark.parametrize(
    "text",
    [
        "Breakout above the range high.",
        "Line one\nline two\r\n\tindented",
        "Ünïcödé, 日本語, emoji 📈 and عربي are text, not controls",
        "",
    ],
)
def test_clean_text_passes_unchanged(text: str) -> None:
    assert check_text(text) == text
    assert Body(text=text).text == text


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("before\x00after", "U+0000"),
        ("bell\x07", "U+0007"),
        ("escape \x1b[31mred", "U+001B"),
        ("delete\x7f", "U+007F"),
        ("c1 \x85 next line", "U+0085"),
        ("approve\u202e)lanigiro(", "U+202E"),
        ("isolate\u2066x\u2069", "U+2066"),
        ("mark\u200f", "U+200F"),
        ("arabic mark\u061c", "U+061C"),
        ("line\u2028separator", "U+2028"),
    ],
)
def test_controls_and_bidi_overrides_are_refused_and_named(text: str, named: str) -> None:
    assert unsafe_character(text) == named
    with pytest.raises(ValueError, match=re.escape(named)):
        check_text(text)
    with pytest.raises(ValidationError):
        Body(text=text)


@given(st.text(alphabet=st.characters(categories=["Cc"], exclude_characters="\t\n\r")))
def test_every_control_character_is_refused(text: str) -> None:
    assert (unsafe_character(text) is None) == (text == "")


@given(st.text(), st.sampled_from(sorted(BIDI_CONTROLS)), st.text())
def test_a_bidi_control_anywhere_is_refused(before: str, control: str, after: str) -> None:
    assert unsafe_character(before + control + after) is not None


def test_free_text_has_its_size_bound() -> None:
    Body(text="x" * FREE_TEXT_MAX_CHARS)
    with pytest.raises(ValidationError):
        Body(text="x" * (FREE_TEXT_MAX_CHARS + 1))


def test_details_within_bounds_pass_unchanged() -> None:
    details: dict[str, Any] = {"fill_price": "1.0842", "venue": {"name": "X", "legs": [1, 2]}}
    assert check_details(details) == details
    assert Body(text="", details=details).details == details


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("details", "problem"),
    [
        ({"blob": "x" * DETAILS_MAX_BYTES}, "bytes"),
        (_nested(DETAILS_MAX_DEPTH + 1), "deeper"),
        ({"k" * (DETAILS_MAX_KEY_CHARS + 1): 1}, "key"),
        ({"note": "hidden\u202eoverride"}, "U+202E"),
        ({"ok": [{"bad\x00key": 1}]}, "U+0000"),
    ],
)
def test_details_out_of_bounds_are_refused(details: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_details(details)


def test_details_at_the_depth_bound_pass() -> None:
    assert check_details(_nested(DETAILS_MAX_DEPTH)) == _nested(DETAILS_MAX_DEPTH)
