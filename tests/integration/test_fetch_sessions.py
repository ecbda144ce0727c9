"""Incremental fetch sessions (notifyd.stream.fetching, KIP-227) against the real brokers:
every record arrives once and in order, a seek is honoured, and on Apache Kafka the
fetches after the first carry only what changed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from notifyd.stream import fetching

pytestmark = pytest.mark.integration

PARTITIONS = 12


async def _produce(bootstrap: str, topic: str, n: int, start: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(start, start + n):
            # A third of the partitions get records; the rest stay empty (forgotten
            # and added again as the consumer's positions move, or never touched).
            await producer.send(topic, str(i).encode(), partition=i % (PARTITIONS // 3))
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(consumer: AIOKafkaConsumer, n: int) -> dict[int, list[int]]:
    got: dict[int, list[int]] = {}
    seen = 0
    while seen < n:
        batch = await consumer.getmany(timeout_ms=10_000)
        assert batch, f"nothing fetched after {seen}/{n}"
        for tp, records in batch.items():
            got.setdefault(tp.partition, []).extend(int(r.value) for r in records)
            seen += len(records)
    return got


async def _run(bootstrap: str) -> dict[str, Any]:
    topic = f"sessions-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    fetching.install()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=200)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        fetching.use_sessions(consumer._fetcher)
        await _produce(bootstrap, topic, 300, 0)
        first = await _consume(consumer, 300)
        await _produce(bootstrap, topic, 300, 300)
        second = await _consume(consumer, 300)
        # A seek back is a changed fetch offset: the session re-reads from there.
        consumer.seek(TopicPartition(topic, 1), 0)
        again = await _consume(consumer, 150)
        # Before stop(), which cancels the fetch in flight (and so ends the session).
        sessions = {n: (s.id, s.fetches, s.full_fetches, s.resets)
                    for n, s in consumer._fetcher._notifyd_sessions.items()}
    finally:
        await consumer.stop()
    for p in range(PARTITIONS // 3):
        assert first[p] + second[p] == list(range(p, 600, PARTITIONS // 3)), p
    assert again == {1: list(range(1, 600, PARTITIONS // 3))}
    assert set(first) | set(second) <= set(range(PARTITIONS // 3))
    return {"sessions": sessions}


async def test_fetch_sessions_on_kafka(kafka: Any) -> None:
    out = await _run(kafka.bootstrap)
    ((sid, fetches, full, resets),) = out["sessions"].values()
    assert sid != 0, "Apache Kafka keeps fetch sessions"
    assert fetches > full >= 1 and resets == 0, (fetches, full, resets)


async def test_fetch_sessions_on_tansu(tansu: Any) -> None:
    """Tansu may keep no sessions (session id 0): then every fetch is a full one."""
    out = await _run(tansu.bootstrap)
    ((_, fetches, _, _),) = out["sessions"].values()
    assert fetches >= 1
