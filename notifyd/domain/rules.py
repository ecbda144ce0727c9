"""Per-user, per-channel routing rules: pure functions of (event, preferences, clock).

Order per channel: requested by the event → enabled by the user → not opted out of
the category → an address to send to → quiet hours (defer; critical bypasses;
in-app is silent and never deferred) → throttle (defer or suppress; critical
bypasses).  Every decision that is not "send" carries a reason for the delivery
state table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from notifyd.config import CHANNELS
from notifyd.model.records import Event

SEND, SUPPRESS, DEFER = "send", "suppress", "defer"


@dataclass(slots=True)
class Decision:
    channel: str
    action: str
    reason: str | None = None
    deliver_at: float | None = None
    address: str | None = None
    tokens: list[str] | None = None


@dataclass(slots=True)
class ThrottlePolicy:
    limit: int  # 0 disables
    window_s: int
    mode: str  # "defer" | "suppress"


def _hhmm(s: str) -> dtime:
    h, m = s.split(":")
    return dtime(int(h), int(m))


def _inside(t: dtime, start: dtime, end: dtime) -> bool:
    """Whether the wall-clock time ``t`` is in the window [start, end) (may cross midnight).

    Only the time on the wall counts, not which pass of a repeated hour it is: at the
    second 02:15 of an autumn clock change the wall shows 02:15 again, so a 01:00-02:30
    window holds again."""
    t = t.replace(fold=0)
    return start <= t < end if start < end else (t >= start or t < end)


def _epoch(d: date, wall: dtime, tz: ZoneInfo, fold: int) -> float:
    return datetime.combine(d, wall, tzinfo=tz).replace(fold=fold).timestamp()


def _wall(ts: float, tz: ZoneInfo) -> datetime:
    """Naive local wall-clock datetime at epoch ``ts``."""
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None, fold=0)


def _reaches(d: date, wall: dtime, tz: ZoneInfo) -> list[float]:
    """The epochs at which the wall clock of ``tz`` reaches ``wall`` on day ``d``.

    One, or two in a repeated hour (both passes, by ``fold``).  In a skipped hour
    (``wall`` does not exist that day) the clock jumps over it: then the one epoch is
    the first instant after the gap, found by bisection on whole seconds (zoneinfo's
    transitions are whole seconds; it does not expose them).  Epochs are computed by
    ``timestamp()`` of aware datetimes, never by arithmetic on them, which Python
    does on wall times."""
    target = datetime.combine(d, wall)
    hits = sorted({ts for fold in (0, 1) if _wall(ts := _epoch(d, wall, tz, fold), tz) == target})
    if hits:
        return hits
    # In a gap, fold=1 applies the offset after the change (an instant before the gap)
    # and fold=0 the offset before it (an instant after it).
    before, after = math.floor(_epoch(d, wall, tz, 1)), math.ceil(_epoch(d, wall, tz, 0))
    while after - before > 1:
        mid = (before + after) // 2
        if _wall(mid, tz) > target:
            after = mid
        else:
            before = mid
    return [float(after)]


def reaches(d: date, wall: dtime, tz: ZoneInfo) -> list[float]:
    """Public name of :func:`_reaches` (daily digest windows use the same wall clock)."""
    return _reaches(d, wall, tz)


def quiet_hours_end(qh: dict[str, str], now: float) -> float | None:
    """If ``now`` falls inside the quiet window, the epoch at which it ends, else None.

    Everything is wall-clock time in the user's IANA zone (``qh["timezone"]``):

    * ``now`` is inside when the local wall time is in [start, end); windows may cross
      midnight (22:00-07:00).  In a repeated hour (autumn) both passes count: at the
      second 02:15 a 01:00-02:30 window holds again.
    * The window ends at the first instant after ``now`` at which the wall clock
      reaches ``end`` (in a repeated hour, the pass still ahead); if the clock skips
      ``end`` (spring: 02:30 in a 02:00->03:00 jump), at the first instant after the
      gap.  So the end is always later than ``now``, and the night is an hour shorter
      or longer across a change, as the wall clock says.
    """
    tz = ZoneInfo(qh["timezone"])
    start, end = _hhmm(qh["start"]), _hhmm(qh["end"])
    local = datetime.fromtimestamp(now, tz)
    if not _inside(local.time(), start, end):
        return None
    # Inside, the wall clock reaches ``end`` within a day; the day before is a candidate
    # too, for a clock change that moves the date back.
    today = local.date()
    return min(
        ts
        for offset in (-1, 0, 1, 2)
        for ts in _reaches(today + timedelta(days=offset), end, tz)
        if ts > now
    )


def _address(channel: str, prefs: dict[str, Any] | None) -> tuple[str | None, list[str] | None]:
    """(address, tokens) for a channel, or (None, None) if the user has none."""
    if channel == "inapp":
        return "inbox", None
    if not prefs:
        return None, None
    if channel == "email":
        return prefs.get("email"), None
    if channel == "sms":
        return prefs.get("phone"), None
    if channel == "webhook":
        return prefs.get("webhook_url"), None
    if channel == "push":
        # Apprise URLs are push targets too (notifyd.providers.apprise tells them apart).
        tokens = list(prefs.get("push_tokens") or []) + list(prefs.get("apprise_urls") or [])
        return ("push" if tokens else None), tokens
    return None, None


def _opted_out(prefs: dict[str, Any], category: str, channel: str) -> str | None:
    opt_out: dict[str, list[str]] = prefs.get("opt_out") or {}
    for cat in (category, "*"):
        chans = opt_out.get(cat)
        if chans and (channel in chans or "*" in chans):
            return cat
    return None


def throttle_slot(history: list[list[Any]], now: float, policy: ThrottlePolicy) -> float | None:
    """None if a send now is within the limit, else the epoch when a slot frees up.

    ``history`` holds ``[epoch, notification_id]`` of sends (including scheduled
    future ones) for one user and channel.
    """
    if policy.limit <= 0:
        return None
    window_start = now - policy.window_s
    recent = sorted(ts for ts, _ in history if ts > window_start)
    if len(recent) < policy.limit:
        return None
    # The slot frees when the oldest send in the full window leaves it.
    return recent[len(recent) - policy.limit] + policy.window_s


def prune_history(history: list[list[Any]], now: float, window_s: int) -> list[list[Any]]:
    return [h for h in history if h[0] > now - window_s]


def decide(
    event: Event,
    prefs: dict[str, Any] | None,
    now: float,
    throttle_state: dict[str, list[list[Any]]],
    policy: ThrottlePolicy,
) -> list[Decision]:
    """One decision per channel.  ``throttle_state`` is updated in place for sends/defers."""
    decisions: list[Decision] = []
    critical = event.priority == "critical"
    nid = event.notification_id
    for channel in CHANNELS:
        if event.channels is not None and channel not in event.channels:
            decisions.append(
                Decision(
                    channel,
                    SUPPRESS,
                    f"not_requested: event restricted channels to {','.join(event.channels)}",
                )
            )
            continue
        if prefs and (prefs.get("channels") or {}).get(channel) is False:
            decisions.append(
                Decision(channel, SUPPRESS, f"channel_disabled: user turned {channel} off")
            )
            continue
        if prefs:
            cat = _opted_out(prefs, event.category, channel)
            if cat is not None:
                what = "all categories" if cat == "*" else f"category {cat!r}"
                decisions.append(
                    Decision(channel, SUPPRESS, f"opted_out: user opted out of {what} on {channel}")
                )
                continue
        address, tokens = _address(channel, prefs)
        if address is None:
            decisions.append(
                Decision(channel, SUPPRESS, f"no_address: user has no {channel} address")
            )
            continue
        deliver_at: float | None = None
        reason: str | None = None
        qh = (prefs or {}).get("quiet_hours")
        if qh and channel != "inapp" and not critical:
            end = quiet_hours_end(qh, now)
            if end is not None:
                deliver_at = end
                reason = f"quiet_hours: until {qh['end']} {qh['timezone']}"
        if not critical and channel != "inapp" and policy.limit > 0:
            history = throttle_state.setdefault(channel, [])
            held = next((h[0] for h in history if h[1] == nid), None)
            if held is not None:
                # A re-processed event keeps the slot it already holds.
                if held > (deliver_at if deliver_at is not None else now):
                    deliver_at = held
                    reason = (
                        f"throttled: more than {policy.limit} per {policy.window_s}s on {channel}"
                    )
            else:
                at = deliver_at if deliver_at is not None else now
                free = throttle_slot(history, at, policy)
                if free is not None:
                    if policy.mode == "suppress":
                        decisions.append(
                            Decision(
                                channel,
                                SUPPRESS,
                                f"throttled: more than {policy.limit} per "
                                f"{policy.window_s}s on {channel}",
                            )
                        )
                        continue
                    deliver_at = free
                    reason = (
                        f"throttled: more than {policy.limit} per {policy.window_s}s on {channel}"
                    )
                history.append([deliver_at if deliver_at is not None else now, nid])
        if deliver_at is not None:
            decisions.append(Decision(channel, DEFER, reason, deliver_at, address, tokens))
        else:
            decisions.append(Decision(channel, SEND, None, None, address, tokens))
    return decisions
