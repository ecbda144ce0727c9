"""Time features as decisions: keys of scheduled events and digests, which digest an
event goes into, and the bounds of a digest window (``notifyd.stream.timing`` keeps
the rows; ``notifyd.stream.handlers.timers`` fires them).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifyd.config import CHANNELS
from notifyd.domain.rules import reaches
from notifyd.model.records import DIGEST_WINDOW_RE, Event, idempotency_scope

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
