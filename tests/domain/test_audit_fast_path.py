"""The verifier's one-pass rendering of an audit entry (``hitl.audit_chain.audit_content_text``)
is byte for byte the canonical content a MAC covers, or declines; and a verifier fed that text
finds exactly what it finds from the content itself (issue 15: verify speed without a weaker
check)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hitl.audit_chain import (
    AUDIT_CONTENT_FIELDS,
    ChainEntry,
    ChainHead,
    audit_content,
    audit_content_text,
    next_link,
    verify_chain,
)
from hitl.keys import KeyPurpose, new_keyring
from hitl.record_mac import canonical_content, canonical_json_text
from tests.strategies import texts

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
KEYS = new_keyring(KeyPurpose.RECORD, now=NOW)
START = ChainHead(0, "0" * 64)
ALWAYS_SET = {"action", "actor_id", "correlation_id", "target_id", "target_type"}

# Any text (control characters, quotes, backslashes, non-ASCII, the splice marker), None, and
# values of other types a column of SQLite's can be made to hold.
column_values = st.one_of(
    st.none(),
    texts(max_size=12),
    st.sampled_from(['"', "\\", "\x00", "\x000", "é", "\u2028", "null", "{}"]),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=4),
)
edits = st.one_of(st.none(), texts(max_size=12), st.integers(), st.booleans())
"""What an edited column may hold that a canonical form can render at all."""
payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), texts(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(texts(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)


def _stored(columns: dict[str, Any], payload: str, created_at: datetime) -> list[Any]:
    """The entry's columns in ``AUDIT_CONTENT_FIELDS`` order, as a reader hands them over."""
    values = columns | {"payload": payload, "created_at": created_at}
    return [values.get(name) for name in AUDIT_CONTENT_FIELDS]


# Mostly text, as the gateway writes; now and then anything else.
columns = st.fixed_dictionaries(
    {
        name: st.one_of(texts(max_size=12), texts(max_size=12), texts(max_size=12), column_values)
        for name in AUDIT_CONTENT_FIELDS
        if name not in ("payload", "created_at")
    }
)


@settings(max_examples=400)
@given(columns, payloads, times)
def test_the_one_pass_text_is_the_canonical_content_or_nothing(
    columns: dict[str, Any], payload: Any, created_at: datetime
) -> None:
    stored = canonical_json_text(payload)
    # The driver hands the payload over as plain text; the general path marks it as canonical.
    values = _stored(columns, str(stored), created_at)
    iso = created_at.isoformat(timespec="microseconds")
    text = audit_content_text(values, iso)
    content = dict(zip(AUDIT_CONTENT_FIELDS, values, strict=True)) | {"payload": stored}
    if text is None:
        # It declines only for values that are not text, or NULL where the gateway never
        # writes one (the general path renders those).
        assert any(
            (value is not None and type(value) is not str) or (value is None and name in ALWAYS_SET)
            for name, value in content.items()
            if name not in ("payload", "created_at")
        )
        return
    assert text == canonical_content(content)


@settings(max_examples=200)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "actor_id": texts(min_size=1, max_size=10),
                "target_id": texts(min_size=1, max_size=10),
                "record_mac": st.none() | texts(max_size=10),
            }
        ),
        min_size=1,
        max_size=5,
    ),
    st.data(),
)
def test_a_verifier_fed_the_text_finds_what_it_finds_from_the_content(
    rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    head = START
    entries = []
    for number, row in enumerate(rows):
        values = audit_content(
            {
                "action": "approval.decided",
                "target_type": "approval",
                "correlation_id": f"corr-{number}",
                "created_at": NOW + timedelta(seconds=number),
                "payload": canonical_json_text({"n": number}),
                **row,
            }
        )
        link = next_link(KEYS, head, values)
        entries.append(ChainEntry(number, link.seq, link.key_id, link.mac, link.chain, values))
        head = ChainHead(link.seq, link.chain)
    # One column of one entry edited (or not), as a database writer could.
    index = data.draw(st.integers(0, len(entries) - 1))
    name = data.draw(st.sampled_from([*AUDIT_CONTENT_FIELDS, None]))
    if name is not None and name != "created_at":
        edited = dict(entries[index].content)
        edited[name] = data.draw(edits.filter(lambda v: v != edited[name]))
        if name == "payload" and type(edited[name]) is str:
            edited[name] = canonical_json_text(edited[name])
        entries[index] = entries[index]._replace(content=edited)

    def with_text(entry: ChainEntry) -> ChainEntry:
        values = [entry.content[field] for field in AUDIT_CONTENT_FIELDS]
        iso = entry.content["created_at"].isoformat(timespec="microseconds")
        return entry._replace(canonical=audit_content_text(values, iso))

    plain = verify_chain(entries, keys=KEYS, start=START, recorded_head=head)
    fast = verify_chain([with_text(e) for e in entries], keys=KEYS, start=START, recorded_head=head)
    assert fast == plain
    assert (plain.finding is None) == (name is None or name == "created_at")
