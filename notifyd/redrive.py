"""Re-drive dead letters once their cause is fixed (CLI ``notifyd dlq redrive`` and the
operator API).

- ``deliveries``: each record of ``<prefix>.deliveries.dlq`` is a delivery that went
  ``dead``; it is produced again to its channel topic with ``attempt=1`` and
  ``redrive=true``, which lets the channel agent retry past the ``dead`` ledger entry.
  A delivery that has meanwhile been ``sent`` is not sent again (the ledger says so).
- ``events``: each record of ``<prefix>.events.dlq`` holds the original bytes; they are
  produced again to the events topic with the original key, so a producer's fixed
  template or a corrected event flows through validation again.  An event that fails
  again simply returns to the dead-letter topic with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from .admin import TopicNames
from .config import Settings
from .kafka_headers import header_value
from .records import Delivery


@dataclass
class RedriveResult:
    scanned: int = 0
    redriven: int = 0
    skipped: int = 0
    ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "redriven": self.redriven,
            "skipped": self.skipped,
            "ids": self.ids,
        }


async def read_all(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record currently in ``topic`` (from the beginning to the high watermark)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, recs in batch.items():
                records.extend(recs)
                if recs and recs[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def redrive(
    settings: Settings,
    kind: str,
    select: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
) -> RedriveResult:
    if kind not in ("deliveries", "events"):
        raise ValueError("kind must be 'deliveries' or 'events'")
    names = TopicNames(settings.topic_prefix)
    source = names.deliveries_dlq if kind == "deliveries" else names.events_dlq
    records = await read_all(settings, source)
    result = RedriveResult(scanned=len(records))
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        pending = []
        for rec in records:
            if select is not None and not select(rec):
                result.skipped += 1
                continue
            if kind == "deliveries":
                try:
                    d = Delivery.from_dict(orjson.loads(rec.value or b""))
                except (orjson.JSONDecodeError, TypeError, KeyError):
                    result.skipped += 1
                    continue
                d.attempt = 1
                d.redrive = True
                pending.append(
                    await producer.send(names.deliver(d.channel), d.dumps(), key=d.user_id.encode())
                )
                result.ids.append(d.idempotency_key)
            else:
                origin = f"{rec.partition}/{rec.offset}"
                pending.append(
                    await producer.send(
                        names.events,
                        rec.value or b"",
                        key=rec.key,
                        headers=[("notifyd-redriven-from", origin.encode())],
                    )
                )
                result.ids.append(origin)
            result.redriven += 1
        for fut in pending:
            await fut
    finally:
        await producer.stop()
    return result


def describe(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A dead letter as JSON-friendly data (CLI listing)."""
    value = record.value or b""
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp / 1000 if record.timestamp else None,
        "key": (record.key or b"").decode("utf-8", "replace"),
        "reason": header_value(record.headers, "notifyd-reason"),
        "value": text if text is not None else value.hex(),
    }
