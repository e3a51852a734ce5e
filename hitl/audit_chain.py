"""The audit log as a keyed hash chain, and its verifier (pure: no database, no clock).

Every audit entry gets a gapless sequence number ``seq`` (1, 2, 3, ...), a MAC over its content
(:mod:`hitl.record_mac`, kind ``audit``) and a chain value::

    chain_0 = genesis_chain(count, digest)           # entries written before the chain existed
    chain_n = HMAC(key_n, chain_{n-1} ":" mac_n ":" n)

The chain is keyed, so someone who can write the database and read this code still cannot
rebuild it after deleting, inserting or reordering entries. What the chain cannot see alone (the
*latest* entries deleted together with the head row rewritten) is caught by checkpoints of the
head kept outside the database.

:class:`ChainVerifier` reads entries in ``seq`` order one at a time (constant memory: a
database of any size streams through it) and reports the FIRST problem as a :class:`Finding`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from hitl.hashing import RowHasher
from hitl.record_mac import (
    MacCheck,
    RecordKeys,
    RecordKind,
    RecordSigner,
    compute_mac,
    mac_message,
    same_digest,
)

GENESIS_TAG = b"hitl-audit-genesis-v1"

AUDIT_CONTENT_FIELDS = (
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "previous_state",
    "new_state",
    "payload",
    "correlation_id",
    "error_code",
    "created_at",
    "idempotency_key",
    "record_mac",
)
"""The columns of an audit entry its MAC covers. ``record_mac`` is the MAC of the approval (or
Guardian state, or snapshot) as the entry left it, so a row can be checked against its trail."""

LEGACY_CONTENT_FIELDS = AUDIT_CONTENT_FIELDS[:-1]
"""The columns of an entry written before the chain existed (it has no ``record_mac``)."""


class ProblemKind(StrEnum):
    """What is wrong with the record, as ``hitl audit verify`` names it."""

    EDITED = "edited"
    """An entry's content is not what the gateway wrote (its MAC does not match)."""
    MISSING = "missing"
    """Sequence numbers are missing: entries were deleted."""
    INSERTED = "inserted"
    """An entry the gateway never wrote (a forged MAC and chain, a duplicate sequence number,
    entries beyond the chain head)."""
    REORDERED = "reordered"
    """A genuine entry stands at a place it was not written at (its MAC holds, its link not)."""
    APPROVAL_DIFFERS = "approval differs from its trail"
    """An approval row is not the state its last audit entry recorded (or has no valid MAC)."""
    SNAPSHOT_DIFFERS = "snapshot differs from its trail"
    """A post-trade snapshot is not the one its ``snapshot.recorded`` entry recorded: edited,
    deleted, or present without an entry (inserted)."""
    MISSING_TAIL = "missing tail"
    """The latest entries are gone: a checkpoint (or the head row) recorded a longer chain."""
    CHECKPOINT_MISMATCH = "checkpoint mismatch"
    """The chain at a checkpointed position is not what the checkpoint recorded."""
    UNKNOWN_KEY = "unknown key id"
    """A MAC names a key the RECORD keyring does not hold."""
    GENESIS_MISMATCH = "genesis mismatch"
    """The entries written before the chain are not those the genesis record counted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """The first problem found, with what identifies it."""

    kind: ProblemKind
    detail: str
    seq: int | None = None
    entry_id: int | None = None
    target_id: str | None = None

    def describe(self) -> str:
        """One line for an auditor: which entry, what is wrong."""
        where = []
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.entry_id is not None:
            where.append(f"id {self.entry_id}")
        if self.target_id is not None:
            where.append(f"trade {self.target_id}")
        place = f" at {', '.join(where)}" if where else ""
        return f"{self.kind.value}{place}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The chain's latest position: the last sequence number and its chain value."""

    seq: int
    chain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A chain head recorded outside the database (a file line, a workflow's history)."""

    seq: int
    chain: str
    source: str
    """Where it was recorded, for the report (``audit-checkpoints.jsonl line 12``)."""
    at: datetime | None = None
    key_id: str | None = None
    mac: str | None = None
    """The checkpoint line's own MAC (kind ``checkpoint``), when it has one."""


class ChainEntry(NamedTuple):
    """One stored audit entry as the verifier reads it (a tuple: cheap per row)."""

    entry_id: int
    seq: int
    key_id: str | None
    mac: str | None
    chain: str | None
    content: Mapping[str, Any]
    """The values of :data:`AUDIT_CONTENT_FIELDS` (Python values: datetimes, dicts)."""
    canonical: str | None = None
    """The canonical text of ``content`` when the reader already made it
    (:func:`audit_content_text`); the verifier then MACs it instead of rendering ``content``."""


_CONTENT_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in sorted(AUDIT_CONTENT_FIELDS)) + "}"
"""The canonical content's frame: every field, keys sorted, as ``json.dumps`` writes them."""


def _nullable(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def audit_content_text(values: Sequence[Any], created_at: str) -> str | None:
    """An audit entry's canonical content (what its MAC covers), made in one pass.

    ``values`` are the entry's columns in :data:`AUDIT_CONTENT_FIELDS` order as the driver
    returns them (strings or None; the payload as its stored canonical JSON text, spliced in
    as it is); ``created_at`` is the entry's time as canonical text (UTC ISO-8601 with
    microseconds; the value at its place in ``values`` is not read). The text is exactly
    :func:`hitl.record_mac.canonical_content` of that content. None when a value is of any
    other type (a column an editor filled with a number, a NULL where the gateway never writes
    one): the caller then renders the content the general way, so nothing is ever judged on a
    different text.
    """
    (
        actor_id,
        action,
        target_type,
        target_id,
        previous_state,
        new_state,
        payload,
        correlation_id,
        error_code,
        _created_at,
        idempotency_key,
        record_mac,
    ) = values
    if type(payload) is not str:
        return None
    encode = encode_basestring_ascii
    try:
        # Keys in sorted order: action, actor_id, correlation_id, created_at, error_code,
        # idempotency_key, new_state, payload, previous_state, record_mac, target_id,
        # target_type. A value that is neither str nor None raises TypeError here.
        return _CONTENT_TEMPLATE % (
            encode(action),
            encode(actor_id),
            encode(correlation_id),
            encode(created_at),
            _nullable(error_code),
            _nullable(idempotency_key),
            _nullable(new_state),
            payload,
            _nullable(previous_state),
            _nullable(record_mac),
            encode(target_id),
            encode(target_type),
        )
    except TypeError:
        return None


def _audit_mac_prefix(key_id: str) -> bytes:
    """The bytes :func:`hitl.record_mac.mac_message` puts before an audit entry's content."""
    empty = mac_message(RecordKind.AUDIT, key_id, {})
    assert empty.endswith(b"{}")
    return empty[:-2]


class Link(NamedTuple):
    """What an append stores beside an entry's content."""

    seq: int
    key_id: str
    mac: str
    chain: str


def genesis_chain(count: int, digest: str) -> str:
    """``chain_0``: commits to the entries written before the chain (their count and digest).

    Unkeyed on purpose (the migration that creates it has no key); ``chain_1`` is keyed and
    commits to it, so changing a legacy entry still breaks a link nobody can recompute.
    """
    message = b"\x00".join((GENESIS_TAG, str(count).encode(), digest.encode("ascii")))
    return hashlib.sha256(message).hexdigest()


class LegacyDigest:
    """SHA-256 over the entries written before the chain, in ``id`` order (streaming)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(GENESIS_TAG)
        self.count = 0

    def update(self, content: Mapping[str, Any]) -> None:
        """Add one legacy entry (its :data:`LEGACY_CONTENT_FIELDS`)."""
        text = RowHasher.canonical_json(
            {name: content[name] for name in LEGACY_CONTENT_FIELDS}
        ).encode("ascii")
        # Length-prefixed, so no two sequences of entries hash alike.
        self._hash.update(len(text).to_bytes(8, "big") + text)
        self.count += 1

    def hexdigest(self) -> str:
        """The digest of the entries added so far."""
        return self._hash.hexdigest()

    def head(self) -> ChainHead:
        """The genesis head: seq 0 and ``chain_0``."""
        return ChainHead(0, genesis_chain(self.count, self.hexdigest()))


def _link_message(previous: str, mac: str, seq: int) -> bytes:
    return b"%s:%s:%d" % (previous.encode("utf-8"), mac.encode("utf-8"), seq)


def link_value(secret: bytes, previous: str, mac: str, seq: int) -> str:
    """``chain_seq`` from ``chain_{seq-1}`` and the entry's MAC."""
    return hmac.digest(secret, _link_message(previous, mac, seq), "sha256").hex()


class _VerifyKey(NamedTuple):
    """One RECORD key as the verifier uses it for every entry it made: HMAC states keyed
    once and copied per entry (the key's padding is not hashed again each time)."""

    secret: bytes
    link: Any
    """``hmac.HMAC`` keyed with the secret."""
    audit: Any
    """The same, already fed the audit MAC message's prefix (version, kind, key id)."""

    @classmethod
    def of(cls, secret: bytes, key_id: str) -> _VerifyKey:
        link = hmac.new(secret, digestmod=hashlib.sha256)
        audit = link.copy()
        audit.update(_audit_mac_prefix(key_id))
        return cls(secret, link, audit)

    def link_value(self, previous: str, mac: str, seq: int) -> str:
        """:func:`link_value` with this key."""
        state = self.link.copy()
        state.update(_link_message(previous, mac, seq))
        return str(state.hexdigest())

    def audit_mac(self, canonical: str) -> str:
        """The audit MAC of an entry whose canonical content is ``canonical``."""
        try:
            content = canonical.encode("ascii")
        except UnicodeEncodeError:
            # The gateway's canonical text is ASCII: this is not content it MAC'd.
            return ""
        state = self.audit.copy()
        state.update(content)
        return str(state.hexdigest())


def audit_content(values: Mapping[str, Any]) -> dict[str, Any]:
    """The MAC'd content of an audit entry: exactly :data:`AUDIT_CONTENT_FIELDS` of ``values``."""
    return {name: values.get(name) for name in AUDIT_CONTENT_FIELDS}


def next_link(keys: RecordKeys, head: ChainHead, content: Mapping[str, Any]) -> Link:
    """The sequence number, MAC and chain value of an entry appended after ``head``."""
    key = keys.active()
    mac = compute_mac(key.secret, kind=RecordKind.AUDIT, key_id=key.id, fields=content)
    seq = head.seq + 1
    return Link(seq, key.id, mac, link_value(key.secret, head.chain, mac, seq))


class ChainVerifier:
    """Checks entries fed in ``seq`` order from ``start``; remembers only the previous link.

    ``start`` is the genesis head for a full check, or the head a previous check ended at for an
    incremental one. ``checkpoints`` are heads recorded outside the database; those past
    ``start`` are checked as the entries reach them, and one beyond the last entry means the
    tail was deleted.
    """

    def __init__(
        self, keys: RecordKeys, *, start: ChainHead, checkpoints: Iterable[Checkpoint] = ()
    ) -> None:
        self._signer = RecordSigner(keys)
        self._keys: dict[str, _VerifyKey] = {}
        """Per key id, once looked up (RECORD keys verify forever)."""
        self._seq = start.seq
        self._chain = start.chain
        self._ahead = sorted(
            (c for c in checkpoints if c.seq >= start.seq), key=lambda c: c.seq, reverse=True
        )
        self.checked = 0
        """How many entries passed."""
        self.finding: Finding | None = None
        """The first problem, once found; later calls change nothing."""
        self.finding = self._checkpoints_reached()

    @property
    def head(self) -> ChainHead:
        """The last position verified."""
        return ChainHead(self._seq, self._chain)

    def feed(self, entry: ChainEntry) -> Finding | None:
        """Check the next entry; the first problem found (now or before), else None."""
        if self.finding is not None:
            return self.finding
        self.finding = self._check(entry)
        return self.finding

    def _key(self, entry: ChainEntry) -> _VerifyKey | None:
        key_id = entry.key_id
        if not key_id:
            return None
        known = self._keys.get(key_id)
        if known is None:
            secret = self._signer.secret(key_id, entry.content["created_at"])
            if secret is None:
                return None
            known = self._keys[key_id] = _VerifyKey.of(secret, key_id)
        return known

    def _check(self, entry: ChainEntry) -> Finding | None:
        expected = self._seq + 1
        if entry.seq > expected:
            gap = f"{expected}" if entry.seq == expected + 1 else f"{expected}..{entry.seq - 1}"
            return Finding(
                kind=ProblemKind.MISSING,
                detail=f"entries with seq {gap} are missing (deleted)",
                seq=expected,
            )
        if entry.seq < expected:
            return Finding(
                kind=ProblemKind.INSERTED,
                detail=f"a second entry claims seq {entry.seq}",
                seq=entry.seq,
                entry_id=entry.entry_id,
                target_id=_target(entry.content),
            )
        key = self._key(entry)
        if key is None or not entry.mac or not entry.chain:
            kind = ProblemKind.UNKNOWN_KEY if entry.key_id else ProblemKind.INSERTED
            return Finding(
                kind=kind,
                detail=(
                    f"key {entry.key_id!r} is not in the RECORD keyring"
                    if entry.key_id
                    else "the entry has no MAC: the gateway did not write it"
                ),
                seq=entry.seq,
                entry_id=entry.entry_id,
                target_id=_target(entry.content),
            )
        if entry.canonical is None:
            mac = compute_mac(
                key.secret, kind=RecordKind.AUDIT, key_id=entry.key_id or "", fields=entry.content
            )
        else:
            mac = key.audit_mac(entry.canonical)
        mac_ok = same_digest(mac, entry.mac)
        link_ok = same_digest(key.link_value(self._chain, entry.mac, entry.seq), entry.chain)
        if not (mac_ok and link_ok):
            if link_ok:
                kind, detail = ProblemKind.EDITED, "its content does not match its MAC"
            elif mac_ok:
                kind = ProblemKind.REORDERED
                detail = "a genuine entry that was not written at this place in the chain"
            else:
                kind = ProblemKind.INSERTED
                detail = "neither its MAC nor its chain value is the gateway's"
            return Finding(
                kind=kind,
                detail=detail,
                seq=entry.seq,
                entry_id=entry.entry_id,
                target_id=_target(entry.content),
            )
        self._seq, self._chain = entry.seq, entry.chain
        self.checked += 1
        return self._checkpoints_reached()

    def _checkpoints_reached(self) -> Finding | None:
        while self._ahead and self._ahead[-1].seq <= self._seq:
            checkpoint = self._ahead.pop()
            if checkpoint.seq == self._seq and not same_digest(self._chain, checkpoint.chain):
                return Finding(
                    kind=ProblemKind.CHECKPOINT_MISMATCH,
                    detail=(
                        f"the chain at seq {checkpoint.seq} differs from {checkpoint.source}: "
                        "the record was rewritten"
                    ),
                    seq=checkpoint.seq,
                )
        return None

    def finish(self, recorded_head: ChainHead | None = None) -> Finding | None:
        """After the last entry: checkpoints beyond it, and the head row the database keeps."""
        if self.finding is not None:
            return self.finding
        if self._ahead:
            furthest = self._ahead[0]
            self.finding = Finding(
                kind=ProblemKind.MISSING_TAIL,
                detail=(
                    f"entries after seq {self._seq} are missing: {furthest.source} recorded "
                    f"the chain at seq {furthest.seq}"
                ),
                seq=self._seq + 1,
            )
        elif recorded_head is not None and recorded_head.seq > self._seq:
            self.finding = Finding(
                kind=ProblemKind.MISSING_TAIL,
                detail=(
                    f"entries after seq {self._seq} are missing: the chain head row records "
                    f"seq {recorded_head.seq}"
                ),
                seq=self._seq + 1,
            )
        elif recorded_head is not None and recorded_head.seq < self._seq:
            self.finding = Finding(
                kind=ProblemKind.INSERTED,
                detail=f"entries after seq {recorded_head.seq} lie beyond the chain head row",
                seq=recorded_head.seq + 1,
            )
        elif recorded_head is not None and not same_digest(self._chain, recorded_head.chain):
            self.finding = Finding(
                kind=ProblemKind.CHECKPOINT_MISMATCH,
                detail=f"the chain head row does not hold the chain value of seq {self._seq}",
                seq=self._seq,
            )
        return self.finding


def _target(content: Mapping[str, Any]) -> str | None:
    target = content.get("target_id")
    return None if target is None else str(target)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The outcome of a check: the first problem (None: intact), how much was checked, and the
    head reached."""

    finding: Finding | None
    checked: int
    head: ChainHead

    @property
    def intact(self) -> bool:
        """Whether nothing was found."""
        return self.finding is None


def verify_chain(
    entries: Iterable[ChainEntry],
    *,
    keys: RecordKeys,
    start: ChainHead,
    checkpoints: Iterable[Checkpoint] = (),
    recorded_head: ChainHead | None = None,
) -> Verification:
    """Check ``entries`` (in ``seq`` order) from ``start``; stops at the first problem."""
    verifier = ChainVerifier(keys, start=start, checkpoints=checkpoints)
    for entry in entries:
        if verifier.feed(entry) is not None:
            break
    finding = verifier.finish(recorded_head)
    return Verification(finding=finding, checked=verifier.checked, head=verifier.head)


def check_approval(
    signer: RecordSigner,
    approval: Mapping[str, Any],
    *,
    mac: str | None,
    key_id: str | None,
    trail_mac: str | None,
) -> Finding | None:
    """An approval row against its MAC and the ``record_mac`` of its last audit entry.

    ``approval`` holds the row's :class:`hitl.models.ApprovalRequest` fields. The row's MAC
    proves the gateway wrote this content; equality with the trail proves it is the *latest*
    state the gateway wrote (an older genuine state put back is caught here).
    """
    trade = str(approval.get("trade_id"))
    result = signer.check(
        RecordKind.APPROVAL, approval, mac=mac, key_id=key_id, at=_as_time(approval["requested_at"])
    )
    if result is MacCheck.UNKNOWN_KEY:
        return Finding(
            kind=ProblemKind.UNKNOWN_KEY,
            detail=f"the approval's key {key_id!r} is not in the RECORD keyring",
            target_id=trade,
        )
    if result is not MacCheck.VALID:
        detail = (
            "the approval row has no MAC"
            if result is MacCheck.MISSING
            else "the approval row's content does not match its MAC (edited)"
        )
        return Finding(kind=ProblemKind.APPROVAL_DIFFERS, detail=detail, target_id=trade)
    if trail_mac is None:
        return Finding(
            kind=ProblemKind.APPROVAL_DIFFERS,
            detail="no audit entry records this approval",
            target_id=trade,
        )
    if not same_digest(trail_mac, mac):
        return Finding(
            kind=ProblemKind.APPROVAL_DIFFERS,
            detail="the approval row is not the state its last audit entry recorded",
            target_id=trade,
        )
    return None


def check_snapshot(
    signer: RecordSigner,
    snapshot: Mapping[str, Any],
    *,
    trade_id: str,
    trail_mac: str | None,
    legacy: bool,
    unsealed: bool = False,
) -> Finding | None:
    """A post-trade snapshot row against its MAC and its ``snapshot.recorded`` entry.

    ``snapshot`` holds the row's columns (its id, MAC and key id are read from it, not MAC'd).
    ``legacy``: recorded before snapshots had entries (migration 0007), so it may lack one;
    ``unsealed``: recorded before MACs (migration 0004), so it may lack a MAC too. A snapshot
    that has an entry must equal what the entry recorded, legacy or not.
    """
    number = snapshot.get("id")
    mac, key_id = snapshot.get("mac"), snapshot.get("mac_key_id")
    if mac is None and unsealed and trail_mac is None:
        return None
    result = signer.check(
        RecordKind.SNAPSHOT, snapshot, mac=mac, key_id=key_id, at=_as_time(snapshot["created_at"])
    )
    if result is MacCheck.UNKNOWN_KEY:
        return Finding(
            kind=ProblemKind.UNKNOWN_KEY,
            detail=f"post-trade snapshot {number}: key {key_id!r} is not in the RECORD keyring",
            target_id=trade_id,
        )
    if result is not MacCheck.VALID:
        detail = (
            f"post-trade snapshot {number} has no MAC"
            if result is MacCheck.MISSING
            else f"post-trade snapshot {number} does not match its MAC (edited)"
        )
        return Finding(kind=ProblemKind.SNAPSHOT_DIFFERS, detail=detail, target_id=trade_id)
    if trail_mac is None:
        if legacy:
            return None
        return Finding(
            kind=ProblemKind.SNAPSHOT_DIFFERS,
            detail=f"post-trade snapshot {number} has no audit entry (inserted)",
            target_id=trade_id,
        )
    if not same_digest(trail_mac, mac):
        return Finding(
            kind=ProblemKind.SNAPSHOT_DIFFERS,
            detail=f"post-trade snapshot {number} is not the one its audit entry recorded",
            target_id=trade_id,
        )
    return None


def missing_snapshot(trade_id: str, seq: int) -> Finding:
    """A ``snapshot.recorded`` entry whose snapshot is gone."""
    return Finding(
        kind=ProblemKind.SNAPSHOT_DIFFERS,
        detail="the post-trade snapshot this entry recorded is missing (deleted)",
        seq=seq,
        target_id=trade_id,
    )


EXPORT_FORMAT = "hitl-audit-export-v1"
APPROVAL_TARGET = "approval"
SNAPSHOT_TARGET = "snapshot"
"""The target types of the entries an export holds (``store.audit`` writes them)."""


def checkpoint_fields(seq: int, chain: str, at: datetime) -> dict[str, Any]:
    """The content a checkpoint line's MAC covers."""
    return {"seq": seq, "chain": chain, "at": at}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportCheck:
    """The outcome of checking an exported trail: the first problem, and what covers it."""

    finding: Finding | None
    covered_by: str
    """The checkpoint the trail's chain reaches (``audit-checkpoints.jsonl line 12``), or the
    head row the export was made at when no checkpoint covered it yet (weaker: the database's
    own word)."""


def _as_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def verify_export(data: Mapping[str, Any], keys: RecordKeys) -> ExportCheck:
    """Check one approval's exported trail on its own (``hitl audit verify --export FILE``).

    Every entry of the trail must match its MAC; the chain must link, from the value before the
    trail's first entry through every later link, to the covering checkpoint (whose own MAC must
    hold); the approval row must match its MAC and the last entry's ``record_mac``.
    """
    signer = RecordSigner(keys)
    trade = str(data.get("trade_id"))

    def problem(kind: ProblemKind, detail: str, seq: int | None = None) -> ExportCheck:
        return ExportCheck(
            finding=Finding(kind=kind, detail=detail, seq=seq, target_id=trade), covered_by=""
        )

    if data.get("format") != EXPORT_FORMAT:
        return problem(ProblemKind.EDITED, f"not a {EXPORT_FORMAT} file")
    entries = list(data.get("entries") or [])
    links = {int(link["seq"]): link for link in data.get("links") or []}
    if not entries:
        return problem(ProblemKind.APPROVAL_DIFFERS, "the export holds no audit entry")
    for entry in entries:
        seq = int(entry["seq"])
        link = links.get(seq)
        if link is None or (link["mac"], link["chain"], link["key_id"]) != (
            entry["mac"],
            entry["chain"],
            entry["key_id"],
        ):
            return problem(ProblemKind.INSERTED, "the entry is not in the exported chain", seq)
        content = entry["content"]
        secret = signer.secret(entry["key_id"], _as_time(content["created_at"]))
        if secret is None:
            return problem(ProblemKind.UNKNOWN_KEY, f"key {entry['key_id']!r} is unknown", seq)
        mac = compute_mac(secret, kind=RecordKind.AUDIT, key_id=entry["key_id"], fields=content)
        if not same_digest(mac, entry["mac"]):
            return problem(ProblemKind.EDITED, "its content does not match its MAC", seq)
    start = data["start"]
    seq, chain = int(start["seq"]), str(start["chain"])
    while seq + 1 in links:
        link = links[seq + 1]
        secret = signer.secret(link["key_id"], datetime.max.replace(tzinfo=UTC))
        if secret is None:
            return problem(ProblemKind.UNKNOWN_KEY, f"key {link['key_id']!r} is unknown", seq + 1)
        if not same_digest(link_value(secret, chain, link["mac"], seq + 1), link["chain"]):
            return problem(ProblemKind.REORDERED, "the exported chain does not link here", seq + 1)
        seq, chain = seq + 1, link["chain"]
    if seq < max(links):
        return problem(
            ProblemKind.MISSING, f"the exported chain has a gap after seq {seq}", seq + 1
        )
    checkpoint = data.get("checkpoint")
    if checkpoint is not None:
        at = _as_time(checkpoint["at"])
        fields = checkpoint_fields(int(checkpoint["seq"]), str(checkpoint["chain"]), at)
        check = signer.check(
            RecordKind.CHECKPOINT,
            fields,
            mac=checkpoint.get("mac"),
            key_id=checkpoint.get("key_id"),
            at=at,
        )
        if check is not MacCheck.VALID:
            return problem(ProblemKind.CHECKPOINT_MISMATCH, "the checkpoint is not the gateway's")
        target, covered_by = (
            ChainHead(int(checkpoint["seq"]), str(checkpoint["chain"])),
            str(checkpoint.get("source", "checkpoint")),
        )
    else:
        head = data["head"]
        target, covered_by = ChainHead(int(head["seq"]), str(head["chain"])), "the head row"
    if seq != target.seq or not same_digest(chain, target.chain):
        return problem(
            ProblemKind.CHECKPOINT_MISMATCH,
            f"the exported chain ends at seq {seq}, not at {covered_by} (seq {target.seq})",
            seq,
        )
    approval = data.get("approval")
    trail_mac = next(
        (
            e["content"]["record_mac"]
            for e in reversed(entries)
            if e["content"].get("record_mac")
            and e["content"].get("target_type", APPROVAL_TARGET) == APPROVAL_TARGET
        ),
        None,
    )
    recorded = next(
        (e for e in reversed(entries) if e["content"].get("target_type") == SNAPSHOT_TARGET),
        None,
    )
    snapshot = data.get("snapshot")
    if snapshot is None and recorded is not None:
        return ExportCheck(
            finding=missing_snapshot(trade, int(recorded["seq"])), covered_by=covered_by
        )
    if snapshot is not None:
        finding = check_snapshot(
            signer,
            {
                **snapshot["fields"],
                "id": snapshot.get("id"),
                "mac": snapshot.get("mac"),
                "mac_key_id": snapshot.get("key_id"),
            },
            trade_id=trade,
            trail_mac=None if recorded is None else recorded["content"].get("record_mac"),
            legacy=bool(snapshot.get("legacy")),
            unsealed=bool(snapshot.get("unsealed")),
        )
        if finding is not None:
            return ExportCheck(finding=finding, covered_by=covered_by)
    if approval is not None:
        finding = check_approval(
            signer,
            approval["fields"],
            mac=approval.get("mac"),
            key_id=approval.get("key_id"),
            trail_mac=trail_mac,
        )
        if finding is not None:
            return ExportCheck(finding=finding, covered_by=covered_by)
    return ExportCheck(finding=None, covered_by=covered_by)


@dataclass(frozen=True, kw_only=True)
class AuditCheckInput:
    """Verify what was appended after ``start`` (None: the whole record)."""

    start: ChainHead | None = None


@dataclass(frozen=True, kw_only=True)
class AuditCheckResult:
    """One continuous check: the head reached and the first problem (None: intact)."""

    head: ChainHead
    checked: int
    problem: str | None = None

    @property
    def intact(self) -> bool:
        """Whether the check found nothing."""
        return self.problem is None


@dataclass(frozen=True, kw_only=True)
class AuditCheckpointInput:
    """The checkpoint workflow's state across continue-as-new: the last head verified intact."""

    verified: ChainHead | None = None
    interval_seconds: int = 300
