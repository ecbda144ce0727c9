"""Timer records of the ingest path (``notifyd.stream.timing``): a scheduled event is
kept until due, then released through dispatch; a digest window is closed and sent as
one notification.  They dispatch, so they live beside the dispatch handler."""

from __future__ import annotations

from typing import Any

import structlog
from faust.types import EventT

from notifyd.config import CHANNELS
from notifyd.domain.timing import (
    DIGEST_TEMPLATE,
    MAX_ITEM_TITLE,
    event_key,
    requested,
)
from notifyd.errors import InvalidEvent
from notifyd.metrics import metrics
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import Event, dumps, loads, parse_event
from notifyd.stream import timing
from notifyd.stream.app import settings
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.deadletter import dead_letter
from notifyd.stream.handlers.dispatch import process_event, templates
from notifyd.stream.handlers.status import status_update
from notifyd.stream.scheduler import scheduler
from notifyd.stream.tables import preferences, scheduled, seen

log = structlog.stdlib.get_logger("notifyd.stream.timing")  # the timing features' logger


async def schedule_event(
    event: Event, raw: dict[str, Any], due: float, partition: int, now: float
) -> None:
    """Keep the whole event until ``due``; every requested channel is ``scheduled``."""
    if event.template:  # rendered now only to refuse a broken event at once (DLQ)
        locale = (preferences.get(event.user_id) or {}).get("locale") or settings.default_locale
        templates().render(event.template, event.data, locale)
    key = event_key(event.user_id, event.event_id)
    channels = requested(event)
    scheduled[key] = {
        "kind": "event",
        "schema_version": SCHEMA_VERSION,
        "due": due,
        "p": partition,
        "user_id": event.user_id,
        "event_id": event.event_id,
        "nid": event.notification_id,
        "channels": channels,
        "event": raw,
        "scheduled_at": now,
        "title": (event.title or event.template or "")[:MAX_ITEM_TITLE],
    }
    scheduler.push(due, key, partition)
    await statuses.publish_status(
        event.notification_id,
        [
            status_update(ch, "scheduled", now, deliver_at=due)
            for ch in channels
        ],
        content=timing.status_content(event, now) | {"send_at": due},
        user_id=event.user_id,
    )
    log.info("event.scheduled", due=due)


async def fire(ev: EventT[Any], kind: str) -> None:
    """Handle a timer record: release a scheduled event or close a digest, once.

    Only a row still holding the record's due time fires (a cancel deletes the row, a
    second timer for the same row finds it gone).  The row is deleted once the outputs
    are on the broker (``producer.flush``), so a crash before that fires it again."""
    msg = loads(ev.value)
    key, due = str(msg["key"]), float(msg["due"])
    row = scheduled.get(key)
    if row is None or row.get("due") != due:
        log.info("timer.stale", key=key)
        return
    if kind == "event":
        try:
            await _release_event(row, ev.message.partition, due)
        except InvalidEvent as exc:
            # E.g. a template changed since it was scheduled: the event's own bytes go
            # to the events DLQ with the reason, as they would have on arrival.
            await dead_letter(ev, dumps(row["event"]), exc.reason)
    elif kind == "digest":
        await close_digest(row, ev.message.partition, due)
    else:
        raise ValueError(f"unknown timer kind {kind[:20]!r}")
    await timing.outputs_on_broker()  # via the module: a test replaces it
    del scheduled[key]


async def _release_event(row: dict[str, Any], partition: int, due: float) -> None:
    event = parse_event(dumps(row["event"]), max(settings.max_event_bytes, 1 << 20))
    event.send_at = event.delay_s = None
    structlog.contextvars.bind_contextvars(
        user_id=event.user_id, notification_id=event.notification_id, event_id=event.event_id
    )
    digest_key = await process_event(event, partition, due)
    if digest_key is not None:
        mark = seen.get(event.dedupe_key)
        if mark is not None and len(mark) >= 4:
            seen[event.dedupe_key] = [*mark[:4], digest_key]


async def close_digest(row: dict[str, Any], partition: int, now: float) -> None:
    """Send the digest as one notification (rules and opt-outs applied now); nothing
    if every item was cancelled."""
    items: list[dict[str, Any]] = row["items"]
    user_id = row["user_id"]
    structlog.contextvars.bind_contextvars(user_id=user_id, notification_id=row["digest_id"])
    if not items:
        log.info("digest.empty")
        return
    n = settings.digest_max_titles
    total = len(items)
    data = {
        "count": total,
        "category": row["category"],
        "window": row["window"],
        "titles": [it["title"] for it in items[:n]],
        "more": max(0, total - n),
    }
    union: set[str] = set()
    everything = False
    for it in items:
        if it.get("channels") is None:
            everything = True
        else:
            union.update(it["channels"])
    event = Event(
        event_id=row["event_id"],
        user_id=user_id,
        category=row["category"],
        template=DIGEST_TEMPLATE,
        data={**data, "items": [it["id"] for it in items]},
        channels=None if everything else tuple(ch for ch in CHANNELS if ch in union),
    )
    if event.notification_id != row["digest_id"]:  # ids are derived the same way
        raise InvalidEvent("internal_error: digest id mismatch")
    await process_event(event, partition, now, collect=False)
    metrics.digest_sent()
    log.info("digest.sent", count=total)
