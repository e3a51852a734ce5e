"""The audit chain's checkpoint file: heads of the chain recorded outside the database.

``<HITL_DATA_DIR>/audit-checkpoints.jsonl`` gets one JSON line per verified head, appended and
``fsync``ed, never rewritten. Someone who can rewrite the database cannot rewind this file, so
deleting the latest audit entries (and the head row with them) shows as a missing tail. Each line
carries a MAC under the RECORD key, so an edited line is refused rather than trusted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hitl.audit_chain import ChainHead, Checkpoint, Finding, ProblemKind, checkpoint_fields
from hitl.record_mac import MacCheck, RecordKeys, RecordKind, RecordSigner

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


def checkpoint_path(data_dir: Path) -> Path:
    """Where the checkpoint file of a data folder lives."""
    return data_dir / CHECKPOINT_FILE


def append_checkpoint(path: Path, keys: RecordKeys, head: ChainHead, *, at: datetime) -> None:
    """Append ``head`` as one line and flush it to disk before returning."""
    sealed = RecordSigner(keys).seal(
        RecordKind.CHECKPOINT, checkpoint_fields(head.seq, head.chain, at)
    )
    line = json.dumps(
        {
            "seq": head.seq,
            "chain": head.chain,
            "at": at.isoformat(timespec="microseconds"),
            "key_id": sealed.key_id,
            "mac": sealed.mac,
        },
        separators=(",", ":"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_APPEND: concurrent writers (two workers on one data folder) never overwrite each other.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (line + "\n").encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True, slots=True)
class CheckpointFile:
    """What the file holds: its checkpoints, or the first line that is not the gateway's."""

    checkpoints: list[Checkpoint]
    finding: Finding | None = None


def read_checkpoints(path: Path, keys: RecordKeys) -> CheckpointFile:
    """Every checkpoint in the file (none when it does not exist yet), each line's MAC checked.

    A partial last line (a crash while appending) is ignored; any other line that does not parse
    or whose MAC fails is a finding.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CheckpointFile([])
    signer = RecordSigner(keys)
    checkpoints: list[Checkpoint] = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path.name} line {number}"
        try:
            data = json.loads(line)
            seq, chain = int(data["seq"]), str(data["chain"])
            at = datetime.fromisoformat(str(data["at"]))
            check = signer.check(
                RecordKind.CHECKPOINT,
                checkpoint_fields(seq, chain, at),
                mac=data.get("mac"),
                key_id=data.get("key_id"),
                at=at,
            )
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # the last line, cut short by a crash while it was written
            check = MacCheck.MISMATCH
        if check is not MacCheck.VALID:
            kind = (
                ProblemKind.UNKNOWN_KEY
                if check is MacCheck.UNKNOWN_KEY
                else ProblemKind.CHECKPOINT_MISMATCH
            )
            finding = Finding(kind=kind, detail=f"{source} is not a checkpoint the gateway wrote")
            return CheckpointFile(checkpoints, finding)
        checkpoints.append(
            Checkpoint(
                seq=seq,
                chain=chain,
                source=source,
                at=at,
                key_id=data.get("key_id"),
                mac=data.get("mac"),
            )
        )
    return CheckpointFile(checkpoints)
