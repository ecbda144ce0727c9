"""Routing rules: quiet hours, throttle, and the per-channel decision."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from notifyd.config import CHANNELS
from notifyd.domain.rules import (
    DEFER,
    SEND,
    SUPPRESS,
    Decision,
    ThrottlePolicy,
    decide,
    prune_history,
    quiet_hours_end,
    throttle_slot,
)
from notifyd.model.records import Event

PARIS = ZoneInfo("Europe/Paris")
NO_THROTTLE = ThrottlePolicy(limit=0, window_s=3600, mode="defer")


def at(tz: ZoneInfo | Any, *args: int) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def qh(start: str, end: str, tz: str = "UTC") -> dict[str, str]:
    return {"start": start, "end": end, "timezone": tz}


# --------------------------------------------------------------------------------------
# quiet_hours_end
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        (13, 0, (14, 30)),
        (14, 29, (14, 30)),
        (12, 0, (14, 30)),  # exactly the start is inside ...
        (14, 30, None),  # ... exactly the end is outside
        (11, 59, None),
        (20, 0, None),
    ],
)
def test_same_day_window(hour: int, minute: int, expected: tuple[int, int] | None) -> None:
    window = qh("12:00", "14:30")
    now = at(UTC, 2024, 6, 3, hour, minute)
    end = quiet_hours_end(window, now)
    if expected is None:
        assert end is None
    else:
        assert end == at(UTC, 2024, 6, 3, *expected)


def test_overnight_window_before_midnight_ends_tomorrow() -> None:
    window = qh("22:00", "07:00", "Europe/Paris")
    now = at(PARIS, 2024, 6, 3, 23, 15)
    assert quiet_hours_end(window, now) == at(PARIS, 2024, 6, 4, 7, 0)
    assert quiet_hours_end(window, at(PARIS, 2024, 6, 3, 22, 0)) == at(PARIS, 2024, 6, 4, 7, 0)


def test_overnight_window_after_midnight_ends_today() -> None:
    window = qh("22:00", "07:00", "Europe/Paris")
    assert quiet_hours_end(window, at(PARIS, 2024, 6, 4, 3, 0)) == at(PARIS, 2024, 6, 4, 7, 0)
    assert quiet_hours_end(window, at(PARIS, 2024, 6, 4, 0, 0)) == at(PARIS, 2024, 6, 4, 7, 0)


@pytest.mark.parametrize("local", [(7, 0), (12, 0), (21, 59)])
def test_overnight_window_outside(local: tuple[int, int]) -> None:
    window = qh("22:00", "07:00", "Europe/Paris")
    assert quiet_hours_end(window, at(PARIS, 2024, 6, 4, *local)) is None


def test_window_is_in_the_users_zone_not_utc() -> None:
    # 23:30 UTC is 08:30 next day in Tokyo: outside a 22:00-07:00 Tokyo window.
    window = qh("22:00", "07:00", "Asia/Tokyo")
    assert quiet_hours_end(window, at(UTC, 2024, 6, 3, 23, 30)) is None
    # 14:00 UTC is 23:00 Tokyo: inside, ending 07:00 Tokyo = 22:00 UTC.
    assert quiet_hours_end(window, at(UTC, 2024, 6, 3, 14, 0)) == at(UTC, 2024, 6, 3, 22, 0)


def test_dst_spring_forward_paris() -> None:
    # Night of 30-31 March 2024: clocks jump 02:00 CET -> 03:00 CEST.
    window = qh("22:00", "07:00", "Europe/Paris")
    now = at(PARIS, 2024, 3, 30, 23, 0)  # CET, 22:00 UTC
    end = quiet_hours_end(window, now)
    assert end == at(UTC, 2024, 3, 31, 5, 0)  # 07:00 CEST
    assert end is not None and end - now == 7 * 3600  # the night is an hour shorter
    local_end = datetime.fromtimestamp(end, PARIS)
    assert (local_end.hour, local_end.minute) == (7, 0)


def test_dst_fall_back_paris() -> None:
    # Night of 26-27 October 2024: clocks go back 03:00 CEST -> 02:00 CET.
    window = qh("22:00", "07:00", "Europe/Paris")
    now = at(PARIS, 2024, 10, 26, 23, 0)  # CEST, 21:00 UTC
    end = quiet_hours_end(window, now)
    assert end == at(UTC, 2024, 10, 27, 6, 0)  # 07:00 CET
    assert end is not None and end - now == 9 * 3600


# --- quiet hours across clock changes: the end is the wall clock's next `end` -----------


def wall(tz: ZoneInfo, *args: int, fold: int = 0) -> float:
    """Epoch of a local wall time; ``fold=1`` is the second pass of a repeated hour."""
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


NEW_YORK = ZoneInfo("America/New_York")
AUCKLAND = ZoneInfo("Pacific/Auckland")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


CLOCK_CHANGES: list[tuple[str, tuple[str, str], float, float | None]] = [
        # Paris, 27 Oct 2024: 03:00 CEST -> 02:00 CET, 02:00-02:59 happens twice.
        # The case: at the second 02:15 the end was the first 02:30, 45 min ago.
        ("Europe/Paris", ("01:00", "02:30"), wall(PARIS, 2024, 10, 27, 2, 15, fold=1),
         utc(2024, 10, 27, 1, 30)),  # the second 02:30 (CET)
        ("Europe/Paris", ("01:00", "02:30"), wall(PARIS, 2024, 10, 27, 2, 15),
         utc(2024, 10, 27, 0, 30)),  # first pass: the first 02:30 (CEST)
        ("Europe/Paris", ("01:00", "02:30"), wall(PARIS, 2024, 10, 27, 2, 0, fold=1),
         utc(2024, 10, 27, 1, 30)),  # the instant of the change: wall 02:00 again, inside
        ("Europe/Paris", ("22:00", "02:30"), wall(PARIS, 2024, 10, 26, 23, 0),
         utc(2024, 10, 27, 0, 30)),  # across midnight: the first 02:30 ends it
        # Paris, 31 Mar 2024: 02:00 CET -> 03:00 CEST; 02:30 does not exist that night.
        ("Europe/Paris", ("01:00", "02:30"), wall(PARIS, 2024, 3, 31, 1, 45),
         utc(2024, 3, 31, 1, 0)),  # 03:00 CEST, the first instant after the gap
        ("Europe/Paris", ("22:00", "02:00"), wall(PARIS, 2024, 3, 30, 23, 0),
         utc(2024, 3, 31, 1, 0)),  # an end at the gap's first minute
        ("Europe/Paris", ("22:00", "03:00"), wall(PARIS, 2024, 3, 30, 23, 0),
         utc(2024, 3, 31, 1, 0)),  # 03:00 CEST exists: the same instant
        # New York, 3 Nov 2024: 02:00 EDT -> 01:00 EST.
        ("America/New_York", ("00:00", "01:30"), wall(NEW_YORK, 2024, 11, 3, 1, 10, fold=1),
         utc(2024, 11, 3, 6, 30)),
        ("America/New_York", ("00:00", "01:30"), wall(NEW_YORK, 2024, 11, 3, 1, 40),
         None),  # first pass, after 01:30 EDT: outside (until the clock goes back)
        ("America/New_York", ("00:00", "01:30"), wall(NEW_YORK, 2024, 11, 3, 1, 0, fold=1),
         utc(2024, 11, 3, 6, 30)),  # ... and inside again when it does
        # New York, 10 Mar 2024: 02:00 EST -> 03:00 EDT.
        ("America/New_York", ("23:00", "02:30"), wall(NEW_YORK, 2024, 3, 10, 1, 50),
         utc(2024, 3, 10, 7, 0)),
        # Auckland (southern hemisphere), 7 Apr 2024: 03:00 NZDT -> 02:00 NZST.
        ("Pacific/Auckland", ("01:00", "02:30"), wall(AUCKLAND, 2024, 4, 7, 2, 15, fold=1),
         utc(2024, 4, 6, 14, 30)),
        ("Pacific/Auckland", ("01:00", "02:30"), wall(AUCKLAND, 2024, 4, 7, 2, 15),
         utc(2024, 4, 6, 13, 30)),
        # Auckland, 29 Sep 2024: 02:00 NZST -> 03:00 NZDT, a window across midnight.
        ("Pacific/Auckland", ("22:00", "02:30"), wall(AUCKLAND, 2024, 9, 28, 23, 0),
         utc(2024, 9, 28, 14, 0)),
        ("Pacific/Auckland", ("22:00", "07:00"), wall(AUCKLAND, 2024, 9, 28, 23, 0),
         utc(2024, 9, 28, 18, 0)),  # 07:00 NZDT: the night is an hour shorter
        # Lord Howe, 7 Apr 2024: a 30-minute change, 02:00 (+11) -> 01:30 (+10:30).
        ("Australia/Lord_Howe", ("00:00", "01:45"), wall(LORD_HOWE, 2024, 4, 7, 1, 40, fold=1),
         utc(2024, 4, 6, 15, 15)),
        ("Australia/Lord_Howe", ("00:00", "01:45"), wall(LORD_HOWE, 2024, 4, 7, 1, 40),
         utc(2024, 4, 6, 14, 45)),
        # Lord Howe, 6 Oct 2024: 02:00 (+10:30) -> 02:30 (+11); 02:15 does not exist.
        ("Australia/Lord_Howe", ("01:00", "02:15"), wall(LORD_HOWE, 2024, 10, 6, 1, 50),
         utc(2024, 10, 5, 15, 30)),
]


def _case_id(case: tuple[str, tuple[str, str], float, float | None]) -> str:
    tz, (start, end), now, _ = case
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    return f"{tz}-{start}-{end}-at-{local.isoformat()}"


@pytest.mark.parametrize(
    ("tz", "window", "now", "expected"), CLOCK_CHANGES, ids=[_case_id(c) for c in CLOCK_CHANGES]
)
def test_quiet_hours_across_clock_changes(
    tz: str, window: tuple[str, str], now: float, expected: float | None
) -> None:
    end = quiet_hours_end(qh(*window, tz), now)
    assert end == expected
    if end is not None:
        assert end > now


def test_repeated_hour_defers_every_channel_to_the_second_pass() -> None:
    # Through decide(): the deferral the worker stores is in the future, not 45 min ago.
    prefs = {**FULL_PREFS, "quiet_hours": qh("01:00", "02:30", "Europe/Paris")}
    now = wall(PARIS, 2024, 10, 27, 2, 15, fold=1)
    d = run(ev(), prefs, now)
    for ch in ("email", "sms", "push", "webhook"):
        assert d[ch].action == DEFER
        assert d[ch].deliver_at == utc(2024, 10, 27, 1, 30) > now


ZONES = (
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Pacific/Auckland",
    "Australia/Lord_Howe",
    "America/Santiago",  # changes at midnight: the repeated hour is 23:00 of the day before
    "Asia/Kolkata",  # +05:30, no DST
)


@functools.cache
def transitions(zone: str) -> tuple[float, ...]:
    """Epochs of the zone's offset changes in 2024-2026, found by a 15-minute scan."""
    tz = ZoneInfo(zone)
    out = []
    t, stop = utc(2024, 1, 1), utc(2027, 1, 1)
    prev = datetime.fromtimestamp(t, tz).utcoffset()
    while t < stop:
        t += 900
        off = datetime.fromtimestamp(t, tz).utcoffset()
        if off != prev:
            out.append(t)
            prev = off
    return tuple(out) or (utc(2025, 6, 1),)


def naive_wall(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None, fold=0)


def scan_for_end(window: dict[str, str], now: float) -> float | None:
    """Reference: minute by minute, the first instant after ``now`` whose wall clock
    shows ``end`` or jumps over it (every offset and change here is whole minutes)."""
    tz = ZoneInfo(window["timezone"])
    sh, sm = map(int, window["start"].split(":"))
    eh, em = map(int, window["end"].split(":"))
    local = naive_wall(now, tz)
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    start, end = sh * 60 + sm, eh * 60 + em
    if (minute - start) % 1440 >= (end - start) % 1440:
        return None  # outside the window
    prev, t = local, (now // 60 + 1) * 60
    for _ in range(27 * 60):
        cur = naive_wall(t, tz)
        if (cur.hour, cur.minute, cur.second) == (eh, em, 0):
            return t
        for day in {prev.date(), cur.date()}:
            if prev < datetime(day.year, day.month, day.day, eh, em) < cur:
                return t  # the clock jumped over the end
        prev, t = cur, t + 60
    raise AssertionError("the wall clock never reached the end of the window")


HHMM = st.builds(
    lambda h, m: f"{h:02d}:{m:02d}",
    st.integers(0, 23),
    st.one_of(st.sampled_from([0, 15, 30, 45]), st.integers(0, 59)),
)


@st.composite
def near_a_change(draw: st.DrawFn) -> tuple[str, float]:
    zone = draw(st.sampled_from(ZONES))
    pivot = draw(st.sampled_from(transitions(zone)))
    return zone, pivot + draw(st.integers(-30 * 3600, 30 * 3600))


@settings(max_examples=300, deadline=None)
@given(near_a_change(), HHMM, HHMM)
def test_quiet_hours_end_property(zone_now: tuple[str, float], start: str, end: str) -> None:
    zone, now = zone_now
    assume(start != end)  # validate_preferences refuses an empty window
    window = qh(start, end, zone)
    got = quiet_hours_end(window, now)
    assert got == scan_for_end(window, now)
    if got is None:
        return
    tz = ZoneInfo(zone)
    assert got > now
    target = datetime.combine(naive_wall(got, tz).date(), dtime(*map(int, end.split(":"))))
    at_end = naive_wall(got, tz)
    # The wall clock shows `end` then, or it just jumped over it (a skipped hour).
    assert at_end == target or naive_wall(got - 1, tz) < target < at_end


# --------------------------------------------------------------------------------------
# throttle_slot / prune_history
# --------------------------------------------------------------------------------------


def test_throttle_disabled() -> None:
    hist = [[float(i), f"n{i}"] for i in range(100)]
    assert throttle_slot(hist, 100.0, ThrottlePolicy(0, 3600, "defer")) is None


def test_throttle_under_limit() -> None:
    p = ThrottlePolicy(3, 100, "defer")
    assert throttle_slot([], 50.0, p) is None
    assert throttle_slot([[10.0, "a"], [20.0, "b"]], 50.0, p) is None


def test_throttle_at_limit_frees_when_oldest_leaves() -> None:
    p = ThrottlePolicy(2, 100, "defer")
    hist = [[20.0, "b"], [10.0, "a"]]  # unordered on purpose
    assert throttle_slot(hist, 50.0, p) == 110.0
    # at the freeing instant the oldest left the window
    assert throttle_slot(hist, 110.0, p) is None


def test_throttle_ignores_sends_outside_window() -> None:
    p = ThrottlePolicy(2, 100, "defer")
    hist = [[0.0, "old"], [5.0, "old2"], [150.0, "a"]]
    assert throttle_slot(hist, 160.0, p) is None


def test_throttle_counts_scheduled_future_sends() -> None:
    p = ThrottlePolicy(2, 100, "defer")
    hist = [[90.0, "a"], [130.0, "scheduled"]]
    assert throttle_slot(hist, 100.0, p) == 190.0


def test_throttle_over_limit_uses_the_right_send() -> None:
    p = ThrottlePolicy(2, 100, "defer")
    hist = [[10.0, "a"], [20.0, "b"], [30.0, "c"]]
    # three in the window: a slot frees when the 2nd-newest leaves
    assert throttle_slot(hist, 50.0, p) == 120.0


@given(
    st.lists(st.integers(min_value=0, max_value=1000), max_size=30),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=0, max_value=500),
)
def test_throttle_slot_property(times: list[int], limit: int, window: int, extra: int) -> None:
    # All sends in the past: the slot is the earliest instant the window has room again.
    now = max(times, default=0) + extra
    p = ThrottlePolicy(limit, window, "defer")
    hist = [[float(t), f"n{i}"] for i, t in enumerate(times)]
    free = throttle_slot(hist, now, p)
    in_window = [t for t in times if now - window < t]
    if len(in_window) < limit:
        assert free is None
        return
    assert free is not None and free > now
    assert throttle_slot(hist, free, p) is None
    assert throttle_slot(hist, free - 1, p) is not None  # and not a second earlier


def test_prune_history() -> None:
    hist = [[0.0, "a"], [50.0, "b"], [100.0, "c"], [500.0, "future"]]
    assert prune_history(hist, 150.0, 100) == [[100.0, "c"], [500.0, "future"]]
    assert prune_history(hist, 150.0, 1000) == hist
    assert prune_history([], 1.0, 10) == []
    # boundary: exactly window old is gone
    assert prune_history([[50.0, "b"]], 150.0, 100) == []


# --------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------

NOW = at(UTC, 2024, 6, 3, 12, 0)

FULL_PREFS: dict[str, Any] = {
    "user_id": "u1",
    "email": "ann@example.com",
    "phone": "+15551234567",
    "push_tokens": ["tok-1", "tok-2"],
    "webhook_url": "https://hooks.example.com/x",
    "channels": {},
    "opt_out": {},
    "quiet_hours": None,
}


def ev(**kw: Any) -> Event:
    base: dict[str, Any] = {"event_id": "ev-1", "user_id": "u1", "title": "t"}
    base.update(kw)
    return Event(**base)


def by_channel(ds: list[Decision]) -> dict[str, Decision]:
    assert [d.channel for d in ds] == list(CHANNELS)
    return {d.channel: d for d in ds}


def run(
    event: Event,
    prefs: dict[str, Any] | None,
    now: float = NOW,
    state: dict[str, list[list[Any]]] | None = None,
    policy: ThrottlePolicy = NO_THROTTLE,
) -> dict[str, Decision]:
    return by_channel(decide(event, prefs, now, {} if state is None else state, policy))


def test_all_channels_send_with_full_prefs() -> None:
    d = run(ev(), FULL_PREFS)
    assert {c: x.action for c, x in d.items()} == dict.fromkeys(CHANNELS, SEND)
    assert d["email"].address == "ann@example.com"
    assert d["sms"].address == "+15551234567"
    assert d["webhook"].address == "https://hooks.example.com/x"
    assert d["inapp"].address == "inbox"
    assert d["push"].address == "push" and d["push"].tokens == ["tok-1", "tok-2"]
    assert all(x.reason is None and x.deliver_at is None for x in d.values())


def test_no_prefs_only_inapp() -> None:
    d = run(ev(), None)
    assert d["inapp"].action == SEND
    for ch in ("email", "sms", "push", "webhook"):
        assert d[ch].action == SUPPRESS
        assert d[ch].reason == f"no_address: user has no {ch} address"


def test_channel_restriction() -> None:
    d = run(ev(channels=("sms", "inapp")), FULL_PREFS)
    assert d["sms"].action == SEND and d["inapp"].action == SEND
    for ch in ("email", "push", "webhook"):
        assert d[ch].action == SUPPRESS
        assert d[ch].reason is not None and d[ch].reason.startswith("not_requested")
        assert "sms,inapp" in d[ch].reason


def test_disabled_channel() -> None:
    prefs = {**FULL_PREFS, "channels": {"email": False, "sms": True}}
    d = run(ev(), prefs)
    assert d["email"].action == SUPPRESS
    assert d["email"].reason is not None and d["email"].reason.startswith("channel_disabled")
    assert d["sms"].action == SEND


def test_restriction_checked_before_disabled() -> None:
    prefs = {**FULL_PREFS, "channels": {"email": False}}
    d = run(ev(channels=("sms",)), prefs)
    assert d["email"].reason is not None and d["email"].reason.startswith("not_requested")


@pytest.mark.parametrize(
    ("opt_out", "suppressed"),
    [
        ({"marketing": ["email"]}, {"email"}),
        ({"marketing": ["*"]}, set(CHANNELS)),
        ({"*": ["sms"]}, {"sms"}),
        ({"*": ["*"]}, set(CHANNELS)),
        ({"billing": ["*"]}, set()),  # another category
        ({"marketing": []}, set()),
        ({"marketing": ["push"], "*": ["webhook"]}, {"push", "webhook"}),
    ],
)
def test_opt_out(opt_out: dict[str, list[str]], suppressed: set[str]) -> None:
    d = run(ev(category="marketing"), {**FULL_PREFS, "opt_out": opt_out})
    for ch in CHANNELS:
        if ch in suppressed:
            assert d[ch].action == SUPPRESS, ch
            assert d[ch].reason is not None and d[ch].reason.startswith("opted_out"), ch
        else:
            assert d[ch].action == SEND, ch


def test_opt_out_reason_names_category_or_all() -> None:
    d = run(
        ev(category="marketing"), {**FULL_PREFS, "opt_out": {"marketing": ["email"], "*": ["sms"]}}
    )
    assert "category 'marketing'" in (d["email"].reason or "")
    assert "all categories" in (d["sms"].reason or "")


@pytest.mark.parametrize("channel", ["email", "sms", "webhook", "push"])
def test_no_address_per_channel(channel: str) -> None:
    field = {"email": "email", "sms": "phone", "webhook": "webhook_url", "push": "push_tokens"}[
        channel
    ]
    prefs = {**FULL_PREFS, field: [] if channel == "push" else None}
    d = run(ev(), prefs)
    assert d[channel].action == SUPPRESS
    assert d[channel].reason == f"no_address: user has no {channel} address"
    for other in set(CHANNELS) - {channel}:
        assert d[other].action == SEND


def test_quiet_hours_defer_except_inapp() -> None:
    prefs = {**FULL_PREFS, "quiet_hours": qh("11:00", "13:30", "UTC")}
    d = run(ev(), prefs)
    end = at(UTC, 2024, 6, 3, 13, 30)
    for ch in ("email", "sms", "push", "webhook"):
        assert d[ch].action == DEFER
        assert d[ch].deliver_at == end
        assert d[ch].reason == "quiet_hours: until 13:30 UTC"
        assert d[ch].address is not None
    assert d["push"].tokens == ["tok-1", "tok-2"]
    assert d["inapp"].action == SEND and d["inapp"].deliver_at is None


def test_quiet_hours_outside_window_sends() -> None:
    prefs = {**FULL_PREFS, "quiet_hours": qh("22:00", "07:00", "UTC")}
    assert all(x.action == SEND for x in run(ev(), prefs).values())


def test_quiet_hours_critical_bypasses() -> None:
    prefs = {**FULL_PREFS, "quiet_hours": qh("11:00", "13:30", "UTC")}
    d = run(ev(priority="critical"), prefs)
    assert all(x.action == SEND for x in d.values())
    d = run(ev(priority="high"), prefs)
    assert d["email"].action == DEFER


THROTTLED = tuple(ch for ch in CHANNELS if ch != "inapp")
LIMIT2 = ThrottlePolicy(limit=2, window_s=3600, mode="defer")


def test_throttle_defer_mode() -> None:
    state: dict[str, list[list[Any]]] = {}
    first = run(ev(event_id="a"), FULL_PREFS, NOW, state, LIMIT2)
    second = run(ev(event_id="b"), FULL_PREFS, NOW + 10, state, LIMIT2)
    third = run(ev(event_id="c"), FULL_PREFS, NOW + 20, state, LIMIT2)
    assert all(x.action == SEND for x in first.values())
    assert all(x.action == SEND for x in second.values())
    assert third["inapp"].action == SEND  # the passive inbox is never throttled
    for ch in THROTTLED:
        assert third[ch].action == DEFER
        assert third[ch].deliver_at == NOW + 3600  # when "a" leaves the window
        assert third[ch].reason is not None and third[ch].reason.startswith("throttled")
    # the deferred send holds its slot in the history
    assert [h[0] for h in state["email"]] == [NOW, NOW + 10, NOW + 3600]
    fourth = run(ev(event_id="d"), FULL_PREFS, NOW + 30, state, LIMIT2)
    assert fourth["email"].deliver_at == NOW + 10 + 3600


def test_throttle_suppress_mode() -> None:
    policy = ThrottlePolicy(limit=1, window_s=60, mode="suppress")
    state: dict[str, list[list[Any]]] = {}
    run(ev(event_id="a"), FULL_PREFS, NOW, state, policy)
    d = run(ev(event_id="b"), FULL_PREFS, NOW + 1, state, policy)
    assert d["inapp"].action == SEND
    for ch in THROTTLED:
        assert d[ch].action == SUPPRESS
        assert d[ch].reason == f"throttled: more than 1 per 60s on {ch}"
    # a suppressed send takes no slot
    assert len(state["email"]) == 1
    assert run(ev(event_id="c"), FULL_PREFS, NOW + 61, state, policy)["email"].action == SEND


def test_throttle_is_per_channel() -> None:
    policy = ThrottlePolicy(limit=1, window_s=60, mode="suppress")
    state: dict[str, list[list[Any]]] = {}
    run(ev(event_id="a", channels=("email",)), FULL_PREFS, NOW, state, policy)
    d = run(ev(event_id="b"), FULL_PREFS, NOW + 1, state, policy)
    assert d["email"].action == SUPPRESS
    assert d["sms"].action == SEND


def test_suppressed_channels_take_no_throttle_slot() -> None:
    state: dict[str, list[list[Any]]] = {}
    run(ev(event_id="a"), {**FULL_PREFS, "email": None}, NOW, state, LIMIT2)
    assert not state.get("email")
    assert len(state["sms"]) == 1


def test_critical_bypasses_throttle() -> None:
    policy = ThrottlePolicy(limit=1, window_s=60, mode="suppress")
    state: dict[str, list[list[Any]]] = {}
    run(ev(event_id="a"), FULL_PREFS, NOW, state, policy)
    d = run(ev(event_id="b", priority="critical"), FULL_PREFS, NOW + 1, state, policy)
    assert all(x.action == SEND for x in d.values())
    # and takes no slot
    assert len(state["email"]) == 1


def test_reprocessed_notification_takes_no_second_slot() -> None:
    state: dict[str, list[list[Any]]] = {}
    one = run(ev(event_id="a"), FULL_PREFS, NOW, state, LIMIT2)
    again = run(ev(event_id="a"), FULL_PREFS, NOW + 5, state, LIMIT2)
    assert all(x.action == SEND for x in one.values())
    assert all(x.action == SEND for x in again.values())
    assert len(state["email"]) == 1
    # the slot it holds still counts: one more fits, the next one is deferred
    assert run(ev(event_id="b"), FULL_PREFS, NOW + 6, state, LIMIT2)["email"].action == SEND
    assert run(ev(event_id="c"), FULL_PREFS, NOW + 7, state, LIMIT2)["email"].action == DEFER


def test_reprocessed_throttle_deferred_notification_keeps_its_slot() -> None:
    state: dict[str, list[list[Any]]] = {}
    run(ev(event_id="a"), FULL_PREFS, NOW, state, LIMIT2)
    run(ev(event_id="b"), FULL_PREFS, NOW + 1, state, LIMIT2)
    first = run(ev(event_id="c"), FULL_PREFS, NOW + 2, state, LIMIT2)
    assert first["email"].action == DEFER
    # at-least-once: the same record is processed again a moment later
    again = run(ev(event_id="c"), FULL_PREFS, NOW + 3, state, LIMIT2)
    assert len(state["email"]) == 3
    assert again["email"].action == DEFER
    assert again["email"].deliver_at == first["email"].deliver_at


def test_quiet_hours_then_throttle_checks_slot_at_quiet_end() -> None:
    prefs = {**FULL_PREFS, "quiet_hours": qh("11:00", "13:00", "UTC")}
    policy = ThrottlePolicy(limit=1, window_s=3600, mode="defer")
    state: dict[str, list[list[Any]]] = {}
    a = run(ev(event_id="a"), prefs, NOW, state, policy)
    end = at(UTC, 2024, 6, 3, 13, 0)
    assert a["email"].deliver_at == end
    b = run(ev(event_id="b"), prefs, NOW + 1, state, policy)
    assert b["email"].action == DEFER
    assert b["email"].deliver_at == end + 3600
    assert b["email"].reason is not None and b["email"].reason.startswith("throttled")
    # inapp is never in quiet hours nor throttled: the inbox is passive
    assert a["inapp"].action == SEND
    assert b["inapp"].action == SEND


def test_push_uses_tokens_and_needs_one() -> None:
    d = run(ev(), {**FULL_PREFS, "push_tokens": ["only"]})
    assert d["push"].tokens == ["only"]
    assert run(ev(), {**FULL_PREFS, "push_tokens": None})["push"].action == SUPPRESS
    assert d["email"].tokens is None
