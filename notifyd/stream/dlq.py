"""Read dead-letter topics: the operator API, ``notifyd dlq list`` and re-drive.

A short-lived aiokafka consumer without a group (nothing is committed, no other
consumer is disturbed) is assigned the topic's partitions, seeks each to
``end - limit`` (or its beginning) and reads up to the end offsets it saw at the
start.  As JSON, keys and values that are not UTF-8 come back as base64.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from notifyd.errors import ServiceUnavailable
from notifyd.stream.kafka_read import read_to_end

REASON_HEADER = "notifyd-reason"


def _text(raw: bytes | None) -> tuple[str | None, bool]:
    """(text, is_base64): UTF-8 text when it decodes, else base64."""
    if raw is None:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


def record_to_dict(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, raw in record.headers or ():
        headers[name] = bytes(raw).decode("utf-8", "replace") if raw is not None else ""
    key, key_b64 = _text(record.key)
    value, value_b64 = _text(record.value)
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": key,
        "key_base64": key_b64,
        "reason": headers.get(REASON_HEADER),
        "headers": headers,
        "value": value,
        "value_base64": value_b64,
    }


async def read_records(
    bootstrap: list[str] | str, topic: str, limit: int | None = None, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The last ``limit`` records of each partition (all with None), in partition order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="notifyd-dlq-reader",
        request_timeout_ms=int(timeout_s * 1000),
    )
    await consumer.start()
    try:
        # Metadata of every topic (this never auto-creates one).  The public
        # consumer.topics() drops the partitions, and partitions_for_topic() only knows
        # subscribed/assigned topics, hence the client's own call.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = sorted(cluster.partitions_for_topic(topic) or ())
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in partitions]
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        starts = {
            tp: begin[tp] if limit is None else max(begin[tp], end[tp] - limit) for tp in tps
        }
        records: list[ConsumerRecord[bytes, bytes]] = []
        async for _, recs in read_to_end(consumer, starts, end, timeout_s):
            records.extend(recs)
        return records
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def recent_dead_letters(
    bootstrap: list[str] | str, topic: str, limit: int = 50, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """The last ``limit`` records of ``topic`` across partitions, newest first."""
    try:
        async with asyncio.timeout(timeout_s + 5):
            records = await read_records(bootstrap, topic, limit, timeout_s)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise ServiceUnavailable(
            f"could not read {topic}: {type(exc).__name__}", code="broker_unavailable"
        ) from exc
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
    return [record_to_dict(r) for r in records[:limit]]
