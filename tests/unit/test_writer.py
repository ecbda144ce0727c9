"""The batch writer: what the app produces reaches the Kafka client a batch per
partition, in order, before a commit's flush returns; nothing is dropped when the client
cannot take it; tables learn the offsets of their changelog records."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from notifyd.stream import writer as writer_module
from notifyd.stream.writer import Outbound, writer_of
from tests.support.kafka_client import FakeKafka, FakeTable, app_with


def _change(table: Any, n: int, partition: int = 3, key: str | None = None) -> Outbound:
    return Outbound("app-seen-changelog", (key or f"k{n}").encode(), b'{"n":%d}' % n,
                    partition, None, table)


async def test_records_go_a_batch_per_partition_in_order_and_drain_waits_for_them() -> None:
    client, table = FakeKafka(), FakeTable()
    app = app_with(client)
    writer = writer_of(app)
    assert writer_of(app) is writer
    client.gate.clear()  # the client is busy: records queue up
    for n in range(5):
        writer.put(_change(table, n, partition=3 if n % 2 else 4))
    draining = asyncio.create_task(writer.drain())
    await asyncio.sleep(0.01)
    assert not draining.done() and len(writer) == 5 and client.sent == []
    client.gate.set()
    await asyncio.wait_for(draining, 5)
    assert len(writer) == 0
    assert [(p, [k for k, _, _ in recs]) for _, p, recs in client.batches] == [
        (4, [b"k0", b"k2", b"k4"]), (3, [b"k1", b"k3"]),
    ]
    assert app.monitor.messages_sent == 5
    assert table.persisted == []  # not acknowledged by the broker yet
    client.release()
    await asyncio.sleep(0)
    # The table learns the offset of the last record of each batch.
    assert sorted(table.persisted) == [(TopicPartition("app-seen-changelog", 3), 101),
                                       (TopicPartition("app-seen-changelog", 4), 102)]


async def test_a_full_batch_continues_in_the_next_one() -> None:
    client, table = FakeKafka(batch_capacity=2), FakeTable()
    writer = writer_of(app_with(client))
    for n in range(5):
        writer.put(_change(table, n))
    await writer.drain()
    assert [len(recs) for _, _, recs in client.batches] == [2, 2, 1]
    assert [k for _, k, _, _ in client.sent] == [f"k{n}".encode() for n in range(5)]


async def test_a_tables_earlier_writes_of_a_key_are_coalesced_to_the_last() -> None:
    client, table = FakeKafka(), FakeTable()
    writer = writer_of(app_with(client))
    client.gate.clear()
    writer.put(_change(table, 1, key="a"))
    writer.put(_change(table, 2, key="b"))
    writer.put(Outbound("app-status", b"a", b"not a table", 3))  # kept: not a changelog
    writer.put(Outbound("app-status", b"a", b"not a table either", 3))
    writer.put(_change(table, 3, key="a"))
    writer.put(_change(table, 4, key="a", partition=5))  # another partition: kept
    client.gate.set()
    await writer.drain()
    assert client.sent == [
        ("app-seen-changelog", b"b", b'{"n":2}', 3),
        ("app-seen-changelog", b"a", b'{"n":3}', 3),
        ("app-status", b"a", b"not a table", 3),
        ("app-status", b"a", b"not a table either", 3),
        ("app-seen-changelog", b"a", b'{"n":4}', 5),
    ]


async def test_keyed_records_get_the_partition_the_client_partitioner_picks() -> None:
    client = FakeKafka(partitions=8)
    writer = writer_of(app_with(client))
    for user in ("u1", "u2", "someone-else"):
        writer.put(Outbound("app-deliver-webhook", user.encode(), b"{}"))
    await writer.drain()
    assert sorted((k, p) for _, k, _, p in client.sent) == sorted(
        (u.encode(), (murmur2(u.encode()) & 0x7FFFFFFF) % 8)
        for u in ("u1", "u2", "someone-else")
    )
    headers = [("notifyd-origin", b"x/1/2")]
    writer.put(Outbound("app-events-rekeyed", b"u1", b"{}", 0, headers))
    await writer.drain()
    assert client.batches[-1][2] == [(b"u1", b"{}", headers)]


async def test_what_the_client_cannot_take_is_tried_again_in_order() -> None:
    client, table = FakeKafka(batch_capacity=1), FakeTable()
    writer = writer_of(app_with(client))
    client.fail_next = 2  # the client refuses the first two batches (restarting)
    for n in range(3):
        writer.put(_change(table, n))
    await asyncio.wait_for(writer.drain(), 5)
    assert [k for _, k, _, _ in client.sent] == [b"k0", b"k1", b"k2"]


async def test_a_failure_midway_resends_only_what_was_not_taken() -> None:
    client, table = FakeKafka(batch_capacity=1), FakeTable()
    writer = writer_of(app_with(client))
    taken = 0
    send_batch = client.send_batch

    async def second_one_fails(builder: Any, topic: str, *, partition: int) -> Any:
        nonlocal taken
        taken += 1
        if taken == 2:
            raise ConnectionError("leader moved")
        return await send_batch(builder, topic, partition=partition)

    client.send_batch = second_one_fails  # type: ignore[method-assign]
    client.gate.clear()
    for n in range(3):
        writer.put(_change(table, n))
    writer.put(_change(table, 9, key="k0"))  # supersedes k0's first write
    client.gate.set()
    await asyncio.wait_for(writer.drain(), 5)
    # k1 was taken, k2 failed: k2 and what followed it came again, once each, in order;
    # k0's first write was superseded by its last and is never sent.
    assert [(k, v) for _, k, v, _ in client.sent] == [
        (b"k1", b'{"n":1}'), (b"k2", b'{"n":2}'), (b"k0", b'{"n":9}'),
    ]


async def test_a_refused_batch_is_counted_and_not_persisted() -> None:
    client, table = FakeKafka(), FakeTable()
    app = app_with(client)
    writer = writer_of(app)
    writer.put(_change(table, 1))
    writer.put(_change(table, 2))
    await writer.drain()
    client.futures[0].set_exception(RuntimeError("record too large"))
    await asyncio.sleep(0)
    assert app.monitor.send_errors == 2 and table.persisted == []


async def test_a_stopped_client_ends_the_task_and_drain_reports_what_is_left(
    monkeypatch: Any,
) -> None:
    client = FakeKafka()
    app = app_with(client)
    writer = writer_of(app)
    app.producer._producer = None  # stopped
    writer.put(Outbound("app-status", b"a", b"x", 1))
    await asyncio.sleep(0)
    assert len(writer) == 1
    monkeypatch.setattr(writer_module, "FLUSH_STALL_S", 0.0)
    await asyncio.wait_for(writer.drain(), 5)  # gives up, logged, instead of hanging
    assert len(writer) == 1 and client.sent == []


async def test_a_partition_the_client_cannot_name_yet_keeps_the_chunk() -> None:
    """Waiting for metadata fails (the broker is away): nothing of the chunk is lost."""
    client = FakeKafka()
    writer = writer_of(app_with(client))
    calls = 0
    failed = asyncio.Event()

    async def metadata_away(topic: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            failed.set()
            raise ConnectionError("no metadata")

    client._metadata.n = 0  # the topic is not known yet: the writer waits for metadata
    client.client._wait_on_metadata = metadata_away
    writer.put(Outbound("app-status", b"a", b"1", 2))
    writer.put(Outbound("app-deliver-webhook", b"u1", b"2"))
    await asyncio.wait_for(failed.wait(), 5)  # the first try failed; the retry backs off
    client._metadata.n = 8
    await asyncio.wait_for(writer.drain(), 5)
    assert sorted(v for _, _, v, _ in client.sent) == [b"1", b"2"] and calls >= 1
