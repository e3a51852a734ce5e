"""After a Guardian lock (issue 16 item 4), against the local fake of Discord's REST API: every
pending approval's message is edited to show the rejection, its buttons gone (not deleted), and
one summary notice is posted for the whole cascade."""

from __future__ import annotations

from typing import Any

from hitl.messages import GuardianCommand
from tests.discord.test_discord import MESSAGES, Rig, custom_ids
from tests.temporal_fixtures import wait_until
from workflows.client import GuardianClient

CASCADE_TITLE = "Guardian lock: trading halted"


def summaries(rig: Rig) -> list[dict[str, Any]]:
    return [
        m
        for m in rig.fake.channel_messages()
        if m["embeds"] and m["embeds"][0].get("title") == CASCADE_TITLE
    ]


async def test_a_lock_ends_each_pending_message_and_posts_one_summary(rig: Rig) -> None:
    pending = [await rig.request(instrument) for instrument in ("EUR/USD", "BTC-USD", "ETH-USD")]
    for _, message in pending:
        assert custom_ids(message)  # live buttons before the lock
    posted_before = len(rig.fake.requests("POST", MESSAGES))

    guardian = GuardianClient(rig.env.client, task_queue=rig.task_queue)
    await guardian.lock(
        GuardianCommand(reason="Daily drawdown limit reached", by="admin", correlation_id="c-1")
    )

    def ended() -> bool:
        messages = [rig.message_of(approval) for approval, _ in pending]
        return all(m is not None and m["components"] == [] for m in messages)

    await wait_until(ended, timeout=60)
    await wait_until(lambda: len(summaries(rig)) == 1, timeout=60)
    for approval, original in pending:
        edited = rig.message_of(approval)
        assert edited is not None
        # The same message, edited: still in the channel, showing the rejection.
        assert edited["id"] == original["id"]
        assert edited["components"] == []
        assert edited["embeds"], edited
        assert "Guardian" in str(edited["embeds"][0]), edited["embeds"][0]
    summary = summaries(rig)[0]
    assert summary["embeds"][0]["description"] == "Daily drawdown limit reached"
    # Nothing else was posted: one summary, no message per approval, none deleted.
    assert len(rig.fake.requests("POST", MESSAGES)) == posted_before + 1
    assert rig.fake.requests("DELETE", MESSAGES + r"/\d+") == []
    await guardian.unlock(GuardianCommand(by="admin", correlation_id="c-2"))
