"""Proof of origin: the gateway signs every command that can change an approval or the Guardian.

Anyone who can reach Temporal can send a workflow an Update or start one; only the gateway holds
the commands key. A :class:`CommandProof` is an HMAC-SHA256, under that key, over a canonical
encoding of the key id, the workflow id, the action, when the proof was issued and until when it
holds, a random nonce and a digest of the command's own fields. So a proof

- cannot be made without the key (``NOT_SIGNED``);
- says nothing about another workflow, another action or another payload (``NOT_SIGNED``);
- lapses after a short window (``EXPIRED``), and a workflow that remembers the proofs it has
  accepted refuses the same one twice (``REPLAYED``, see :class:`SeenProofs`).

Pure: no clock (callers pass ``now``), no I/O; the keyring comes from ``hitl.keys``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from hitl.errors import ErrorCode
from hitl.keys import KeyPurpose, Keyring, KeyringFile
from hitl.models import UtcDatetime

PROOF_FIELD = "proof"
"""The field of a command model that carries its proof; never part of what is signed."""

DEFAULT_VALIDITY = timedelta(seconds=60)
"""How long a proof holds: long enough for a command to reach a busy worker, too short to keep a
captured one for later."""
MAX_VALIDITY = timedelta(minutes=5)
"""No proof is accepted that claims to hold longer, whoever made it."""
CLOCK_SKEW = timedelta(seconds=30)
"""How far the signer's clock may run ahead of the verifier's."""

_VERSION = 1


class CommandAction(StrEnum):
    """What a signed command does; a proof for one action is worthless for any other."""

    START = "approval.start"
    APPROVE = "approval.approve"
    REJECT = "approval.reject"
    ADVANCE = "approval.advance"
    LOCK_NOTICE = "approval.guardian_locked"
    GUARDIAN_LOCK = "guardian.lock"
    GUARDIAN_UNLOCK = "guardian.unlock"


class Refusal(StrEnum):
    """Why a command's proof was refused (also the ``reason`` label of the refusal metric)."""

    NOT_SIGNED = "not_signed"
    """No proof, an unknown or retired key id, or a MAC that does not match this workflow,
    action and payload: not the gateway's command."""
    EXPIRED = "expired"
    """Signed by the gateway, but outside its validity window."""
    REPLAYED = "replayed"
    """Signed by the gateway and already used once."""

    @property
    def error(self) -> ErrorCode:
        """The SEC code the command is refused with."""
        return (
            ErrorCode.COMMAND_NOT_SIGNED
            if self is Refusal.NOT_SIGNED
            else ErrorCode.COMMAND_EXPIRED
        )


class CommandProof(BaseModel):
    """The gateway's signature on one command, for one workflow and one action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(min_length=1, max_length=128)
    nonce: str = Field(min_length=16, max_length=64)
    issued_at: UtcDatetime
    not_after: UtcDatetime
    mac: str = Field(min_length=64, max_length=64)


def payload_digest(payload: BaseModel | Mapping[str, Any] | None) -> str:
    """The SHA-256 hex of a command's canonical form, without its ``proof`` field.

    Fields equal to their defaults are left out, so a field added later with a default does not
    change the digest of commands that do not use it; sets are sorted, so the digest is the same
    in every process whatever its hash seed.
    """
    if payload is None:
        fields: Any = None
    elif isinstance(payload, BaseModel):
        fields = payload.model_dump(exclude={PROOF_FIELD}, exclude_defaults=True)
    else:
        fields = {k: v for k, v in payload.items() if k != PROOF_FIELD}
    text = json.dumps(_canonical(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def sign_command(
    keyring: Keyring,
    *,
    workflow_id: str,
    action: CommandAction,
    payload: BaseModel | Mapping[str, Any] | None,
    now: datetime,
    validity: timedelta = DEFAULT_VALIDITY,
) -> CommandProof:
    """A proof, under the keyring's active key, that the gateway issued this command now."""
    if not timedelta(0) < validity <= MAX_VALIDITY:
        raise ValueError(f"a proof holds for more than 0 s and at most {MAX_VALIDITY}")
    key = keyring.active()
    issued_at = now.astimezone(UTC)
    not_after = issued_at + validity
    nonce = secrets.token_hex(16)
    mac = _mac(
        key.secret,
        key_id=key.id,
        workflow_id=workflow_id,
        action=action,
        issued_at=issued_at,
        not_after=not_after,
        nonce=nonce,
        digest=payload_digest(payload),
    )
    return CommandProof(
        key_id=key.id, nonce=nonce, issued_at=issued_at, not_after=not_after, mac=mac
    )


def verify_command(
    keyring: Keyring,
    proof: CommandProof | None,
    *,
    workflow_id: str,
    action: CommandAction,
    payload: BaseModel | Mapping[str, Any] | None,
    now: datetime,
) -> Refusal | None:
    """None when ``proof`` is the gateway's, for this workflow, action and payload, and holds at
    ``now``; otherwise why not. The MAC is checked first, so input that is not the gateway's is
    ``NOT_SIGNED`` whatever times it claims."""
    if proof is None:
        return Refusal.NOT_SIGNED
    key = keyring.for_verify(proof.key_id, now)
    if key is None:
        return Refusal.NOT_SIGNED
    expected = _mac(
        key.secret,
        key_id=proof.key_id,
        workflow_id=workflow_id,
        action=action,
        issued_at=proof.issued_at,
        not_after=proof.not_after,
        nonce=proof.nonce,
        digest=payload_digest(payload),
    )
    if not hmac.compare_digest(expected.encode("ascii"), proof.mac.encode("ascii", "replace")):
        return Refusal.NOT_SIGNED
    if proof.not_after - proof.issued_at > MAX_VALIDITY or proof.not_after < proof.issued_at:
        return Refusal.EXPIRED
    if now > proof.not_after or now + CLOCK_SKEW < proof.issued_at:
        return Refusal.EXPIRED
    return None


CommandT = TypeVar("CommandT", bound=BaseModel)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CommandSigner:
    """Signs the commands one gateway process sends (the API, the Discord bot, the worker's
    Guardian fan-out), under the commands keyring as it stands at each signature."""

    def __init__(
        self,
        keyring: Callable[[], Keyring],
        *,
        clock: Callable[[], datetime] = _utcnow,
        validity: timedelta = DEFAULT_VALIDITY,
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._validity = validity

    @classmethod
    def from_keys_dir(cls, keys_dir: Path) -> CommandSigner:
        """A signer over the commands keyring in ``keys_dir``, followed across rotations;
        ConfigurationError (SEC-040) when it is missing or malformed."""
        return cls(KeyringFile(keys_dir, KeyPurpose.COMMANDS).current)

    def sign(self, command: CommandT, *, workflow_id: str, action: CommandAction) -> CommandT:
        """``command`` with its ``proof`` for ``workflow_id`` and ``action``, valid from now."""
        proof = sign_command(
            self._keyring(),
            workflow_id=workflow_id,
            action=action,
            payload=command,
            now=self._clock(),
            validity=self._validity,
        )
        return command.model_copy(update={PROOF_FIELD: proof})


class SeenProofs:
    """The proofs a workflow has accepted and that still hold: the same proof twice is a replay.

    Deterministic (it keeps what it is told, pruned by the ``now`` it is given), so a workflow can
    fill it in its handlers and rebuild it on replay.
    """

    def __init__(self, entries: Mapping[str, datetime] | None = None) -> None:
        self._until: dict[str, datetime] = dict(entries or {})

    def __contains__(self, proof: object) -> bool:
        return isinstance(proof, CommandProof) and proof.mac in self._until

    def remember(self, proof: CommandProof, *, now: datetime) -> None:
        """Keep ``proof`` until it lapses; forget those that have."""
        self._until = {
            mac: until for mac, until in self._until.items() if until + CLOCK_SKEW >= now
        }
        self._until[proof.mac] = proof.not_after

    @property
    def entries(self) -> dict[str, datetime]:
        """What is remembered (MAC → until when), to carry across a continue-as-new."""
        return dict(self._until)


def _mac(
    secret: bytes,
    *,
    key_id: str,
    workflow_id: str,
    action: CommandAction,
    issued_at: datetime,
    not_after: datetime,
    nonce: str,
    digest: str,
) -> str:
    message = json.dumps(
        {
            "v": _VERSION,
            "key_id": key_id,
            "workflow_id": workflow_id,
            "action": action.value,
            "issued_at": _canonical(issued_at),
            "not_after": _canonical(not_after),
            "nonce": nonce,
            "digest": digest,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hmac.new(secret, message.encode("ascii"), hashlib.sha256).hexdigest()


def _canonical(value: Any) -> Any:
    """One rendering per value: the same command digests alike in every process."""
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(exclude_defaults=True))
    if isinstance(value, Mapping):
        return {str(_canonical(k)): _canonical(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, Decimal):
        # Equal amounts render alike ("1.50" and "1.5"); a Decimal never becomes a float.
        return {"$decimal": format(value.normalize(), "f") if value else "0"}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("signed commands carry timezone-aware datetimes only")
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, float):
        return {"$float": repr(value)}
    raise TypeError(f"cannot sign a {type(value).__name__}")
