"""Replays committed histories of the approve, reject, slippage and expire paths, so that a
change that would break running approvals fails CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from hitl.settings import get_settings
from workflows.approval import ApprovalWorkflow
from workflows.connection import gateway_data_converter
from workflows.guardian import GuardianWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_every_path_has_a_history() -> None:
    stems = {p.stem for p in HISTORIES}
    assert stems >= {"approve", "reject", "slippage", "expire"}  # the first workflow code's
    assert stems >= {f"{path}-v2" for path in ("approve", "reject", "slippage", "expire")}
    assert stems >= {"guardian-v2", "guardian-workflow-v2"}
    # v3: short reads and writes as local activities
    assert stems >= {
        f"{path}-v3" for path in ("approve", "reject", "slippage", "expire", "guardian")
    }
    # v4: signed commands, the worker's policy recorded at start, the signed lock notice
    assert stems >= {
        f"{path}-v4"
        for path in ("approve", "reject", "slippage", "expire", "guardian", "guardian-workflow")
    }
    # v5: search attributes, summaries, current details, reminders and escalations (issue 18)
    assert stems >= {
        f"{path}-v5"
        for path in ("approve", "reject", "slippage", "expire", "guardian", "guardian-workflow")
    }


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    text = path.read_text()
    workflow_id = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    # With the payload codec, as the worker replays them: histories recorded before payloads
    # were encrypted pass through it unchanged.
    replayer = Replayer(
        workflows=[ApprovalWorkflow, GuardianWorkflow],
        data_converter=gateway_data_converter(get_settings()),
    )
    result = await replayer.replay_workflow(WorkflowHistory.from_json(workflow_id, text))
    assert result.replay_failure is None
