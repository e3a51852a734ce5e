"""The error catalogue: unique SEC-xxx codes, HTTP statuses, and the exceptions carrying them."""

from __future__ import annotations

import re

import pytest

from hitl.errors import ConfigurationError, ErrorCode, HITLError


def test_every_code_is_unique_and_well_formed() -> None:
    codes = [member.code for member in ErrorCode]
    assert len(codes) == len(set(codes))
    for code in codes:
        assert re.fullmatch(r"SEC-\d{3}", code), code


def test_every_error_has_an_http_error_status_and_a_message() -> None:
    for member in ErrorCode:
        assert 400 <= member.http_status <= 599, member
        assert member.message.strip(), member
        assert member.message.endswith("."), member


@pytest.mark.parametrize("member", list(ErrorCode), ids=lambda member: member.name)
def test_from_code_round_trips(member: ErrorCode) -> None:
    assert ErrorCode.from_code(member.code) is member


@pytest.mark.parametrize("code", ["SEC-999", "SEC-1", "sec-001", "", "401"])
def test_from_code_refuses_unknown_codes(code: str) -> None:
    with pytest.raises(KeyError):
        ErrorCode.from_code(code)


@pytest.mark.parametrize(
    ("code", "name", "http_status"),
    [
        ("SEC-001", "UNAUTHENTICATED", 401),
        ("SEC-020", "GUARDIAN_LOCKED", 423),
        ("SEC-030", "INVALID_TRANSITION", 409),
        ("SEC-040", "CONFIGURATION", 500),
        ("SEC-050", "SLIPPAGE_EXCEEDED", 409),
        ("SEC-080", "INTEGRITY_FAILURE", 409),
        ("SEC-090", "UNAUTHORISED_OPERATOR", 403),
    ],
)
def test_the_seed_s_codes_mean_what_the_plan_says(code: str, name: str, http_status: int) -> None:
    member = ErrorCode.from_code(code)
    assert member is ErrorCode[name]
    assert member.http_status == http_status


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (ErrorCode.UNAUTHENTICATED, "token"),
        (ErrorCode.GUARDIAN_LOCKED, "Guardian"),
        (ErrorCode.INVALID_TRANSITION, "transition"),
        (ErrorCode.CONFIGURATION, "configuration"),
        (ErrorCode.SLIPPAGE_EXCEEDED, "slippage"),
        (ErrorCode.INTEGRITY_FAILURE, "integrity"),
        (ErrorCode.UNAUTHORISED_OPERATOR, "may not"),
    ],
)
def test_messages_say_what_went_wrong(member: ErrorCode, words: str) -> None:
    assert words.lower() in member.message.lower()


def test_hitl_error_carries_code_message_and_details() -> None:
    error = HITLError(ErrorCode.SLIPPAGE_EXCEEDED, deviation_pct="0.75", max_pct="0.5")
    assert error.error is ErrorCode.SLIPPAGE_EXCEEDED
    assert error.message == ErrorCode.SLIPPAGE_EXCEEDED.message
    assert error.details == {"deviation_pct": "0.75", "max_pct": "0.5"}
    assert str(error) == f"SEC-050: {ErrorCode.SLIPPAGE_EXCEEDED.message}"


def test_hitl_error_takes_a_specific_message() -> None:
    error = HITLError(ErrorCode.GUARDIAN_LOCKED, "Guardian locked: drawdown limit")
    assert str(error) == "SEC-020: Guardian locked: drawdown limit"
    assert error.details == {}


def test_configuration_error_names_the_variable() -> None:
    error = ConfigurationError("HITL_ALLOWED_OPERATORS", "is required")
    assert isinstance(error, HITLError)
    assert error.error is ErrorCode.CONFIGURATION
    assert error.variable == "HITL_ALLOWED_OPERATORS"
    assert error.details == {"variable": "HITL_ALLOWED_OPERATORS"}
    assert str(error) == "SEC-040: HITL_ALLOWED_OPERATORS is required"
