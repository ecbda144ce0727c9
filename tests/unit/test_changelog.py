"""The changelog writer: table writes reach the Kafka client in order, before a commit's
flush returns, and the table learns their offsets (RocksDB's persisted offsets)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.transport.drivers.aiokafka import Producer

from notifyd.stream import changelog
from notifyd.stream.changelog import DirectChangelogTable, writer_of
from notifyd.stream.tables import current_event
from tests.support.app import build_app


class FakeClient:
    """The Kafka client's ``send`` as Faust's producer exposes it: the record is taken
    when the coroutine returns, its metadata when the future resolves (``release``)."""

    def __init__(self) -> None:
        self._producer = object()  # "running"
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.futures: list[asyncio.Future[RecordMetadata]] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, topic: str, key: Any, value: Any, partition: int,
                   timestamp: Any, headers: Any) -> asyncio.Future[RecordMetadata]:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker away")
        self.sent.append((topic, key, value, partition))
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    def release(self) -> None:
        for i, fut in enumerate(self.futures):
            topic, _, _, partition = self.sent[i]
            if not fut.done():
                fut.set_result(RecordMetadata(topic, partition, TopicPartition(topic, partition),
                                              100 + i, -1, 0, 0))


def _app_with(client: FakeClient) -> Any:
    monitor = SimpleNamespace(messages_sent=0, messages_sent_by_topic=Counter(), send_errors=0)
    return SimpleNamespace(producer=client, monitor=monitor)


class FakeTable:
    def __init__(self) -> None:
        self.persisted: list[tuple[TopicPartition, int]] = []

    def _on_changelog_sent(self, fut: asyncio.Future[RecordMetadata]) -> None:
        res = fut.result()
        self.persisted.append((res.topic_partition, res.offset))


class _Event:
    """The current event as the tables read it (its partition); weakly referenced."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="events", partition=partition)


def _record(table: Any, n: int, partition: int = 3) -> Any:
    return changelog._Record(table, "app-seen-changelog", f"k{n}".encode(),
                             b'{"n":%d}' % n, partition)


async def test_writer_hands_records_over_in_order_and_drain_waits_for_them() -> None:
    client, table = FakeClient(), FakeTable()
    app = _app_with(client)
    writer = writer_of(app)
    assert writer_of(app) is writer
    client.gate.clear()  # the client is busy: records queue up
    for n in range(5):
        writer.put(_record(table, n))
    draining = asyncio.create_task(writer.drain())
    await asyncio.sleep(0.01)
    assert not draining.done() and len(writer) == 5 and client.sent == []
    client.gate.set()
    await asyncio.wait_for(draining, 5)
    assert len(writer) == 0
    assert [k for _, k, _, _ in client.sent] == [f"k{n}".encode() for n in range(5)]
    assert app.monitor.messages_sent == 5
    assert table.persisted == []  # not acknowledged by the broker yet
    client.release()
    await asyncio.sleep(0)
    assert table.persisted == [(TopicPartition("app-seen-changelog", 3), 100 + n)
                               for n in range(5)]


async def test_a_failed_send_is_retried_not_dropped() -> None:
    client, table = FakeClient(), FakeTable()
    writer = writer_of(_app_with(client))
    client.fail_next = 2
    writer.put(_record(table, 1))
    writer.put(_record(table, 2))
    await asyncio.wait_for(writer.drain(), 5)
    assert [k for _, k, _, _ in client.sent] == [b"k1", b"k2"]


async def test_a_refused_record_is_counted_and_not_persisted() -> None:
    client, table = FakeClient(), FakeTable()
    app = _app_with(client)
    writer = writer_of(app)
    writer.put(_record(table, 1))
    await writer.drain()
    client.futures[0].set_exception(RuntimeError("record too large"))
    await asyncio.sleep(0)
    assert app.monitor.send_errors == 1 and table.persisted == []


async def test_producer_flush_empties_the_writer_first(monkeypatch: pytest.MonkeyPatch) -> None:
    changelog.install()
    client, table = FakeClient(), FakeTable()
    app = _app_with(client)
    order: list[str] = []

    async def original(self: Any) -> None:
        order.append(f"client flush with {len(writer_of(self.app))} queued")

    monkeypatch.setattr(changelog, "_original_flush", original)
    client.gate.clear()
    writer_of(app).put(_record(table, 1))
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, client.gate.set)
    await Producer.flush(SimpleNamespace(app=app))  # type: ignore[arg-type]
    assert order == ["client flush with 0 queued"] and len(client.sent) == 1


async def test_tables_are_direct_and_fall_back_to_faust_without_a_running_producer() -> None:
    rt = build_app()
    seen = rt.tables.seen
    assert isinstance(seen, DirectChangelogTable)
    assert getattr(rt.app.producer, "_producer", None) is None  # not started
    sent: list[Any] = []
    ev = _Event(2)
    original = DirectChangelogTable.__mro__[1].send_changelog

    def faust_path(self: Any, partition: Any, key: Any, value: Any, *a: Any) -> Any:
        sent.append((partition, key, value))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    try:
        DirectChangelogTable.__mro__[1].send_changelog = faust_path  # type: ignore[method-assign]
        with current_event(ev):  # type: ignore[arg-type]
            seen["k"] = [1.0, 2, "t/2/0", "u"]
    finally:
        DirectChangelogTable.__mro__[1].send_changelog = original  # type: ignore[method-assign]
    assert sent == [(2, "k", [1.0, 2, "t/2/0", "u"])]
    assert len(writer_of(rt.app)) == 0


async def test_direct_path_serialises_as_faust_does() -> None:
    rt = build_app()
    seen = rt.tables.seen
    client = FakeClient()
    rt.app.producer._producer = client._producer  # type: ignore[attr-defined]
    rt.app.producer.send = client.send  # type: ignore[method-assign]
    ev = _Event(5)
    try:
        with current_event(ev):  # type: ignore[arg-type]
            seen["user-1:e1"] = [1.5, 5, "t/5/9", "user-1"]
            del seen["user-1:e1"]
        await writer_of(rt.app).drain()
    finally:
        rt.app.producer._producer = None  # type: ignore[attr-defined]
    topic = seen.changelog_topic.get_topic_name()
    assert client.sent == [
        (topic, b"user-1:e1", b'[1.5,5,"t/5/9","user-1"]', 5),
        (topic, b"user-1:e1", None, 5),  # a delete is a tombstone
    ]


# -- the Faust internals the writer relies on (faust-streaming is pinned) -------------------


def test_faust_commits_only_after_flushing_its_producer() -> None:
    """``Consumer.commit`` flushes the producer, whose flush empties the writer first."""
    import inspect

    from faust.transport.consumer import Consumer

    src = inspect.getsource(Consumer._commit_offsets)
    assert src.index("await self.app.producer.flush()") < src.index("await self._commit(")


async def test_the_table_persists_the_offset_a_record_got() -> None:
    """``_on_changelog_sent`` reads the aiokafka metadata the writer's future resolves to."""
    rt = build_app()
    table: Any = rt.tables.ledger
    persisted: list[tuple[TopicPartition, int]] = []
    table._data = SimpleNamespace(set_persisted_offset=lambda tp, off: persisted.append((tp, off)))
    fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
    tp = TopicPartition("x-ledger-changelog", 4)
    fut.set_result(RecordMetadata(tp.topic, 4, tp, 77, -1, 0, 0))
    table._on_changelog_sent(fut)
    assert persisted == [(tp, 77)]
