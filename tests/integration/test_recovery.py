"""faust #176: table recovery can stall on compacted changelogs (offset gaps, tombstones).

The preferences changelog is filled with updates and deletes, compacted by the broker's
log cleaner, then a fresh worker (empty data dir) must recover the table completely
and become ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from notifyd.model.records import notification_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, WorkerProcess, new_id, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def compact_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    st = start_stack(kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("compact"), "compact",
                     sinks, redis_url=redis.url)
    yield st
    for w in st.workers:
        w.stop()


async def _changelog_stats(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records readable now, sum of end offsets): fewer records than offsets = compacted."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        count = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            count += sum(len(v) for v in batch.values())
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
        return count, sum(end.values())
    finally:
        await consumer.stop()


async def test_fresh_worker_recovers_compacted_changelog(
    compact_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    st = compact_stack
    changelog = f"{st.worker.app_id}-preferences-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=st.bootstrap)
    await admin.start()
    try:
        # Make the cleaner eager on this topic: tiny segments, no lag, no tombstone delay.
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, changelog, {
            "segment.ms": "200", "min.cleanable.dirty.ratio": "0.001",
            "min.compaction.lag.ms": "0", "delete.retention.ms": "100",
            "cleanup.policy": "compact",
        })])
    finally:
        await admin.close()
    users = [new_id("cu") for _ in range(60)]
    msgs: list[tuple[bytes | None, bytes]] = []
    for rnd in range(5):  # many versions of each key
        for u in users:
            msgs.append((u.encode(), orjson.dumps({"op": "put", "user_id": u, "fields": {
                "email": f"{u}-{rnd}@example.com"}})))
    deleted = users[:20]
    for u in deleted:
        msgs.append((u.encode(), orjson.dumps({"op": "delete", "user_id": u})))
    await st.produce(st.names.preferences, msgs)
    last = users[-1]
    await wait_for(lambda: (p := st.worker.table("preferences", last)) and
                   p["email"] == f"{last}-4@example.com", what="last update applied")
    await wait_for(lambda: st.worker.table("preferences", deleted[-1]) is None, what="delete")

    async def compacted() -> bool:
        # Roll segments with a few more writes so the cleaner has closed segments.
        filler = new_id("filler")
        await st.produce(st.names.preferences, [(filler.encode(), orjson.dumps(
            {"op": "put", "user_id": filler, "fields": {"locale": "en"}}))])
        count, offsets = await _changelog_stats(st.bootstrap, changelog)
        return count < offsets * 0.6

    deadline = time.monotonic() + 90
    while not await compacted():
        assert time.monotonic() < deadline, "the broker did not compact the changelog"
        await asyncio.sleep(2)
    count, offsets = await _changelog_stats(st.bootstrap, changelog)
    # A brand-new worker with an empty data dir recovers from the compacted log: with
    # Faust's own recovery (memory store) and with notifyd.stream.restore first (RocksDB).
    st.worker.stop()
    try:
        for store in ("memory://", "rocksdb://"):
            fresh = WorkerProcess(
                broker_url=st.worker.broker_url,
                datadir=tmp_path_factory.mktemp("fresh"),
                app_id=st.worker.app_id,
                topic_prefix=st.worker.topic_prefix,
                extra_env={**st.worker.extra_env, "NOTIFYD_TABLE_STORE": store},
                operator_token=st.worker.operator_token,
            )
            started = time.monotonic()
            try:
                await asyncio.to_thread(fresh.start, True, 120)
                took = time.monotonic() - started
                print(f"\nRECOVERY (#176, {store}): changelog compacted to {count} of "
                      f"{offsets} offsets; fresh worker ready in {took:.1f}s")
                for u in users[20:]:
                    prefs = fresh.table("preferences", u)
                    assert prefs is not None and prefs["email"] == f"{u}-4@example.com", u
                for u in deleted:
                    assert fresh.table("preferences", u) is None, u
                restored = '"restore.done"' in fresh.log_path.read_text(errors="replace")
                assert restored == (store == "rocksdb://")
                # The pipeline on this store: inbox written by ingest, status folded in a
                # batch (reads and writes in the record's own RocksDB partition).
                eid = new_id(f"ev-{store[:4]}")
                await st.send_events({"event_id": eid, "user_id": users[-1], "title": "T",
                                      "body": "B", "channels": ["inapp"]})
                nid = notification_id_for(users[-1], eid)
                def inapp_sent(w: WorkerProcess = fresh, key: str = nid) -> bool:
                    d = w.table("status", key)
                    return d is not None and d["channels"].get("inapp", {}).get(
                        "status") == "sent"

                await wait_for(inapp_sent, what=f"status of {nid} on {store}")
                doc = fresh.table("status", nid)
                assert doc["title"] == "T" and doc["user_id"] == users[-1]
                box = fresh.table("inbox", users[-1])
                assert box is not None and box["items"][0]["id"] == nid
            finally:
                fresh.stop()
    finally:
        st.worker.start()
