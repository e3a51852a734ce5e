"""The AES-GCM payload codec: round trip, wrong key, tampering, rotation, plaintext passthrough,
and the data converter built on it (a proposal and a failure's message leave it as ciphertext)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from hitl.errors import ErrorCode
from hitl.keys import KeyPurpose, Keyring, KeyringFile, new_keyring, write_keyring
from hitl.models import TradeProposal
from tests.strategies import trade_proposals
from workflows.codec import (
    ENCODING,
    KEY_ID,
    NONCE_BYTES,
    EncryptionCodec,
    PayloadDecryptionError,
    encrypted_data_converter,
)

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
RING = new_keyring(KeyPurpose.PAYLOADS, now=NOW)

payloads = st.builds(
    Payload,
    metadata=st.dictionaries(st.text(min_size=1, max_size=20), st.binary(max_size=40), max_size=4),
    data=st.binary(max_size=2048),
)


def _payload(text: bytes = b'"Breakout above resistance"') -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text)


@given(st.lists(payloads, max_size=5))
async def test_every_payload_survives_a_round_trip(originals: list[Payload]) -> None:
    codec = EncryptionCodec(RING)
    encoded = await codec.encode(originals)
    assert len(encoded) == len(originals)
    for sealed in encoded:
        assert sealed.metadata["encoding"] == ENCODING
        assert sealed.metadata[KEY_ID] == RING.active_id.encode()
    assert await codec.decode(encoded) == originals


@given(payloads)
async def test_ciphertext_never_contains_the_plain_data(original: Payload) -> None:
    (sealed,) = await EncryptionCodec(RING).encode([original])
    assert set(sealed.metadata) == {"encoding", KEY_ID}  # the original metadata is sealed too
    if len(original.data) >= 8:
        assert original.data not in sealed.data


async def test_each_payload_gets_its_own_nonce() -> None:
    codec = EncryptionCodec(RING)
    first, second = await codec.encode([_payload(), _payload()])
    assert first.data[:NONCE_BYTES] != second.data[:NONCE_BYTES]
    assert first.data != second.data


async def test_another_keyring_cannot_read_it() -> None:
    (sealed,) = await EncryptionCodec(RING).encode([_payload()])
    stranger = EncryptionCodec(new_keyring(KeyPurpose.PAYLOADS, now=NOW))
    with pytest.raises(PayloadDecryptionError) as refused:
        await stranger.decode([sealed])
    assert refused.value.error is ErrorCode.INTEGRITY_FAILURE
    assert refused.value.key_id == RING.active_id
    assert "unknown key id" in refused.value.message


async def test_same_key_id_with_other_bytes_fails_authentication() -> None:
    (sealed,) = await EncryptionCodec(RING).encode([_payload()])
    other = new_keyring(KeyPurpose.PAYLOADS, now=NOW).active()
    impostor = Keyring(
        purpose=KeyPurpose.PAYLOADS,
        active_id=RING.active_id,
        keys={RING.active_id: type(other)(id=RING.active_id, secret=other.secret, created_at=NOW)},
    )
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await EncryptionCodec(impostor).decode([sealed])


@given(st.data())
async def test_any_altered_byte_is_detected(data: st.DataObject) -> None:
    codec = EncryptionCodec(RING)
    (sealed,) = await codec.encode([_payload()])
    index = data.draw(st.integers(min_value=0, max_value=len(sealed.data) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    altered = bytearray(sealed.data)
    altered[index] ^= flip
    tampered = Payload(metadata=dict(sealed.metadata), data=bytes(altered))
    with pytest.raises(PayloadDecryptionError):
        await codec.decode([tampered])


async def test_a_truncated_payload_is_refused_not_crashed_on() -> None:
    codec = EncryptionCodec(RING)
    (sealed,) = await codec.encode([_payload()])
    for length in (0, 5, NONCE_BYTES, NONCE_BYTES + 15):
        cut = Payload(metadata=dict(sealed.metadata), data=sealed.data[:length])
        with pytest.raises(PayloadDecryptionError):
            await codec.decode([cut])


async def test_relabelling_with_another_known_key_id_is_detected() -> None:
    rotated = RING.rotated(now=NOW + timedelta(days=1), grace=None)
    codec = EncryptionCodec(rotated)
    (sealed,) = await codec.encode([_payload()])
    relabelled = Payload(
        metadata={"encoding": ENCODING, KEY_ID: RING.active_id.encode()}, data=sealed.data
    )
    with pytest.raises(PayloadDecryptionError):
        await codec.decode([relabelled])


async def test_after_rotation_new_payloads_use_the_new_key_and_old_ones_still_decrypt() -> None:
    (old,) = await EncryptionCodec(RING).encode([_payload(b'"before"')])
    # Even past a grace period: a history recorded under the old key must still replay.
    rotated = RING.rotated(now=NOW + timedelta(days=1), grace=timedelta(seconds=1))
    codec = EncryptionCodec(rotated)
    assert codec.active_key_id == rotated.active_id != RING.active_id
    (new,) = await codec.encode([_payload(b'"after"')])
    assert new.metadata[KEY_ID] == rotated.active_id.encode()
    assert [p.data for p in await codec.decode([old, new])] == [b'"before"', b'"after"']
    # The keyring from before the rotation cannot read what the new key sealed.
    with pytest.raises(PayloadDecryptionError):
        await EncryptionCodec(RING).decode([new])


async def test_a_rotation_on_disk_reaches_a_running_codec(tmp_path: Path) -> None:
    # The API encrypts with the new key a moment after `hitl keys rotate payloads`: a worker that
    # started before must decrypt it without a restart.
    write_keyring(tmp_path, RING)
    worker = EncryptionCodec(KeyringFile(tmp_path, KeyPurpose.PAYLOADS))
    (before,) = await worker.encode([_payload(b'"before"')])
    rotated = RING.rotated(now=NOW + timedelta(days=1), grace=None)
    write_keyring(tmp_path, rotated)
    api = EncryptionCodec(KeyringFile(tmp_path, KeyPurpose.PAYLOADS))
    (after,) = await api.encode([_payload(b'"after"')])
    assert after.metadata[KEY_ID] == rotated.active_id.encode()
    assert [p.data for p in await worker.decode([before, after])] == [b'"before"', b'"after"']
    assert worker.active_key_id == rotated.active_id


@given(st.lists(payloads, max_size=5))
async def test_payloads_without_encryption_metadata_pass_through(plain: list[Payload]) -> None:
    plain = [p for p in plain if p.metadata.get("encoding") != ENCODING]
    assert await EncryptionCodec(RING).decode(plain) == plain


async def test_mixed_histories_decode_payload_by_payload() -> None:
    codec = EncryptionCodec(RING)
    before = _payload(b'"recorded before encryption"')
    (after,) = await codec.encode([_payload(b'"recorded after"')])
    assert [p.data for p in await codec.decode([before, after])] == [
        b'"recorded before encryption"',
        b'"recorded after"',
    ]


def test_only_the_payloads_keyring_may_encrypt() -> None:
    with pytest.raises(ValueError, match="payloads keyring"):
        EncryptionCodec(new_keyring(KeyPurpose.COMMANDS, now=NOW))


@given(trade_proposals())
async def test_the_data_converter_seals_a_proposal(proposal: TradeProposal) -> None:
    converter = encrypted_data_converter(RING)
    (sealed,) = await converter.encode([proposal])
    assert sealed.metadata["encoding"] == ENCODING
    # Long enough that no ciphertext holds them by chance: the field names and the trade id.
    assert b"reasoning_summary" not in sealed.SerializeToString()
    assert str(proposal.trade_id).encode() not in sealed.SerializeToString()
    (back,) = await converter.decode([sealed], [TradeProposal])
    assert back == proposal


async def test_the_data_converter_seals_failure_messages_and_details() -> None:
    converter = encrypted_data_converter(RING)
    error = ApplicationError(
        "SEC-090: alice wrote: secret comment", {"comment": "secret comment"}, type="SEC-090"
    )
    failure = Failure()
    await converter.encode_failure(error, failure)
    assert b"secret comment" not in failure.SerializeToString()
    back = await converter.decode_failure(failure)
    assert isinstance(back, ApplicationError)
    assert back.message == "SEC-090: alice wrote: secret comment"
    assert back.details == ({"comment": "secret comment"},)
