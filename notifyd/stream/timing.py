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

This module keeps the rows (schedule, cancel, collect into a digest); the decisions
(keys, which digest, window bounds) are :mod:`notifyd.domain.timing`, and what fires a
row through dispatch is :mod:`notifyd.stream.handlers.timers`.
"""

from __future__ import annotations

from typing import Any

import structlog

from notifyd.config import CHANNELS
from notifyd.domain.timing import (
    DIGEST_PREFIX,
    MAX_DIGEST_ITEMS,
    MAX_ITEM_TITLE,
    digest_event_id,
    event_key,
    requested,
    user_prefixes,
    user_zone,
    window_bounds,
)
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import (
    CancelRequest,
    Event,
    idempotency_scope,
    notification_id_for,
)
from notifyd.stream.app import app, settings
from notifyd.stream.tables import cancels, scheduled, seen

log = structlog.stdlib.get_logger("notifyd.stream.timing")

#: Header of a timer record on ``notifyd.events.rekeyed`` (value: ``{"key", "due"}``).
TIMER_HEADER = "notifyd-timer"


# --------------------------------------------------------------------------------------
# Scheduled send
# --------------------------------------------------------------------------------------


def status_content(event: Event, now: float) -> dict[str, Any]:
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


async def outputs_on_broker() -> None:
    """Return once every record produced so far is acknowledged by the broker."""
    await app.producer.flush()


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
    await publish_status(nid, updates, cancel={"at": now}, user_id=req.user_id)
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
        content=status_content(event, now),
        cancel={"at": now},
        user_id=event.user_id,
    )
    log.info("event.cancelled_before_arrival")


# --------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------


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
                "schema_version": SCHEMA_VERSION,
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
        content=status_content(event, now) | {"title": title, "digest_id": digest_id},
        user_id=event.user_id,
    )
    return key


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
