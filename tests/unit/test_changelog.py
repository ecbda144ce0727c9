"""Changelog records through the batch writer: serialised as Faust does, in the client
before a commit's flush returns, and the table learns their offsets (RocksDB's persisted
offsets).  The writer itself: ``test_writer.py``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.transport.drivers.aiokafka import Producer

from notifyd.stream import changelog
from notifyd.stream.changelog import DirectChangelogTable
from notifyd.stream.tables import current_event
from notifyd.stream.writer import Outbound, writer_of
from tests.support.app import build_app
from tests.support.kafka_client import FakeKafka, FakeTable, app_with


class _Event:
    """The current event as the tables read it (its partition); weakly referenced."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="events", partition=partition)


def _record(table: Any, n: int, partition: int = 3) -> Outbound:
    return Outbound("app-seen-changelog", f"k{n}".encode(), b'{"n":%d}' % n, partition,
                    None, table)


async def test_producer_flush_empties_the_writer_first(monkeypatch: pytest.MonkeyPatch) -> None:
    changelog.install()
    client, table = FakeKafka(), FakeTable()
    app = app_with(client)
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
    client = FakeKafka()
    rt.app.producer._producer = client  # type: ignore[attr-defined]
    ev = _Event(5)
    try:
        with current_event(ev):  # type: ignore[arg-type]
            seen["user-1:e1"] = [1.5, 5, "t/5/9", "user-1"]
        await writer_of(rt.app).drain()
        with current_event(ev):  # type: ignore[arg-type]
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


@pytest.mark.parametrize("value", [
    {"items": [{"id": "n1", "read": False, "data": {"a": [1, 2.5, None]}}], "unread": 1},
    {1: "non-str key", "nested": {2: True}},
    [1.5, 5, "t/5/9", "user-1", "ünïcode"],
    "a bare string",
    7,
])
async def test_direct_encoding_is_the_registrys(value: Any) -> None:
    """The direct encoders give the bytes Faust's serializer registry gives."""
    rt = build_app()
    table: Any = rt.tables.inbox
    topic = table.changelog_topic
    reg = rt.app.serializers
    assert table._encode_key("user-1", None) == reg.dumps_key(
        topic.key_type, "user-1", serializer="raw")
    assert table._encode_value(value, None) == reg.dumps_value(
        topic.value_type, value, serializer="json")
    assert table._encode_value(None, "raw") is None  # a tombstone


async def test_get_answers_as_a_mapping_and_faust_sees_it() -> None:
    rt = build_app()
    seen: Any = rt.tables.seen
    gets: list[Any] = []
    seen._sensor_on_get = lambda table, key: gets.append(key)
    seen.data["k"] = [1]
    assert seen.get("k") == [1]
    assert seen.get("missing") is None
    assert seen.get("missing", 5) == 5
    assert gets == ["k", "missing", "missing"]
