"""``DirectTopic.send``: bytes to the app's batch writer (``AwaitedTopic``: straight to
the running producer, its future returned), anything else through Faust's
``Topic.send`` (its machinery was ~6 % of a busy worker's CPU)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from notifyd.stream.declare import AwaitedTopic, DirectTopic
from notifyd.stream.writer import writer_of
from tests.support.app import build_app
from tests.support.kafka_client import RunningProducer


async def test_bytes_go_to_the_batch_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = build_app()
    topic = rt.topics.deliver["sms"]
    assert isinstance(topic, DirectTopic) and not isinstance(topic, AwaitedTopic)
    producer = RunningProducer()
    monkeypatch.setattr(type(rt.app), "producer", property(lambda app: producer))
    name = topic.get_topic_name()
    before = rt.app.monitor.messages_sent_by_topic[name]
    assert await topic.send(key=b"u1", value=b"{}", headers=[("h", b"v")]) is None
    await writer_of(rt.app).drain()
    client = producer._producer
    assert [(t, k, v) for t, k, v, _ in client.sent] == [(name, b"u1", b"{}")]
    assert client.batches[0][2] == [(b"u1", b"{}", [("h", b"v")])]
    assert rt.app.monitor.messages_sent_by_topic[name] == before + 1
    assert producer.sent == []  # not one by one


async def test_awaited_topics_hand_the_record_over_and_return_its_future(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = build_app()
    for dlq in (rt.topics.events_dlq, rt.topics.deliveries_dlq, rt.topics.events):
        assert isinstance(dlq, AwaitedTopic)
    topic = rt.topics.events_dlq
    producer = RunningProducer()
    monkeypatch.setattr(type(rt.app), "producer", property(lambda app: producer))
    name = topic.get_topic_name()
    before = rt.app.monitor.messages_sent_by_topic[name]
    fut = await topic.send(key=b"u1", value=b"{}", headers=[("h", b"v")])
    assert producer.sent == [(name, b"u1", b"{}", None, None, [("h", b"v")])]
    assert rt.app.monitor.messages_sent_by_topic[name] == before + 1
    producer.futures[0].set_result("meta")
    assert await fut == "meta"
    # A record the broker refuses is counted as Faust counts it.
    errors = rt.app.monitor.send_errors
    await topic.send(key=None, value=b"x")
    producer.futures[1].set_exception(RuntimeError("refused"))
    await asyncio.sleep(0)  # the done callback runs on the next loop turn
    assert rt.app.monitor.send_errors == errors + 1


async def test_anything_else_goes_through_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = build_app()
    topic = rt.topics.control
    calls: list[dict[str, Any]] = []

    async def faust_send(self: Any, **kw: Any) -> str:
        calls.append(kw)
        return "faust"

    monkeypatch.setattr("faust.topics.Topic.send", faust_send)
    # The producer does not run (an agent's test_context): Faust's path.
    assert await topic.send(key=b"k", value=b"v") == "faust"
    producer = RunningProducer()
    monkeypatch.setattr(type(rt.app), "producer", property(lambda app: producer))
    assert await topic.send(key="text", value=b"v") == "faust"  # not bytes
    assert await topic.send(key=b"k", value=b"v", callback=print) == "faust"
    assert await topic.send(key=b"k", value=b"v", timestamp=1.5) == "faust"
    assert len(calls) == 4 and producer.sent == [] and producer._producer.sent == []
