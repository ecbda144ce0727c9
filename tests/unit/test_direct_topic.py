"""``DirectTopic.send``: bytes straight to the running producer, anything else through
Faust's ``Topic.send`` (its machinery was ~6 % of a busy worker's CPU)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from notifyd.stream.declare import DirectTopic
from tests.support.app import build_app


class RunningProducer:
    """What ``DirectTopic`` uses of Faust's aiokafka producer once it runs: ``send``
    hands a record to the Kafka client and returns the future of its delivery."""

    def __init__(self) -> None:
        self._producer = object()  # the started client
        self.sent: list[tuple[Any, ...]] = []
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, *args: Any) -> asyncio.Future[Any]:
        self.sent.append(args)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


async def test_bytes_go_straight_to_the_running_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = build_app()
    topic = rt.topics.deliver["sms"]
    assert isinstance(topic, DirectTopic)
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
    assert len(calls) == 3 and producer.sent == []
