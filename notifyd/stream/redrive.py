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

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from notifyd.config import Settings
from notifyd.model.records import Delivery
from notifyd.model.responses import RedriveResult
from notifyd.stream.dlq import read_records
from notifyd.stream.topology import TopicNames


async def redrive(
    settings: Settings,
    kind: str,
    select: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
) -> RedriveResult:
    if kind not in ("deliveries", "events"):
        raise ValueError("kind must be 'deliveries' or 'events'")
    names = TopicNames(settings.topic_prefix)
    source = names.deliveries_dlq if kind == "deliveries" else names.events_dlq
    # Every record, however many: a re-drive must not silently stop at a page size.
    records = await read_records(settings.bootstrap_servers, source, None, timeout_s=60.0)
    result = RedriveResult(scanned=len(records), redriven=0, skipped=0, ids=[])
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
                except (ValueError, TypeError):  # not JSON, not a delivery
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
