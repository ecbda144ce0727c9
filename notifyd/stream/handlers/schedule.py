"""Scheduling (quiet hours, throttle deferral, retry backoff) without blocking
partitions: a row of the ``scheduled`` table, indexed by the per-worker scheduler, and
what happens when it is due."""

from __future__ import annotations

from typing import Any

from notifyd import clock
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import Delivery, dumps
from notifyd.stream import fallback
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.queueing import queue_delivery, requeue_overdue
from notifyd.stream.scheduler import run_scheduler as run_index
from notifyd.stream.scheduler import scheduler
from notifyd.stream.tables import scheduled
from notifyd.stream.topics import control_topic, rekeyed_topic


def schedule(delivery: Delivery, due: float, partition: int, reason: str) -> None:
    key = delivery.idempotency_key
    scheduled[key] = {"due": due, "p": partition, "delivery": delivery.to_dict(), "reason": reason,
                      "schema_version": SCHEMA_VERSION}
    scheduler.push(due, key, partition)


async def release(key: str, entry: dict[str, Any]) -> None:
    """Hand a due delivery to its channel topic, then ask the owner to drop the entry.

    A fallback step (``notifyd.stream.fallback``) has its condition checked on its partition
    first.  A scheduled event or a digest window (``notifyd.stream.timing``) becomes a timer
    record to the ingest agent of the user's partition instead, which handles it and
    drops the row.
    """
    if "fallback" in entry:  # a fallback step: its condition is checked on its partition
        await fallback.release_step(key, entry)
        return
    kind = entry.get("kind")
    if kind is not None:
        from notifyd.stream.timing import TIMER_HEADER

        await rekeyed_topic.send(
            key=str(entry["user_id"]).encode(),
            value=dumps({"key": key, "due": entry["due"]}),
            headers=[(TIMER_HEADER, str(kind).encode())],
        )
        return
    d = entry["delivery"]
    queued = await queue_delivery(d, clock.now(), attempt=d.get("attempt", 1))
    await statuses.publish_status(d["notification_id"], [queued], user_id=d["user_id"])
    await control_topic.send(
        key=d["user_id"].encode(),
        value=dumps({"op": "unschedule", "id": key, "due": entry["due"]}),
    )


async def run_scheduler() -> None:
    """The worker's scheduler loop (``notifyd.stream.scheduler``): due rows are handed to
    :func:`release`, overdue deliveries re-queued by
    :func:`~notifyd.stream.handlers.queueing.requeue_overdue`."""
    await run_index(release, requeue_overdue)
