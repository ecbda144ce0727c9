"""Guards against the Faust faults that could hurt notifyd (README: Reliability).

faust #606: with ``concurrency > 1`` an agent can commit the offset of an event that
another of its actors is still processing; a crash then loses that event.  notifyd's
agents all run with concurrency 1 (ordering per partition matters too: preferences,
inbox edits), and this test fails if one ever changes.
"""

from __future__ import annotations

import notifyd.agents.control
import notifyd.agents.email
import notifyd.agents.inapp
import notifyd.agents.ingest
import notifyd.agents.preferences
import notifyd.agents.push
import notifyd.agents.sms
import notifyd.agents.status
import notifyd.agents.webhook  # noqa: F401
from notifyd.app import app


def test_every_agent_runs_with_concurrency_one() -> None:
    agents = list(app.agents.values())
    assert len(agents) >= 9
    for agent in agents:
        assert agent.concurrency == 1, f"{agent.name}: concurrency>1 risks faust #606"


def test_processing_guarantee_is_at_least_once() -> None:
    # exactly_once has open duplicate bugs in faust-streaming; idempotency instead.
    assert app.conf.processing_guarantee.value == "at_least_once"


async def test_producer_buffer_flush_waits_until_empty() -> None:
    """faust's ProducerBuffer.flush() returned after 0.1 s without progress even with
    messages left; the consumer commits right after it (notifyd.faust_fixes)."""
    import asyncio
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    sent: list[int] = []

    async def slow_publish(fut: object, wait: bool = False) -> None:
        await asyncio.sleep(0.25)  # longer than Faust's 0.1 s give-up
        sent.append(1)

    message = SimpleNamespace(channel=SimpleNamespace(publish_message=slow_publish))
    buf = ProducerBuffer()
    buf.app = app
    await buf.start()
    try:
        for _ in range(3):
            buf.pending.put_nowait(SimpleNamespace(message=message))  # type: ignore[arg-type]
        await buf.flush()
        assert buf.size == 0 and len(sent) == 3
    finally:
        await buf.stop()
