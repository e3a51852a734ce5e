"""Signed commands: a proof holds for its workflow, action, payload, key and window only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl.keys import KeyPurpose, new_keyring
from hitl.models import TradeProposal
from hitl.signing import (
    CLOCK_SKEW,
    DEFAULT_VALIDITY,
    MAX_VALIDITY,
    CommandAction,
    CommandProof,
    Refusal,
    SeenProofs,
    payload_digest,
    sign_command,
    verify_command,
)
from tests.strategies import texts, trade_proposals, utc_datetimes

T0 = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
RING = new_keyring(KeyPurpose.COMMANDS, now=T0)
OTHER_RING = new_keyring(KeyPurpose.COMMANDS, now=T0)

workflow_ids = st.text(min_size=1, max_size=60)
actions = st.sampled_from(CommandAction)
times = utc_datetimes(
    min_value=datetime(2001, 1, 1, tzinfo=UTC), max_value=datetime(2099, 1, 1, tzinfo=UTC)
)
offsets = st.timedeltas(min_value=timedelta(0), max_value=DEFAULT_VALIDITY)


def _sign(workflow_id: str, action: CommandAction, payload: Any, now: datetime) -> CommandProof:
    return sign_command(RING, workflow_id=workflow_id, action=action, payload=payload, now=now)


def _verify(
    proof: CommandProof | None,
    workflow_id: str,
    action: CommandAction,
    payload: Any,
    now: datetime,
    ring: Any = RING,
) -> Refusal | None:
    return verify_command(
        ring, proof, workflow_id=workflow_id, action=action, payload=payload, now=now
    )


@given(workflow_ids, actions, trade_proposals(), times, offsets)
def test_the_gateway_s_proof_verifies_throughout_its_window(
    workflow_id: str, action: CommandAction, proposal: TradeProposal, now: datetime, after: Any
) -> None:
    proof = _sign(workflow_id, action, proposal, now)
    assert proof.key_id == RING.active_id
    assert proof.not_after - proof.issued_at == DEFAULT_VALIDITY
    assert _verify(proof, workflow_id, action, proposal, now + after) is None


@given(workflow_ids, workflow_ids, actions, trade_proposals(), times)
def test_a_proof_for_another_workflow_is_refused(
    workflow_id: str, other: str, action: CommandAction, proposal: TradeProposal, now: datetime
) -> None:
    proof = _sign(workflow_id, action, proposal, now)
    expected = None if other == workflow_id else Refusal.NOT_SIGNED
    assert _verify(proof, other, action, proposal, now) is expected


@given(workflow_ids, actions, actions, trade_proposals(), times)
def test_a_proof_for_another_action_is_refused(
    workflow_id: str,
    action: CommandAction,
    other: CommandAction,
    proposal: TradeProposal,
    now: datetime,
) -> None:
    proof = _sign(workflow_id, action, proposal, now)
    expected = None if other is action else Refusal.NOT_SIGNED
    assert _verify(proof, workflow_id, other, proposal, now) is expected


_CHANGES: dict[str, Any] = {
    "trade_id": st.uuids(),
    "instrument": st.sampled_from(["EUR/USD", "BTC-PERP", "AAPL"]),
    "side": st.sampled_from(["BUY", "SELL"]),
    "request_price": st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**6), places=2),
    "reasoning_summary": texts(max_size=50),
}


@given(workflow_ids, actions, trade_proposals(), times, st.data())
def test_a_proof_for_another_payload_is_refused(
    workflow_id: str, action: CommandAction, proposal: TradeProposal, now: datetime, data: Any
) -> None:
    field = data.draw(st.sampled_from(sorted(_CHANGES)))
    value = data.draw(_CHANGES[field])
    changed = TradeProposal.model_validate(proposal.model_dump() | {field: value})
    proof = _sign(workflow_id, action, proposal, now)
    same = getattr(changed, field) == getattr(proposal, field)
    assert _verify(proof, workflow_id, action, changed, now) is (
        None if same else Refusal.NOT_SIGNED
    )


@given(workflow_ids, actions, trade_proposals(), times)
def test_no_proof_or_another_key_s_proof_is_refused(
    workflow_id: str, action: CommandAction, proposal: TradeProposal, now: datetime
) -> None:
    assert _verify(None, workflow_id, action, proposal, now) is Refusal.NOT_SIGNED
    forged = sign_command(
        OTHER_RING, workflow_id=workflow_id, action=action, payload=proposal, now=now
    )
    assert _verify(forged, workflow_id, action, proposal, now) is Refusal.NOT_SIGNED
    # Even under this keyring's key id, the other key's MAC is no proof.
    renamed = forged.model_copy(update={"key_id": RING.active_id})
    assert _verify(renamed, workflow_id, action, proposal, now) is Refusal.NOT_SIGNED


@given(
    workflow_ids,
    actions,
    trade_proposals(),
    times,
    st.sampled_from(["key_id", "nonce", "issued_at", "not_after", "mac"]),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=1)),
)
def test_any_change_to_the_proof_itself_is_refused(
    workflow_id: str,
    action: CommandAction,
    proposal: TradeProposal,
    now: datetime,
    field: str,
    shift: timedelta,
) -> None:
    proof = _sign(workflow_id, action, proposal, now)
    changes: dict[str, Any] = {
        "key_id": proof.key_id + "x",
        "nonce": ("0" if proof.nonce[0] != "0" else "1") + proof.nonce[1:],
        "issued_at": proof.issued_at - shift,
        "not_after": proof.not_after + shift,
        "mac": ("0" if proof.mac[0] != "0" else "1") + proof.mac[1:],
    }
    tampered = proof.model_copy(update={field: changes[field]})
    assert _verify(tampered, workflow_id, action, proposal, now) is Refusal.NOT_SIGNED


@given(
    workflow_ids,
    actions,
    trade_proposals(),
    times,
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)),
)
def test_a_proof_is_refused_after_its_window_and_long_before_it(
    workflow_id: str, action: CommandAction, proposal: TradeProposal, now: datetime, late: Any
) -> None:
    proof = _sign(workflow_id, action, proposal, now)
    assert _verify(proof, workflow_id, action, proposal, proof.not_after + late) is (
        Refusal.EXPIRED
    )
    early = proof.issued_at - CLOCK_SKEW - late
    assert _verify(proof, workflow_id, action, proposal, early) is Refusal.EXPIRED
    # A signer whose clock runs a little ahead is tolerated.
    assert _verify(proof, workflow_id, action, proposal, proof.issued_at - CLOCK_SKEW) is None


@given(
    trade_proposals(),
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30)),
    st.timedeltas(min_value=timedelta(0), max_value=DEFAULT_VALIDITY),
)
def test_after_rotation_the_old_key_verifies_during_the_grace_only(
    proposal: TradeProposal, grace: timedelta, after: timedelta
) -> None:
    old_ring = new_keyring(KeyPurpose.COMMANDS, now=T0)
    signed_at = T0 + timedelta(days=1)
    proof = sign_command(
        old_ring, workflow_id="w", action=CommandAction.APPROVE, payload=proposal, now=signed_at
    )
    rotated_at = signed_at + after
    ring = old_ring.rotated(now=rotated_at, grace=grace)
    within = rotated_at + min(grace, proof.not_after - rotated_at)
    assert _verify(proof, "w", CommandAction.APPROVE, proposal, within, ring) is None
    beyond = rotated_at + grace + timedelta(microseconds=1)
    assert _verify(proof, "w", CommandAction.APPROVE, proposal, beyond, ring) is (
        Refusal.NOT_SIGNED
    )
    # The new key signs, and what it signs verifies.
    fresh = sign_command(
        ring, workflow_id="w", action=CommandAction.APPROVE, payload=proposal, now=rotated_at
    )
    assert fresh.key_id == ring.active_id != old_ring.active_id
    assert _verify(fresh, "w", CommandAction.APPROVE, proposal, rotated_at, ring) is None
    assert _verify(fresh, "w", CommandAction.APPROVE, proposal, rotated_at, old_ring) is (
        Refusal.NOT_SIGNED
    )


def test_a_proof_may_hold_only_a_short_while() -> None:
    for validity in (timedelta(0), MAX_VALIDITY + timedelta(microseconds=1)):
        with pytest.raises(ValueError, match="at most"):
            sign_command(
                RING,
                workflow_id="w",
                action=CommandAction.START,
                payload=None,
                now=T0,
                validity=validity,
            )


@given(trade_proposals())
def test_the_digest_ignores_the_proof_and_the_spelling_of_amounts(proposal: TradeProposal) -> None:
    respelled = proposal.model_copy(
        update={"request_price": Decimal(f"{proposal.request_price:.8f}")}
    )
    assert payload_digest(respelled) == payload_digest(proposal)
    as_mapping = {**proposal.model_dump(exclude_defaults=True), "proof": "anything"}
    assert payload_digest(as_mapping) == payload_digest(proposal)


def test_the_digest_does_not_depend_on_the_order_of_a_set() -> None:
    # A set is signed as its sorted members, whatever order this process iterates it in.
    assert payload_digest({"ops": frozenset({"carol", "alice", "bob"})}) == payload_digest(
        {"ops": ["alice", "bob", "carol"]}
    )
    assert payload_digest({"a": 1}) != payload_digest({"a": "1"})
    assert payload_digest({"a": 1}) != payload_digest({"a": Decimal(1)})


def test_seen_proofs_remember_what_still_holds() -> None:
    proof = _sign("w", CommandAction.GUARDIAN_UNLOCK, None, T0)
    other = _sign("w", CommandAction.GUARDIAN_UNLOCK, None, T0)
    seen = SeenProofs()
    assert proof not in seen
    seen.remember(proof, now=T0)
    assert proof in seen and other not in seen
    # Once a proof has lapsed it cannot be replayed anyway: it is forgotten.
    seen.remember(other, now=proof.not_after + CLOCK_SKEW + timedelta(seconds=1))
    assert proof not in seen and other in seen
    assert SeenProofs(seen.entries).entries == seen.entries


def test_a_signer_signs_a_command_under_the_active_key_at_its_clock() -> None:
    from hitl.errors import ErrorCode
    from hitl.messages import GuardianCommand
    from hitl.signing import CommandSigner

    signer = CommandSigner(lambda: RING, clock=lambda: T0)
    command = GuardianCommand(reason="drawdown", by="admin", correlation_id="c")
    signed = signer.sign(command, workflow_id="g", action=CommandAction.GUARDIAN_LOCK)
    assert signed.proof is not None and signed.proof.issued_at == T0
    assert signed.model_copy(update={"proof": None}) == command
    assert _verify(signed.proof, "g", CommandAction.GUARDIAN_LOCK, signed, T0) is None
    unlock = signed.model_copy(update={"reason": "all clear"})
    assert _verify(signed.proof, "g", CommandAction.GUARDIAN_LOCK, unlock, T0) is (
        Refusal.NOT_SIGNED
    )
    assert Refusal.NOT_SIGNED.error is ErrorCode.COMMAND_NOT_SIGNED
    assert Refusal.EXPIRED.error is Refusal.REPLAYED.error is ErrorCode.COMMAND_EXPIRED
