"""notifyd.stream.restore: table changelogs read into the local RocksDB files before Faust starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer

from notifyd.config import Settings
from notifyd.stream.restore import OFFSET_KEY, db_path, restore_tables
from notifyd.stream.topics import partition_for
from notifyd.stream.topology import ensure_topics
from notifyd.tools.broker.kafka import KafkaBroker

pytestmark = pytest.mark.integration


def _read(tabledir: Path, table: str, partition: int) -> dict[bytes, bytes]:
    db = rocksdict.Rdict(str(db_path(tabledir, table, partition)),
                         options=rocksdict.Options(raw_mode=True))
    try:
        return dict(db.items())
    finally:
        db.close()


async def test_restore_reads_changelogs_then_only_the_tail(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    s = Settings(broker_url=kafka.url, app_id=f"restore-{tag}", topic_prefix=f"restore-{tag}",
                 table_store="rocksdb://", topic_partitions=4)
    await ensure_topics(s)
    topic = f"{s.app_id}-preferences-changelog"
    users = [f"u{i}-{tag}" for i in range(200)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        # Written as Faust writes a changelog: the user's partition, raw key, JSON value.
        for rnd in range(2):
            for u in users:
                await producer.send(topic, f'{{"v":{rnd}}}'.encode(), key=u.encode(),
                                    partition=partition_for(u, 4))
        await producer.flush()
        first = await restore_tables(s, tmp_path)
        assert first.complete and first.records == 400 and first.per_table == {
            "preferences": 400}
        # The tail only: one update, one tombstone.
        await producer.send(topic, b'{"v":9}', key=users[0].encode(),
                            partition=partition_for(users[0], 4))
        await producer.send(topic, None, key=users[1].encode(),
                            partition=partition_for(users[1], 4))
        await producer.flush()
    finally:
        await producer.stop()
    second = await restore_tables(s, tmp_path)
    assert second.complete and second.records == 2
    again = await restore_tables(s, tmp_path)
    assert again.records == 0 and again.partitions == 0
    data: dict[bytes, bytes] = {}
    for p in range(4):
        part = _read(tmp_path, "preferences", p)
        assert int(part.pop(OFFSET_KEY)) >= 0  # Faust's offset key, next to the data
        for k in part:
            assert partition_for(k.decode(), 4) == p  # each key in its partition's file
        data.update(part)
    assert data[users[0].encode()] == b'{"v":9}'
    assert users[1].encode() not in data
    assert len(data) == 199 and all(data[u.encode()] == b'{"v":1}' for u in users[2:])
