"""Ingest: a record of ``notifyd.events`` / ``notifyd.events.rekeyed`` arrives.

Decoded and validated, moved to its user's partition, de-duplicated against ``seen``,
then scheduled (a ``deliver_at`` ahead), cancelled, or handed to :mod:`.dispatch`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from faust.types import EventT

from notifyd import clock
from notifyd.domain.timing import event_key
from notifyd.errors import InvalidEvent
from notifyd.metrics import metrics
from notifyd.model.records import (
    CancelRequest,
    Event,
    dumps,
    legacy_notification_id_for,
    loads,
    parse_input,
)
from notifyd.stream import audience, timing
from notifyd.stream.app import settings
from notifyd.stream.handlers import timers
from notifyd.stream.handlers.deadletter import dead_letter
from notifyd.stream.handlers.dispatch import process_event
from notifyd.stream.headers import header_value
from notifyd.stream.tables import any_partition, cancels, inbox, scheduled, seen, status, throttle
from notifyd.stream.topics import fanout_topic, names, partition_for, rekeyed_topic

log = structlog.stdlib.get_logger("notifyd.stream.handlers.ingest")
#: Accepted and duplicate fan-outs are logged with the rest of the fan-out.
fanout_log = structlog.stdlib.get_logger("notifyd.stream.audience")

ORIGIN_HEADER = "notifyd-origin"

#: What :func:`decoded_batch` made of the records of the batch being handled.
_decoded: dict[EventT[Any], Event | CancelRequest | InvalidEvent] = {}


@contextmanager
def decoded_batch(events: Sequence[EventT[Any]]) -> Iterator[None]:
    """Decode and validate a batch's records in one pass before they are handled one
    by one (the ingest lane's ``prepare``).

    In a loaded worker ``parse_input`` took 10 to 15 µs a record this way against 24 to 30 µs
    called from each record's handler, where the rest of the handling evicts its code
    and data between two calls.  Decoding is pure: a record that turns out not to need
    it (a topic event) only costs the decode; a timer's record is not decoded, and an
    error other than an invalid event is left for the handler to meet again and
    dead-letter.
    """
    for ev in events:
        if header_value(ev.message.headers, timing.TIMER_HEADER) is not None:
            continue
        try:
            _decoded[ev] = parse_input(ev.value, settings.max_event_bytes)
        except InvalidEvent as exc:
            _decoded[ev] = exc
        except Exception:  # met again, and dead-lettered, by the handler
            continue
    try:
        yield
    finally:
        for ev in events:
            _decoded.pop(ev, None)


def _parsed(ev: EventT[Any]) -> Event | CancelRequest:
    """The record decoded: by :func:`decoded_batch` in its batch, else here and now."""
    done = _decoded.pop(ev, None)
    if done is None:
        return parse_input(ev.value, settings.max_event_bytes)
    if isinstance(done, InvalidEvent):
        raise done
    return done


async def on_key_partition(ev: EventT[Any], raw: bytes | None, key: str) -> bool:
    """Whether an ingest record stands on ``key``'s partition, so the caller goes on.

    If not, it is handled here and the caller stops: a record already rekeyed is
    dead-lettered (only possible if topics were created with different partition
    counts); any other (a producer keyed by something else, or used another
    partitioner) takes one hop through the rekeyed topic to the key's partition, so
    state is partition-local, with its first place as the origin header.
    """
    msg = ev.message
    expected = partition_for(key)
    if msg.partition == expected:
        return True
    if msg.topic == rekeyed_topic.get_topic_name():
        await dead_letter(
            ev, raw, f"partition_mismatch: rekeyed to {msg.partition}, expected {expected}"
        )
        return False
    origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
    await rekeyed_topic.send(
        key=key.encode(), value=raw, headers=[(ORIGIN_HEADER, origin.encode())]
    )
    return False


def record_origin(ev: EventT[Any]) -> str:
    """Where an ingest record was first read: its origin header once rekeyed, else itself."""
    msg = ev.message
    return header_value(msg.headers, ORIGIN_HEADER) or f"{msg.topic}/{msg.partition}/{msg.offset}"


async def handle_event(ev: EventT[Any]) -> None:
    msg = ev.message
    raw: bytes | None = ev.value
    timer = header_value(msg.headers, timing.TIMER_HEADER)
    if timer is not None and msg.topic != names.events:  # producers' topic: not trusted
        await timers.fire(ev, timer)  # a schedule or digest window came due (notifyd.stream.timing)
        return
    metrics.event_received(msg.topic)
    addressed_to_topic = audience.topic_event(raw)  # None unless "topic" without user_id
    if addressed_to_topic is not None:
        await handle_topic_event(ev, addressed_to_topic)
        return
    try:
        event = _parsed(ev)
    except InvalidEvent as exc:
        await dead_letter(ev, raw, exc.reason)
        return
    structlog.contextvars.bind_contextvars(
        user_id=event.user_id, notification_id=event.notification_id, event_id=event.event_id
    )
    if not await on_key_partition(ev, raw, event.user_id):
        return
    origin = record_origin(ev)
    now = clock.now()
    if isinstance(event, CancelRequest):
        await timing.cancel(event, msg.partition, now)
        return
    prev = _scoped_row(seen.get(event.dedupe_key))
    if prev is None:
        old = _legacy_row(seen.get(event.event_id))
        if old is not None and old[2] == origin:
            # The very record an older worker processed, replayed: same ids as then.
            event.legacy_ids = True
            structlog.contextvars.bind_contextvars(notification_id=event.notification_id)
            prev = old
        elif old is not None and legacy_duplicate(event):
            log.info("event.duplicate", first_seen=old[0], first_origin=old[2], legacy=True)
            return
    if prev is not None and prev[2] != origin:
        log.info("event.duplicate", first_seen=prev[0], first_origin=prev[2])
        return
    digest_key: str | None = None
    try:
        if cancels.get(event.dedupe_key) is not None:
            await timing.drop_cancelled_event(event, now)  # its cancel came first
        elif (due := event.due(now, settings.max_schedule_days)) is not None and due > now:
            key = event_key(event.user_id, event.event_id)
            if prev is None:
                assert raw is not None
                await timers.schedule_event(event, loads(raw), due, msg.partition, now)
            elif (row := scheduled.get(key)) is not None:
                # The same record replayed: keep the due time it got the first time.
                await timers.schedule_event(event, row["event"], row["due"], msg.partition,
                                            row.get("scheduled_at", now))
            # else: replayed after its schedule fired or was cancelled: nothing to do
        else:
            digest_key = await process_event(
                event, msg.partition, now, produced_at=msg.timestamp,
                digest_key=prev[4] if prev is not None and len(prev) > 4 else None,
            )
    except InvalidEvent as exc:  # e.g. a template variable missing from data
        await dead_letter(ev, raw, exc.reason)
        return
    if prev is None or (digest_key is not None and len(prev) < 5):
        # Marked after the outputs: a crash before this line replays the record,
        # which is harmless (outputs are idempotent downstream).  The digest an event
        # went into is kept with it, so a cancel can take it out again.
        mark: list[Any] = [now, msg.partition, origin, event.user_id]
        if prev is not None:
            mark = list(prev[:4])
        seen[event.dedupe_key] = [*mark, digest_key] if digest_key is not None else mark


# ``seen`` rows: ``[first_seen, partition, origin, user_id]`` under
# ``records.idempotency_scope(user_id, event_id)``; rows written before ids were scoped
# to the user have no user_id and are keyed by the bare event id ("legacy" rows, gone
# after ``NOTIFYD_DEDUPE_TTL_S``).  A legacy row whose event id happens to read like a
# scoped key is told apart by its length.


def _scoped_row(row: list[Any] | None) -> list[Any] | None:
    return row if row is not None and len(row) >= 4 else None


def _legacy_row(row: list[Any] | None) -> list[Any] | None:
    return row if row is not None and len(row) == 3 else None


def legacy_duplicate(event: Event) -> bool:
    """Is ``event`` a re-send of the one a legacy ``seen`` row (its bare event id) records?

    Only if that was the same user's event; the legacy row does not say whose it was, so
    this looks for evidence under the legacy notification id: the status document
    (``user_id``), when this worker holds its partition, else the user's own inbox or
    throttle history holding that id (both in the user's partition, i.e. here).  With no
    evidence the event counts as new and gets a scoped id: a re-send straddling the
    upgrade may then be delivered twice, which at-least-once allows, where treating it as
    a duplicate could drop another user's event, the loss scoping the ids prevents.
    """
    legacy_nid = legacy_notification_id_for(event.event_id)
    with any_partition():
        doc = status.get(legacy_nid)
    if doc is not None and doc.get("user_id") is not None:
        return bool(doc["user_id"] == event.user_id)
    box = inbox.get(event.user_id) or {}
    if any(it.get("id") == legacy_nid for it in box.get("items", ())):
        return True
    history = throttle.get(event.user_id) or {}
    return any(len(h) > 1 and h[1] == legacy_nid for sends in history.values() for h in sends)


async def handle_topic_event(ev: EventT[Any], obj: dict[str, Any]) -> None:
    """Ingest of a topic-addressed event: on the topic's partition, once per event id,
    handed to the fan-out (``notifyd.stream.audience``)."""
    msg = ev.message
    raw: bytes = ev.value
    try:
        topic = audience.check_topic_event(obj, settings.max_event_bytes)
    except InvalidEvent as exc:
        await dead_letter(ev, raw, exc.reason)
        return
    event_id = str(obj["event_id"])
    structlog.contextvars.bind_contextvars(topic_name=topic, event_id=event_id)
    if not await on_key_partition(ev, raw, topic):
        return
    origin = record_origin(ev)
    key = audience.fanout_seen_key(topic, event_id)
    prev = seen.get(key)
    if prev is not None and prev[2] != origin:
        fanout_log.info("fanout.duplicate", first_seen=prev[0], first_origin=prev[2])
        return
    now = clock.now()
    start = {"topic": topic, "event": obj, "bucket": 0, "started_at": now, "done": 0}
    await fanout_topic.send(key=topic.encode(), value=dumps(start))
    if prev is None:
        seen[key] = [now, msg.partition, origin, "#" + topic]
    fanout_log.info("fanout.accepted", subscribers=audience.subscriber_count(topic))
