"""The payload codec: every payload Temporal stores is AES-GCM ciphertext under a key only the
gateway holds (issue #14 item 5).

Each payload is encrypted whole (its metadata and data, serialised) under the PAYLOADS keyring's
active key, with a fresh 96-bit nonce, and stored as ``encoding: binary/encrypted`` with the key's
id in ``encryption-key-id``; decoding picks the key by that id, so old keys keep decrypting after
a rotation. Payloads without that encoding pass through untouched: histories recorded before
encryption was switched on still replay. The layout follows temporalio/samples-python
``encryption/codec.py``, so the Temporal UI's remote-codec protocol (``api/routes/codec.py``) can
serve it.

The codec runs outside the workflow sandbox (the SDK applies it around the workflow), so it may
use randomness freely.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from hitl.errors import ErrorCode, HITLError
from hitl.keys import KeyPurpose, Keyring, KeyringFile

ENCODING = b"binary/encrypted"
"""The ``encoding`` metadata of an encrypted payload (the samples' and the Temporal UI's name)."""
KEY_ID = "encryption-key-id"
"""The metadata entry naming the key a payload was encrypted with."""
NONCE_BYTES = 12
"""AES-GCM's standard 96-bit nonce, random per payload, stored before the ciphertext."""
_AAD = b"hitl-payload-v1:"
"""Associated data (with the key id appended): a payload cannot be relabelled with another key id,
and a ciphertext made for another purpose under the same bytes would not authenticate."""


class PayloadDecryptionError(HITLError):
    """A payload that claims to be ours but does not decrypt: unknown key id, or altered bytes.

    The message names the key id, never anything of the payload's contents.
    """

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(ErrorCode.INTEGRITY_FAILURE, message, key_id=key_id)
        self.key_id = key_id


class EncryptionCodec(PayloadCodec):
    """AES-GCM over every payload, keyed by the PAYLOADS keyring.

    Encrypts with the keyring's active key; decrypts with whichever key the payload names, retired
    or not: a history recorded under an old key must still replay for as long as Temporal keeps it
    (see docs/security.md, "Rotating keys"). Given a :class:`KeyringFile`, it follows a rotation
    (``hitl keys rotate payloads``) without a restart: a worker must decrypt what an API process
    encrypted with the new key a moment after the rotation.
    """

    def __init__(self, keys: Keyring | KeyringFile) -> None:
        if keys.purpose is not KeyPurpose.PAYLOADS:
            raise ValueError(f"the payload codec needs the payloads keyring, not {keys.purpose}")
        self._source = keys
        self._keyring: Keyring | None = None
        self._ciphers: dict[str, AESGCM] = {}
        self._current()

    def _current(self) -> tuple[str, dict[str, AESGCM]]:
        """The active key id and a cipher per known key, rebuilt when the keyring changes."""
        source = self._source
        keyring = source.current() if isinstance(source, KeyringFile) else source
        if keyring is not self._keyring:
            # AESGCM rejects a secret that is not 16, 24 or 32 bytes long here.
            self._ciphers = {key_id: AESGCM(key.secret) for key_id, key in keyring.keys.items()}
            self._keyring = keyring
        return keyring.active_id, self._ciphers

    @property
    def active_key_id(self) -> str:
        """The id of the key new payloads are encrypted with."""
        return self._current()[0]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt every payload under the active key."""
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt our payloads; pass through any payload that is not encrypted.

        Raises:
            PayloadDecryptionError: a payload names an unknown key or fails authentication.
        """
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """One payload, encrypted under the active key."""
        key_id, ciphers = self._current()
        nonce = os.urandom(NONCE_BYTES)
        sealed = ciphers[key_id].encrypt(nonce, payload.SerializeToString(), _AAD + key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        """One payload decrypted, or returned as it is when it carries no encryption metadata."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", errors="replace")
        cipher = self._current()[1].get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with unknown key id {key_id!r}; "
                "add that key to the payloads keyring",
                key_id=key_id,
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, _AAD + key_id.encode())
        except (InvalidTag, ValueError):
            # ValueError: a nonce of the wrong length (a truncated payload).
            raise PayloadDecryptionError(
                f"payload under key {key_id!r} failed authentication (altered or truncated)",
                key_id=key_id,
            ) from None
        return Payload.FromString(plain)


def encrypted_data_converter(keys: Keyring | KeyringFile) -> DataConverter:
    """The data converter of every client, worker and replayer: pydantic (our models carry
    Decimals), the payload codec, and failures whose message and stack trace are encoded too (an
    error message may quote an operator's comment)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
