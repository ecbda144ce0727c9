"""Time features of the ingest path: scheduled sends, cancellation and digests.

All three keep their state in the user's partition (written while a record keyed by
the user is processed) and reuse the ``scheduled`` table and its per-worker scheduler:

* A scheduled event (``send_at``/``delay_s``) is a row ``event:<scope>`` holding the
  whole event; every requested channel is ``scheduled``.  When due, the scheduler
  produces a *timer* record to ``notifyd.events.rekeyed`` (keyed by the user, so the
  ingest agent of the user's partition gets it) and the event goes through the rules
  with ``now`` = its due time, as if it arrived then.  The row is deleted only after
  the outputs reached the broker: a crash in between fires it again, and the ledger,
  the inbox (one item per id) and the status fold make the second pass harmless.
* A digest is a row ``digest:<scope of the digest's event id>`` collecting items until
  the window closes; the close is a timer record as above.  The digest's notification
  id derives from (user, category, window, window start), so a replay cannot make a
  second digest.
* A cancel is remembered in ``cancels`` (expiring like ``seen``), so a cancel that
  arrives before its event still wins; it drops the event's schedule, its deferred or
  retrying deliveries and its digest item, and channel agents skip a delivery of a
  cancelled notification still in their topic.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from faust.types import EventT

from notifyd.config import CHANNELS
from notifyd.domain.rules import reaches
from notifyd.errors import InvalidEvent
from notifyd.metrics import metrics
from notifyd.model.records import (
    DIGEST_WINDOW_RE,
    CancelRequest,
    Event,
    dumps,
    idempotency_scope,
    loads,
    notification_id_for,
    parse_event,
)
from notifyd.stream.app import app, settings
from notifyd.stream.tables import cancels, preferences, scheduled, seen

log = structlog.stdlib.get_logger("notifyd.stream.timing")

#: Header of a timer record on ``notifyd.events.rekeyed`` (value: ``{"key", "due"}``).
TIMER_HEADER = "notifyd-timer"
EVENT_PREFIX = "event:"
DIGEST_PREFIX = "digest:"
#: Items kept per open digest (the count goes on; titles beyond are not kept).
MAX_DIGEST_ITEMS = 1000
MAX_ITEM_TITLE = 200
#: Template of digest messages (``notifyd/templates/digest.json``; locale fallback as
#: for any template).
DIGEST_TEMPLATE = "digest"


def event_key(user_id: str, event_id: str) -> str:
    return EVENT_PREFIX + idempotency_scope(user_id, event_id)


def user_prefixes(user_id: str) -> tuple[str, str]:
    """Key prefixes of a user's scheduled events and open digests (no value read)."""
    scope = f"{len(user_id)}:{user_id}:"
    return EVENT_PREFIX + scope, DIGEST_PREFIX + scope


def requested(event: Event) -> list[str]:
    return list(event.channels) if event.channels is not None else list(CHANNELS)


# --------------------------------------------------------------------------------------
# Scheduled send
# --------------------------------------------------------------------------------------


async def schedule_event(
    event: Event, raw: dict[str, Any], due: float, partition: int, now: float
) -> None:
    """Keep the whole event until ``due``; every requested channel is ``scheduled``."""
    from notifyd.stream.handlers.dispatch import templates
    from notifyd.stream.handlers.status import publish_status, status_update
    from notifyd.stream.scheduler import scheduler

    if event.template:  # rendered now only to refuse a broken event at once (DLQ)
        locale = (preferences.get(event.user_id) or {}).get("locale") or settings.default_locale
        templates().render(event.template, event.data, locale)
    key = event_key(event.user_id, event.event_id)
    channels = requested(event)
    scheduled[key] = {
        "kind": "event",
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
    await publish_status(
        event.notification_id,
        [
            status_update(ch, "scheduled", now, deliver_at=due)
            for ch in channels
        ],
        content=_content(event, now) | {"send_at": due},
    )
    log.info("event.scheduled", due=due)


def _content(event: Event, now: float) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "category": event.category,
        "priority": event.priority,
        "title": event.title,
        "body": event.body,
        "template": event.template,
        "created_at": event.created_at,
        "accepted_at": now,
    }


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
            from notifyd.stream.handlers.deadletter import dead_letter

            await dead_letter(ev, dumps(row["event"]), exc.reason)
    elif kind == "digest":
        await close_digest(row, ev.message.partition, due)
    else:
        raise ValueError(f"unknown timer kind {kind[:20]!r}")
    await outputs_on_broker()
    del scheduled[key]


async def outputs_on_broker() -> None:
    """Return once every record produced so far is acknowledged by the broker."""
    await app.producer.flush()


async def _release_event(row: dict[str, Any], partition: int, due: float) -> None:
    from notifyd.stream.handlers.dispatch import process_event

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


# --------------------------------------------------------------------------------------
# Cancel
# --------------------------------------------------------------------------------------


def is_cancelled(user_id: str, event_id: str) -> bool:

    return cancels.get(idempotency_scope(user_id, event_id)) is not None


async def cancel(req: CancelRequest, partition: int, now: float) -> list[dict[str, Any]]:
    """Cancel what is pending of ``(user_id, event_id)``; idempotent.

    Remembered first (a later event is dropped), then the schedule, deferred or
    retrying deliveries and the digest item are removed; the status document gets
    ``cancelled`` for those channels and for any channel not finished yet (the fold
    keeps ``sent`` and the other terminal states)."""
    from notifyd.stream.handlers.status import publish_status, status_update

    scope = req.dedupe_key
    if cancels.get(scope) is None:
        cancels[scope] = [now, partition, req.user_id]
    nid = req.notification_id
    channels: dict[str, str] = {}
    key = event_key(req.user_id, req.event_id)
    row = scheduled.get(key)
    if row is not None:
        del scheduled[key]
        for ch in row.get("channels") or CHANNELS:
            channels[ch] = "cancelled: before its scheduled time"
    for ch in CHANNELS:
        dkey = f"{nid}:{ch}"  # a deferred or retrying delivery, or a fallback step
        pending = scheduled.get(dkey)
        if pending is not None:
            del scheduled[dkey]
            what = "fallback step" if "fallback" in pending else "deferred delivery"
            channels[ch] = f"cancelled: {what} dropped"
    mark = seen.get(scope)
    if mark is not None and len(mark) > 4 and mark[4]:
        digest = scheduled.get(mark[4])
        if digest is not None:
            items = [it for it in digest["items"] if it["id"] != nid]
            if len(items) != len(digest["items"]):
                dropped = next(it for it in digest["items"] if it["id"] == nid)
                scheduled[mark[4]] = {**digest, "items": items}
                for ch in dropped.get("channels") or CHANNELS:
                    channels[ch] = "cancelled: removed from the open digest"
    updates = [
        status_update(ch, "cancelled", now, reason=reason, force=True)
        for ch, reason in channels.items()
    ]
    await publish_status(nid, updates, cancel={"at": now})
    log.info("event.cancelled", channels=sorted(channels))
    return updates


async def drop_cancelled_event(event: Event, now: float) -> None:
    """An event whose cancel came first: every requested channel ``cancelled``."""
    from notifyd.stream.handlers.status import publish_status, status_update

    await publish_status(
        event.notification_id,
        [
            status_update(ch, "cancelled", now, reason="cancelled: before it arrived")
            for ch in requested(event)
        ],
        content=_content(event, now),
        cancel={"at": now},
    )
    log.info("event.cancelled_before_arrival")


# --------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------


def digest_spec(event: Event, prefs: dict[str, Any] | None) -> dict[str, str] | None:
    """The digest ``event`` goes into, if any: the event's own ``digest`` field first,
    then the user's ``digests`` preference for its category.  Critical bypasses."""
    if event.priority == "critical":
        return None
    if event.digest is not None:
        return {"window": event.digest["window"],
                "category": event.digest.get("category", event.category)}
    for spec in (prefs or {}).get("digests") or ():
        if spec.get("category") == event.category:
            return {"window": spec["window"], "category": event.category}
    return None


def user_zone(prefs: dict[str, Any] | None) -> ZoneInfo:
    """The user's zone: ``timezone``, else the quiet hours' zone, else UTC."""
    p = prefs or {}
    for name in (p.get("timezone"), (p.get("quiet_hours") or {}).get("timezone")):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def window_bounds(window: str, now: float, tz: ZoneInfo) -> tuple[float, float]:
    """``(start, close)`` of the digest window holding ``now``: ``start <= now < close``.

    A period (``30m``, ``1h``, ``1d``) is aligned to the epoch (UTC), so every worker
    and every replay puts an instant into the same window.  ``daily@HH:MM`` closes when
    the user's wall clock next shows HH:MM (DST-correct, as quiet hours) and starts
    when it last did."""
    m = DIGEST_WINDOW_RE.match(window)
    if m is None:
        raise ValueError(f"bad digest window {window!r}")
    if m.group(1) is not None:
        size = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
        first = math.floor(now / size) * size
        return float(first), float(first + size)
    hhmm = datetime.strptime(f"{m.group(3)}:{m.group(4)}", "%H:%M").time()
    today = datetime.fromtimestamp(now, tz).date()
    hits = sorted(
        ts for offset in (-2, -1, 0, 1, 2) for ts in reaches(today + timedelta(days=offset),
                                                             hhmm, tz)
    )
    start = max(ts for ts in hits if ts <= now)
    close = min(ts for ts in hits if ts > now)
    return start, close


def digest_event_id(category: str, window: str, start: float) -> str:
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"digest:{category}:{window}:{stamp}"


async def collect(
    event: Event,
    spec: dict[str, str],
    prefs: dict[str, Any] | None,
    title: str,
    partition: int,
    now: float,
    known: str | None = None,
) -> str:
    """Add ``event`` to the user's open digest for ``spec``; returns the digest's row key.

    Idempotent per notification id (a replayed event is one item).  A replayed record
    whose digest is ``known`` (its ``seen`` row) stays in that digest, or, if that one
    was sent already, joins none.  Every requested channel of the item is ``digested``
    with the digest's id and closing time."""
    from notifyd.stream.handlers.status import publish_status, status_update
    from notifyd.stream.scheduler import scheduler

    row: dict[str, Any] | None = None
    if known is not None:
        row = scheduled.get(known)
        if row is None:
            log.info("digest.item_already_sent", digest=known)
            return known
    if row is not None and known is not None:
        key, new = known, False
    else:
        start, close = window_bounds(spec["window"], now, user_zone(prefs))
        dg_event = digest_event_id(spec["category"], spec["window"], start)
        key = DIGEST_PREFIX + idempotency_scope(event.user_id, dg_event)
        row = scheduled.get(key)
        new = row is None
        if row is None:
            row = {
                "kind": "digest",
                "due": close,
                "p": partition,
                "user_id": event.user_id,
                "category": spec["category"],
                "window": spec["window"],
                "start": start,
                "event_id": dg_event,
                "digest_id": notification_id_for(event.user_id, dg_event),
                "items": [],
                "count": 0,
            }
    close, digest_id = float(row["due"]), str(row["digest_id"])
    nid = event.notification_id
    items: list[dict[str, Any]] = row["items"]
    if not any(it["id"] == nid for it in items):
        row["count"] = int(row.get("count", len(items))) + 1
        if len(items) < MAX_DIGEST_ITEMS:
            items.append(
                {
                    "id": nid,
                    "event_id": event.event_id,
                    "title": title[:MAX_ITEM_TITLE],
                    "channels": list(event.channels) if event.channels is not None else None,
                    "ts": now,
                }
            )
        scheduled[key] = row
        if new:
            scheduler.push(close, key, partition)
    await publish_status(
        nid,
        [
            status_update(ch, "digested", now, digest_id=digest_id, deliver_at=close)
            for ch in requested(event)
        ],
        content=_content(event, now) | {"title": title, "digest_id": digest_id},
    )
    return key


async def close_digest(row: dict[str, Any], partition: int, now: float) -> None:
    """Send the digest as one notification (rules and opt-outs applied now); nothing
    if every item was cancelled."""
    from notifyd.stream.handlers.dispatch import process_event

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


def pending_for(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """A user's scheduled events and open digests held by this worker (console).

    Reads the keys of the scheduler's index (no table scan), then only the user's rows."""
    from notifyd.stream.scheduler import scheduler

    ev_prefix, dg_prefix = user_prefixes(user_id)
    keys = sorted({k for _, k, _ in scheduler.heap if k.startswith((ev_prefix, dg_prefix))})
    out: dict[str, list[dict[str, Any]]] = {"scheduled": [], "digests": []}
    for key in keys:
        row = scheduled.get(key)
        if row is None:
            continue
        if row.get("kind") == "event":
            out["scheduled"].append(
                {"notification_id": row["nid"], "event_id": row["event_id"], "due": row["due"],
                 "channels": row["channels"], "title": row.get("title", ""),
                 "scheduled_at": row.get("scheduled_at")}
            )
        elif row.get("kind") == "digest":
            out["digests"].append(
                {"digest_id": row["digest_id"], "category": row["category"],
                 "window": row["window"], "start": row["start"], "closes_at": row["due"],
                 "count": len(row["items"]),
                 "titles": [it["title"] for it in row["items"][: settings.digest_max_titles]]}
            )
    out["scheduled"].sort(key=lambda r: r["due"])
    out["digests"].sort(key=lambda r: r["closes_at"])
    return out
