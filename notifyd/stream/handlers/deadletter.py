"""Where a record that cannot be handled goes: a dead-letter topic, with its reason and
coordinates in headers, never a log line only."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from faust.types import EventT, TopicT

from notifyd import clock
from notifyd.errors import failure_detail
from notifyd.metrics import metrics
from notifyd.stream.topics import deliveries_dlq_topic, events_dlq_topic, names

log = structlog.stdlib.get_logger("notifyd.stream.handlers.deadletter")

#: Backoff between attempts to produce a dead letter: doubles from the base to the cap.
DEAD_LETTER_RETRY_BASE_S = 0.5
DEAD_LETTER_RETRY_MAX_S = 30.0


def dlq_for(source_topic: str) -> TopicT:
    """The dead-letter topic for a record of ``source_topic`` that cannot be handled.

    Producers' input (events, re-keyed events, preferences) goes to the events DLQ,
    whose re-drive sends the original bytes back through validation; notifyd's own
    records (deliveries, status updates, control messages) go to the deliveries DLQ.
    The ``notifyd-source-topic`` header tells them apart.
    """
    if source_topic in (names.events, names.events_rekeyed, names.preferences):
        return events_dlq_topic
    return deliveries_dlq_topic


def hold(ev: EventT[Any]) -> None:
    """Keep ``ev``'s offset from ever being committed by this process.

    For a record whose outcome is not written when its handler is cancelled (the
    worker stops): Faust's stream acks the current record in a ``finally`` even when
    the body raises, so an extra reference is what keeps the offset uncommitted, and
    the record is consumed again after the restart (at-least-once)."""
    ev.message.incref()


async def dead_letter(
    ev: EventT[Any], raw: bytes | None, reason: str, topic: TopicT | None = None
) -> None:
    """Original bytes to a dead-letter topic (default ``notifyd.events.dlq``), the reason
    and origin in headers; returns once the broker has acknowledged the dead letter.

    A failed produce is retried with capped exponential backoff for as long as the worker
    runs, rather than raised: an exception out of the handler would not stop the record
    from being acked (Faust acks in the stream's ``finally``; the status batch is acked
    by ``take_events``), so the record would be lost, while retrying keeps its partition
    (and only it) waiting until the broker takes the dead letter.  If the worker stops
    meanwhile the record is :func:`hold`-ed and handled again after the restart.
    """
    msg = ev.message
    dlq = topic if topic is not None else events_dlq_topic
    headers = [
        ("notifyd-reason", reason.encode()),
        ("notifyd-source-topic", msg.topic.encode()),
        ("notifyd-source-partition", str(msg.partition).encode()),
        ("notifyd-source-offset", str(msg.offset).encode()),
        ("notifyd-failed-at", str(clock.now()).encode()),
    ]
    attempt = 0
    try:
        while True:
            try:
                fut = await dlq.send(
                    key=msg.key, value=raw if raw is not None else b"", headers=headers
                )
                await fut
                break
            except Exception as exc:
                attempt += 1
                delay = min(
                    DEAD_LETTER_RETRY_MAX_S, DEAD_LETTER_RETRY_BASE_S * 2 ** min(attempt - 1, 10)
                )
                log.error(
                    "dead_letter.produce_failed",
                    reason=reason,
                    error=failure_detail(exc),
                    attempt=attempt,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
    except asyncio.CancelledError:
        hold(ev)
        raise
    metrics.event_dead_lettered(reason, dlq.get_topic_name())
    log.warning("event.dead_lettered", reason=reason, dlq=dlq.get_topic_name())


def raw_value(ev: EventT[Any]) -> bytes | None:
    """The record's value as it came from Kafka (every notifyd topic is raw bytes)."""
    value = ev.value
    if value is None or isinstance(value, bytes):
        return value
    raw = ev.message.value
    return raw if isinstance(raw, bytes) or raw is None else None


async def dead_letter_failure(ev: EventT[Any], exc: BaseException) -> None:
    """Dead-letter a record whose handler raised something nobody expected.

    The last resort of every agent (``agents.common._handle``, the status fold): a bug
    or an outage while handling one record must neither stop the partition nor lose
    the record in a log line.  The reason is ``internal_error: <Type>: <message>``; the
    original bytes go to :func:`dlq_for` the source topic, from where an operator
    re-drives them once the cause is fixed.
    """
    await dead_letter(
        ev, raw_value(ev), f"internal_error: {failure_detail(exc)}", dlq_for(ev.message.topic)
    )
