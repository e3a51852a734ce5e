"""The audit chain and the record MACs (issue 15), pure part: any single tampering is detected.

A record here is what the database holds, as the store hands it to the verifier: audit entries
in ``seq`` order, the approval rows with their MACs, the chain head row; plus checkpoints kept
outside the database. Each test tampers with it the way someone with write access to the
database (and this source code, but not the RECORD key) could, and the verifier must say so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hitl.audit_chain import (
    AUDIT_CONTENT_FIELDS,
    ChainEntry,
    ChainHead,
    Checkpoint,
    Finding,
    LegacyDigest,
    ProblemKind,
    audit_content,
    check_approval,
    check_snapshot,
    genesis_chain,
    next_link,
    verify_chain,
)
from hitl.hashing import RowHasher
from hitl.keys import KeyPurpose, Keyring, new_keyring
from hitl.models import ApprovalRequest
from hitl.record_mac import (
    MacCheck,
    RecordKind,
    RecordSigner,
    canonical_content,
    canonical_json_text,
    compute_mac,
)
from tests.strategies import approval_requests, texts

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
FIRST_KEYS = new_keyring(KeyPurpose.RECORD, now=NOW)
# The record is written half with the first key, half after a rotation: verification needs the
# keyring as it is now, whose retired key still verifies (RECORD keys verify forever).
KEYS = FIRST_KEYS.rotated(now=NOW + timedelta(days=1), grace=None)
OTHER_KEYS = new_keyring(KeyPurpose.RECORD, now=NOW)


@dataclass
class StoredApproval:
    """An approval row: its fields, MAC and key id."""

    fields: dict[str, Any]
    mac: str
    key_id: str


@dataclass
class Record:
    """What the database holds (entries, approval rows, head row) and what lies outside it."""

    entries: list[ChainEntry]
    approvals: dict[str, StoredApproval]
    history: dict[str, list[StoredApproval]]
    """Every state each approval went through, oldest first (for putting an old one back)."""
    head: ChainHead
    start: ChainHead
    checkpoints: list[Checkpoint] = field(default_factory=list)


def _entries_of(record: Record) -> Iterator[ChainEntry]:
    yield from record.entries


def verify(record: Record, *, keys: Keyring = KEYS) -> Finding | None:
    """The whole check ``hitl audit verify`` runs: the chain, then every approval against its
    last audit entry."""
    result = verify_chain(
        _entries_of(record),
        keys=keys,
        start=record.start,
        checkpoints=record.checkpoints,
        recorded_head=record.head,
    )
    if result.finding is not None:
        return result.finding
    trail: dict[str, str] = {}
    for entry in record.entries:
        if entry.content["record_mac"] is not None:
            trail[entry.content["target_id"]] = entry.content["record_mac"]
    signer = RecordSigner(keys)
    for trade, approval in record.approvals.items():
        finding = check_approval(
            signer,
            approval.fields,
            mac=approval.mac,
            key_id=approval.key_id,
            trail_mac=trail.get(trade),
        )
        if finding is not None:
            return finding
    return None


@st.composite
def records(draw: st.DrawFn, *, min_entries: int = 1) -> Record:
    """A record the gateway wrote: approvals created and changed, refusals in between, written
    across a key rotation, optionally after legacy entries sealed by a genesis record."""
    approvals: list[ApprovalRequest] = draw(
        st.lists(approval_requests(), min_size=1, max_size=3, unique_by=lambda a: a.trade_id)
    )
    events = draw(
        st.lists(
            st.tuples(st.integers(0, len(approvals) - 1), st.booleans(), texts(max_size=12)),
            min_size=max(0, min_entries - len(approvals)),
            max_size=12,
        )
    )
    legacy = LegacyDigest()
    for number in range(draw(st.integers(0, 2))):
        legacy.update(
            {
                name: None
                for name in AUDIT_CONTENT_FIELDS
                if name not in ("payload", "created_at", "record_mac")
            }
            | {"payload": {"legacy": number}, "created_at": NOW}
        )
    start = legacy.head()
    head = start
    entries: list[ChainEntry] = []
    stored: dict[str, StoredApproval] = {}
    history: dict[str, list[StoredApproval]] = {}
    states = {str(a.trade_id): a for a in approvals}
    rotate_at = draw(st.integers(0, len(approvals) + len(events)))

    def append(trade: str, *, change: str | None, refusal: str | None) -> None:
        nonlocal head
        keys = FIRST_KEYS if len(entries) < rotate_at else KEYS
        record_mac: str | None = None
        payload: dict[str, Any] = {"reason": refusal}
        if change is not None:
            state = states[trade].model_copy(update={"comment": change or None})
            states[trade] = state
            signer = RecordSigner(keys)
            sealed = signer.seal(RecordKind.APPROVAL, state)
            row = StoredApproval(state.model_dump(), sealed.mac, sealed.key_id)
            stored[trade] = row
            history.setdefault(trade, []).append(row)
            record_mac = sealed.mac
            payload = {"approval": state.to_dict()}
        content = audit_content(
            {
                "actor_id": "alice",
                "action": "approval.changed" if change is not None else "approval.refused",
                "target_type": "approval",
                "target_id": trade,
                "previous_state": None,
                "new_state": states[trade].status.value if change is not None else None,
                "payload": payload,
                "correlation_id": f"corr-{len(entries)}",
                "error_code": None if change is not None else "SEC-010",
                "created_at": NOW + timedelta(microseconds=len(entries)),
                "idempotency_key": f"{trade}:{len(entries)}",
                "record_mac": record_mac,
            }
        )
        link = next_link(keys, head, content)
        entries.append(
            ChainEntry(
                entry_id=len(entries) + 100,
                seq=link.seq,
                key_id=link.key_id,
                mac=link.mac,
                chain=link.chain,
                content=content,
            )
        )
        head = ChainHead(link.seq, link.chain)

    for approval in approvals:
        append(str(approval.trade_id), change="", refusal=None)
    for index, is_change, text in events:
        trade = str(approvals[index].trade_id)
        append(trade, change=text if is_change else None, refusal=None if is_change else text)
    checkpoint_seqs = draw(st.lists(st.integers(0, head.seq), max_size=3))
    chains = {0: start.chain} | {e.seq: e.chain or "" for e in entries}
    checkpoints = [
        Checkpoint(seq=s, chain=chains[s], source=f"checkpoint line {n + 1}")
        for n, s in enumerate(sorted(checkpoint_seqs))
    ]
    return Record(
        entries=entries,
        approvals=stored,
        history=history,
        head=head,
        start=start,
        checkpoints=checkpoints,
    )


def renumbered(entries: Sequence[ChainEntry], start_seq: int = 0) -> list[ChainEntry]:
    """The entries with their seq column rewritten to be gapless again, as an attacker would."""
    return [e._replace(seq=start_seq + n + 1) for n, e in enumerate(entries)]


def _other_value(value: Any) -> Any:
    """A different value of the same column (what an edit puts there)."""
    if value is None:
        return "x"
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, dict):
        return {**value, "edited": True}
    return f"{value}x"


SETTINGS = settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@SETTINGS
@given(records())
def test_an_untouched_record_verifies(record: Record) -> None:
    assert verify(record) is None


@SETTINGS
@given(records(), st.data())
def test_an_edited_entry_is_named(record: Record, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(record.entries) - 1))
    name = data.draw(st.sampled_from(AUDIT_CONTENT_FIELDS))
    entry = record.entries[index]
    content = dict(entry.content) | {name: _other_value(entry.content[name])}
    record.entries[index] = entry._replace(content=content)
    finding = verify(record)
    assert finding is not None
    assert finding.kind is ProblemKind.EDITED
    assert finding.seq == entry.seq
    assert finding.entry_id == entry.entry_id


@SETTINGS
@given(records(), st.data())
def test_an_edited_mac_chain_or_key_id_is_detected(record: Record, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(record.entries) - 1))
    column = data.draw(st.sampled_from(["mac", "chain", "key_id"]))
    entry = record.entries[index]
    if column == "key_id":
        # Another id the keyring knows: the MAC and link no longer check out under it.
        other = next(k for k in KEYS.keys if k != entry.key_id)
        record.entries[index] = entry._replace(key_id=other)
    elif column == "mac":
        record.entries[index] = entry._replace(mac="0" * 64)
    else:
        record.entries[index] = entry._replace(chain="0" * 64)
    finding = verify(record)
    assert finding is not None
    assert finding.seq == entry.seq


@SETTINGS
@given(records(min_entries=3), st.sampled_from(["first", "middle", "last"]))
def test_a_deleted_entry_is_detected(record: Record, which: str) -> None:
    index = {"first": 0, "middle": len(record.entries) // 2, "last": -1}[which]
    deleted = record.entries.pop(index)
    finding = verify(record)
    assert finding is not None
    if which == "last":
        # Only the head row (or a checkpoint) knows the chain was longer.
        assert finding.kind is ProblemKind.MISSING_TAIL
    else:
        assert finding.kind is ProblemKind.MISSING
    assert finding.seq == deleted.seq


@SETTINGS
@given(records(min_entries=3), st.data())
def test_a_deletion_closed_up_by_renumbering_is_detected(
    record: Record, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(record.entries) - 2))
    del record.entries[index]
    record.entries = renumbered(record.entries, record.start.seq)
    last = record.entries[-1]
    record.head = ChainHead(last.seq, last.chain or "")
    finding = verify(record)
    assert finding is not None
    assert finding.seq == index + 1


@SETTINGS
@given(records(min_entries=2), st.integers(1, 3), st.data())
def test_deleting_the_latest_entries_is_detected_by_a_checkpoint(
    record: Record, dropped: int, data: st.DataObject
) -> None:
    """The attacker deletes the tail and rewinds the head row: only a checkpoint outside the
    database still knows the chain was longer."""
    dropped = min(dropped, len(record.entries))
    record.checkpoints.append(
        Checkpoint(seq=record.head.seq, chain=record.head.chain, source="checkpoint line 9")
    )
    del record.entries[-dropped:]
    last = record.entries[-1] if record.entries else None
    record.head = ChainHead(last.seq, last.chain or "") if last else record.start
    finding = verify(record)
    assert finding is not None
    assert finding.kind is ProblemKind.MISSING_TAIL
    assert "checkpoint line" in finding.detail
    assert finding.seq == record.head.seq + 1


@SETTINGS
@given(records(), st.data())
def test_an_inserted_entry_is_detected(record: Record, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(record.entries)))
    forged_content = dict(record.entries[min(index, len(record.entries) - 1)].content)
    forged_content["actor_id"] = data.draw(st.sampled_from(["mallory", "alice"]))
    forged_content["idempotency_key"] = "forged"
    # The forger computes a MAC and link with a key of their own (they do not hold ours).
    link = next_link(OTHER_KEYS, ChainHead(index, "0" * 64), forged_content)
    key_id = data.draw(st.sampled_from([link.key_id, KEYS.active_id]))
    forged = ChainEntry(
        entry_id=999,
        seq=index + 1,
        key_id=key_id,
        mac=link.mac,
        chain=link.chain,
        content=forged_content,
    )
    renumber = data.draw(st.booleans())
    record.entries.insert(index, forged)
    if renumber:
        record.entries = renumbered(record.entries, record.start.seq)
        last = record.entries[-1]
        record.head = ChainHead(last.seq, last.chain or "")
    finding = verify(record)
    assert finding is not None
    if key_id == KEYS.active_id:
        assert finding.kind is ProblemKind.INSERTED
    else:
        assert finding.kind in (ProblemKind.UNKNOWN_KEY, ProblemKind.INSERTED)
    assert finding.seq == index + 1


@SETTINGS
@given(records(min_entries=2), st.data())
def test_a_replayed_genuine_entry_is_detected(record: Record, data: st.DataObject) -> None:
    """A copy of a real entry (valid MAC) put elsewhere in the chain."""
    source = data.draw(st.sampled_from(record.entries))
    index = data.draw(st.integers(0, len(record.entries)))
    record.entries.insert(index, source._replace(entry_id=999))
    record.entries = renumbered(record.entries, record.start.seq)
    last = record.entries[-1]
    record.head = ChainHead(last.seq, last.chain or "")
    finding = verify(record)
    assert finding is not None
    assert finding.kind in (ProblemKind.REORDERED, ProblemKind.INSERTED)


@SETTINGS
@given(records(min_entries=2), st.data())
def test_two_swapped_entries_are_named_reordered(record: Record, data: st.DataObject) -> None:
    first, second = sorted(
        data.draw(
            st.lists(st.integers(0, len(record.entries) - 1), min_size=2, max_size=2, unique=True)
        )
    )
    entries = record.entries
    entries[first], entries[second] = entries[second], entries[first]
    # The order is the seq column's: swapping two entries swaps their seq values.
    record.entries = renumbered(entries, record.start.seq)
    finding = verify(record)
    assert finding is not None
    assert finding.kind is ProblemKind.REORDERED
    assert finding.seq == first + 1


@SETTINGS
@given(records(), st.data())
def test_an_edited_approval_row_differs_from_its_trail(record: Record, data: st.DataObject) -> None:
    trade = data.draw(st.sampled_from(sorted(record.approvals)))
    row = record.approvals[trade]
    name = data.draw(
        st.sampled_from(["decided_by", "status", "comment", "request_price", "expires_at"])
    )
    value = row.fields[name]
    if name == "status":
        edited: Any = "ACCEPTED" if value != "ACCEPTED" else "REJECTED"
    elif name == "request_price":
        edited = value + 1
    elif name == "expires_at":
        edited = value + timedelta(seconds=1)
    else:
        edited = _other_value(value)
    record.approvals[trade] = replace(row, fields=row.fields | {name: edited})
    finding = verify(record)
    assert finding is not None
    assert finding.kind is ProblemKind.APPROVAL_DIFFERS
    assert finding.target_id == trade


@SETTINGS
@given(records(), st.data())
def test_an_older_genuine_state_put_back_differs_from_its_trail(
    record: Record, data: st.DataObject
) -> None:
    trades = [t for t, states in record.history.items() if len(states) > 1]
    if not trades:
        return
    trade = data.draw(st.sampled_from(trades))
    older = data.draw(st.sampled_from(record.history[trade][:-1]))
    if older.mac == record.approvals[trade].mac:
        return  # the same content twice: nothing was changed
    record.approvals[trade] = older
    finding = verify(record)
    assert finding is not None
    assert finding.kind is ProblemKind.APPROVAL_DIFFERS
    assert "last audit entry" in finding.detail


@SETTINGS
@given(records())
def test_a_wrong_keyring_is_an_unknown_key_never_intact(record: Record) -> None:
    finding = verify(record, keys=OTHER_KEYS)
    assert finding is not None
    assert finding.kind is ProblemKind.UNKNOWN_KEY


def test_an_edited_legacy_entry_breaks_the_first_link() -> None:
    """Entries from before the chain are covered by the genesis value ``chain_1`` commits to."""
    legacy = LegacyDigest()
    legacy.update({name: "a" for name in AUDIT_CONTENT_FIELDS} | {"created_at": NOW})
    content = audit_content({name: "b" for name in AUDIT_CONTENT_FIELDS} | {"created_at": NOW})
    link = next_link(KEYS, legacy.head(), content)
    entry = ChainEntry(1, link.seq, link.key_id, link.mac, link.chain, content)
    assert verify_chain([entry], keys=KEYS, start=legacy.head()).intact

    edited = LegacyDigest()
    edited.update({name: "a" for name in AUDIT_CONTENT_FIELDS} | {"created_at": NOW, "action": "z"})
    result = verify_chain([entry], keys=KEYS, start=edited.head())
    assert result.finding is not None
    assert result.finding.seq == 1
    assert genesis_chain(legacy.count, legacy.hexdigest()) == legacy.head().chain


def test_a_checkpoint_that_disagrees_is_a_rewrite() -> None:
    content = audit_content({name: "b" for name in AUDIT_CONTENT_FIELDS} | {"created_at": NOW})
    start = LegacyDigest().head()
    link = next_link(KEYS, start, content)
    entry = ChainEntry(1, link.seq, link.key_id, link.mac, link.chain, content)
    wrong = Checkpoint(seq=1, chain="f" * 64, source="checkpoint line 3")
    result = verify_chain([entry], keys=KEYS, start=start, checkpoints=[wrong])
    assert result.finding is not None
    assert result.finding.kind is ProblemKind.CHECKPOINT_MISMATCH
    assert "checkpoint line 3" in result.finding.describe()


def test_macs_separate_kinds_and_keys() -> None:
    fields = {"a": 1, "b": NOW}
    key = KEYS.active()
    audit = compute_mac(key.secret, kind=RecordKind.AUDIT, key_id=key.id, fields=fields)
    approval = compute_mac(key.secret, kind=RecordKind.APPROVAL, key_id=key.id, fields=fields)
    assert audit != approval
    signer = RecordSigner(KEYS)
    sealed = signer.seal(RecordKind.GUARDIAN, fields)
    check = signer.check
    assert check(RecordKind.GUARDIAN, fields, mac=sealed.mac, key_id=sealed.key_id, at=NOW) is (
        MacCheck.VALID
    )
    assert check(RecordKind.SNAPSHOT, fields, mac=sealed.mac, key_id=sealed.key_id, at=NOW) is (
        MacCheck.MISMATCH
    )
    assert check(RecordKind.GUARDIAN, fields, mac=None, key_id=None, at=NOW) is MacCheck.MISSING
    assert check(RecordKind.GUARDIAN, fields, mac=sealed.mac, key_id="nope", at=NOW) is (
        MacCheck.UNKNOWN_KEY
    )
    # The surrogate id and the integrity columns are not part of the content.
    assert (
        check(
            RecordKind.GUARDIAN,
            fields | {"id": 7, "mac": "x"},
            mac=sealed.mac,
            key_id=sealed.key_id,
            at=NOW,
        )
        is MacCheck.VALID
    )


@pytest.mark.parametrize("seq", [1, 2])
def test_a_duplicate_seq_is_an_insertion(seq: int) -> None:
    start = LegacyDigest().head()
    head, entries = start, []
    for n in range(2):
        content = audit_content({"created_at": NOW, "actor_id": f"a{n}"})
        link = next_link(KEYS, head, content)
        entries.append(ChainEntry(n, link.seq, link.key_id, link.mac, link.chain, content))
        head = ChainHead(link.seq, link.chain)
    entries.insert(seq, entries[seq - 1]._replace(entry_id=50))
    result = verify_chain(entries, keys=KEYS, start=start, recorded_head=head)
    assert result.finding is not None
    assert result.finding.kind is ProblemKind.INSERTED
    assert result.finding.seq == seq


@SETTINGS
@given(
    approval_requests(),
    st.dictionaries(
        st.sampled_from(AUDIT_CONTENT_FIELDS),
        st.one_of(st.none(), texts(max_size=8), st.integers(), st.booleans()),
    ),
    st.dictionaries(texts(max_size=5), st.one_of(st.none(), texts(max_size=8), st.integers())),
)
def test_the_fast_canonical_form_is_the_row_hashers(
    approval: ApprovalRequest, columns: dict[str, Any], payload: dict[str, Any]
) -> None:
    """The one-pass rendering the verifier uses is exactly the seed's row hash text."""
    assert canonical_content(approval) == RowHasher.canonical_json(approval)
    values = columns | {"payload": payload, "created_at": NOW + timedelta(hours=1)}
    assert canonical_content(values) == RowHasher.canonical_json(values)
    # The payload as the audit writer stores it (canonical text), spliced in unparsed.
    stored = values | {"payload": canonical_json_text(payload)}
    assert canonical_content(stored) == RowHasher.canonical_json(values)
    # A value that holds the splice marker itself cannot confuse it.
    tricky = stored | {"actor_id": "\x000"}
    assert canonical_content(tricky) == RowHasher.canonical_json(values | {"actor_id": "\x000"})


# --- post-trade snapshots against their own entry (``snapshot.recorded``) -----------------------

SNAPSHOT_FIELDS = {
    "approval_id": 7,
    "bid": Decimal("1.16012000"),
    "ask": Decimal("1.16031000"),
    "spread": Decimal("0.00019000"),
    "mid_price": Decimal("1.16021500"),
    "response_latency_ms": Decimal("42.50000000"),
    "price_deviation_pct": Decimal("0.01853000"),
    "correlation_id": "corr-snap",
    "created_at": NOW,
}


def _snapshot(**changes: Any) -> tuple[dict[str, Any], str]:
    """A stored snapshot row (id, MAC, key id) and the MAC its entry recorded."""
    sealed = RecordSigner(KEYS).seal(RecordKind.SNAPSHOT, SNAPSHOT_FIELDS)
    row = {**SNAPSHOT_FIELDS, "id": 3, "mac": sealed.mac, "mac_key_id": sealed.key_id}
    return row | changes, sealed.mac


def _check(row: dict[str, Any], trail_mac: str | None, **flags: bool) -> Finding | None:
    return check_snapshot(
        RecordSigner(KEYS), row, trade_id="t-1", trail_mac=trail_mac, legacy=False, **flags
    )


def test_a_snapshot_matching_its_entry_verifies() -> None:
    row, trail = _snapshot()
    assert _check(row, trail) is None
    # The surrogate id is not MAC'd: a row renumbered still matches its entry.
    assert _check(row | {"id": 99}, trail) is None


@SETTINGS
@given(st.sampled_from(sorted(SNAPSHOT_FIELDS)))
def test_an_edited_snapshot_is_named(name: str) -> None:
    row, trail = _snapshot()
    finding = _check(row | {name: _other_value(row[name])}, trail)
    assert finding is not None
    assert finding.kind is ProblemKind.SNAPSHOT_DIFFERS
    assert finding.describe() == (
        "snapshot differs from its trail at trade t-1: "
        "post-trade snapshot 3 does not match its MAC (edited)"
    )


def test_a_snapshot_without_its_entry_is_an_insertion_unless_from_before_entries() -> None:
    row, _trail = _snapshot()
    finding = _check(row, None)
    assert finding is not None and finding.kind is ProblemKind.SNAPSHOT_DIFFERS
    assert finding.detail == "post-trade snapshot 3 has no audit entry (inserted)"
    legacy = check_snapshot(RecordSigner(KEYS), row, trade_id="t-1", trail_mac=None, legacy=True)
    assert legacy is None
    # A legacy snapshot edited is still caught by its MAC.
    edited = check_snapshot(
        RecordSigner(KEYS),
        row | {"bid": Decimal("1.15")},
        trade_id="t-1",
        trail_mac=None,
        legacy=True,
    )
    assert edited is not None and edited.kind is ProblemKind.SNAPSHOT_DIFFERS


def test_a_snapshot_must_be_the_one_its_entry_recorded() -> None:
    # Another genuine snapshot (its own valid MAC) in place of the one the entry recorded.
    _row, trail = _snapshot()
    sealed = RecordSigner(KEYS).seal(RecordKind.SNAPSHOT, SNAPSHOT_FIELDS | {"approval_id": 8})
    other = {**SNAPSHOT_FIELDS, "approval_id": 8, "id": 3}
    other |= {"mac": sealed.mac, "mac_key_id": sealed.key_id}
    finding = _check(other, trail)
    assert finding is not None
    assert finding.detail == "post-trade snapshot 3 is not the one its audit entry recorded"


def test_only_a_snapshot_from_before_macs_may_lack_one() -> None:
    row, _trail = _snapshot(mac=None, mac_key_id=None)
    assert (
        check_snapshot(
            RecordSigner(KEYS), row, trade_id="t-1", trail_mac=None, legacy=True, unsealed=True
        )
        is None
    )
    finding = check_snapshot(RecordSigner(KEYS), row, trade_id="t-1", trail_mac=None, legacy=True)
    assert finding is not None and finding.detail == "post-trade snapshot 3 has no MAC"


def test_a_snapshot_under_a_foreign_key_is_an_unknown_key() -> None:
    sealed = RecordSigner(OTHER_KEYS).seal(RecordKind.SNAPSHOT, SNAPSHOT_FIELDS)
    row = {**SNAPSHOT_FIELDS, "id": 3, "mac": sealed.mac, "mac_key_id": sealed.key_id}
    finding = _check(row, sealed.mac)
    assert finding is not None and finding.kind is ProblemKind.UNKNOWN_KEY
