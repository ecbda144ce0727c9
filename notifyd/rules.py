"""Per-user, per-channel routing rules: pure functions of (event, preferences, clock).

Order per channel: requested by the event → enabled by the user → not opted out of
the category → an address to send to → quiet hours (defer; critical bypasses;
in-app is silent and never deferred) → throttle (defer or suppress; critical
bypasses).  Every decision that is not "send" carries a reason for the delivery
state table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from .config import CHANNELS
from .records import Event

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


def quiet_hours_end(qh: dict[str, str], now: float) -> float | None:
    """If ``now`` falls inside the quiet window, the epoch at which it ends, else None.

    Windows may cross midnight (22:00-07:00).  The end is computed as a local wall
    time in the user's zone, so DST changes move it correctly.
    """
    tz = ZoneInfo(qh["timezone"])
    local = datetime.fromtimestamp(now, tz)
    start, end = _hhmm(qh["start"]), _hhmm(qh["end"])
    t = local.time()
    if start < end:
        inside = start <= t < end
        end_date = local.date()
    else:
        inside = t >= start or t < end
        end_date = local.date() if t < end else local.date() + timedelta(days=1)
    if not inside:
        return None
    end_local = datetime.combine(end_date, end, tzinfo=tz)
    return end_local.timestamp()


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
