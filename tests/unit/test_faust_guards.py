"""Guards against the Faust faults that could hurt notifyd (README: Reliability).

faust #606: with ``concurrency > 1`` an agent can commit the offset of an event that
another of its actors is still processing; a crash then loses that event.  notifyd's
agents all run with concurrency 1 (ordering per partition matters too: preferences,
inbox edits), and this test fails if one ever changes.
"""

from __future__ import annotations

import pytest

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


def test_acks_from_before_a_rebalance_are_not_booked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message fetched in an earlier consumer generation (or acked while flow control
    is paused for a rebalance) is fetched and processed again after Faust's seek to the
    committed offset; booking its ack would let a commit pass the re-fetched copy."""
    from faust.types import TP, Message

    from notifyd.topics import events_topic

    consumer = app.consumer
    topic = events_topic.get_topic_name()
    tp = TP(topic, 3)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda t: t == topic)
    monkeypatch.setattr(app, "consumer_generation_id", 7)
    consumer._acked.pop(tp, None)
    consumer._acked_index.pop(tp, None)

    def message(offset: int, generation: int | None) -> Message:
        return Message(topic, 3, offset, 0.0, 0, [], b"k", b"v", None,
                       generation_id=generation)

    was_active = app.flow_control.is_active()
    app.flow_control.resume()  # a running worker between rebalances
    try:
        assert consumer.ack(message(10, 7)) is True  # current generation: booked
        stale = message(11, 6)
        assert consumer.ack(stale) is False and stale.acked
        assert consumer.ack(message(12, None)) is True  # no generation known: Faust's rule
        app.flow_control.suspend()
        assert consumer.ack(message(13, 7)) is False  # during a rebalance
        assert consumer._acked[tp] == [10, 12]
    finally:
        if was_active:
            app.flow_control.resume()
        else:
            app.flow_control.suspend()
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
