"""Scheduled sends, cancellation and digests (notifyd.stream.timing): parsing, windows, the
status fold, and the real ingest and channel agents in Faust's ``test_context()``
(tables in memory; timer records are fed to the ingest agent as the scheduler would
produce them)."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from notifyd.domain import timing as timing_rules
from notifyd.errors import InvalidEvent
from notifyd.model.records import (
    CancelRequest,
    InvalidPreferences,
    idempotency_scope,
    notification_id_for,
    parse_event,
    parse_input,
    validate_preferences,
)
from notifyd.stream import timing
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.ingest import ORIGIN_HEADER
from notifyd.stream.tables import cancels, inbox, preferences, scheduled, seen
from notifyd.stream.topics import deliver_topics, partition_for
from tests.support.app import app_agent, build_app
from tests.support.statuses import capture_statuses
from tests.support.waiting import until


def ev(**kw: Any) -> bytes:
    base: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "title": "T"}
    base.update(kw)
    return orjson.dumps(base)


# --------------------------------------------------------------------------------------
# Event contract
# --------------------------------------------------------------------------------------


def test_send_at_and_delay_are_parsed() -> None:
    e = parse_event(ev(send_at="2030-01-02T03:04:05+01:00"))
    assert e.send_at == datetime(2030, 1, 2, 2, 4, 5, tzinfo=UTC).timestamp()
    assert parse_event(ev(delay_s=90)).delay_s == 90.0
    assert parse_event(ev(delay_s=0.5)).delay_s == 0.5
    assert parse_event(ev(send_at=None, delay_s=None)).due(100.0, 365) is None


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"send_at": "2030-01-02T03:04:05+00:00", "delay_s": 5}, "ambiguous_schedule"),
        ({"send_at": "2030-01-02T03:04:05"}, "invalid_send_at"),  # no offset
        ({"send_at": "tomorrow"}, "invalid_send_at"),
        ({"send_at": 1700000000}, "wrong_type"),
        ({"delay_s": -1}, "invalid_delay_s"),
        ({"delay_s": "60"}, "wrong_type"),
        ({"delay_s": True}, "wrong_type"),
        ({"digest": {"window": "5x"}}, "invalid_digest"),
        ({"digest": "1h"}, "invalid_digest"),
        ({"digest": {"window": "1h", "extra": 1}}, "invalid_digest"),
        ({"digest": {"window": "daily@25:00"}}, "invalid_digest"),
        ({"digest": {"window": "30d"}}, "invalid_digest"),
    ],
)
def test_bad_scheduling_fields_are_refused_with_a_reason(
    fields: dict[str, Any], code: str
) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(ev(**fields))
    assert err.value.reason.startswith(code + ":"), err.value.reason


def test_due_past_is_now_and_too_far_is_refused() -> None:
    now = 1_000_000.0
    assert parse_event(ev(delay_s=30)).due(now, 365) == now + 30
    past = datetime.fromtimestamp(now - 3600, UTC).isoformat()
    assert parse_event(ev(send_at=past)).due(now, 365) == now
    with pytest.raises(InvalidEvent) as err:
        parse_event(ev(delay_s=2 * 86400)).due(now, 1)
    assert err.value.reason.startswith("schedule_too_far:")


def test_cancel_request_on_the_events_topic() -> None:
    req = parse_input(orjson.dumps({"op": "cancel", "user_id": "u1", "event_id": "e1"}))
    assert req == CancelRequest("u1", "e1")
    assert req.notification_id == notification_id_for("u1", "e1")
    with pytest.raises(InvalidEvent, match=r"^missing_field: event_id"):
        parse_input(orjson.dumps({"op": "cancel", "user_id": "u1"}))
    with pytest.raises(InvalidEvent, match=r"^unknown_op:"):
        parse_input(orjson.dumps({"op": "drop", "user_id": "u1", "event_id": "e1"}))
    with pytest.raises(InvalidEvent, match=r"^not_an_event:"):
        parse_event(orjson.dumps({"op": "cancel", "user_id": "u1", "event_id": "e1"}))


def test_digest_preferences_and_timezone() -> None:
    out = validate_preferences(
        "u1",
        {"timezone": "Europe/Paris",
         "digests": [{"category": "comments", "window": "1h"},
                     {"category": "comments", "window": "daily@09:00"}]},
        partial=True,
    )
    assert out == {"timezone": "Europe/Paris",
                   "digests": [{"category": "comments", "window": "daily@09:00"}]}
    for bad in ({"timezone": "Mars/Base"}, {"digests": [{"window": "1h"}]},
                {"digests": [{"category": "c", "window": "1y"}]}, {"digests": "1h"}):
        with pytest.raises(InvalidPreferences):
            validate_preferences("u1", bad, partial=True)
    full = validate_preferences("u1", {})
    assert full["digests"] == [] and full["timezone"] is None


# --------------------------------------------------------------------------------------
# Digest windows
# --------------------------------------------------------------------------------------


def test_period_windows_are_aligned_to_the_epoch() -> None:
    utc = ZoneInfo("UTC")
    assert timing_rules.window_bounds("1h", 7200.0, utc) == (7200.0, 10800.0)
    assert timing_rules.window_bounds("1h", 10799.9, utc) == (7200.0, 10800.0)
    assert timing_rules.window_bounds("30m", 1900.0, utc) == (1800.0, 3600.0)


def test_daily_window_in_the_users_zone_across_a_clock_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 2026-03-29: clocks jump 02:00 -> 03:00 in Paris; the day is 23 hours long.
    now = datetime(2026, 3, 29, 8, 0, tzinfo=paris).timestamp()
    start, close = timing_rules.window_bounds("daily@09:00", now, paris)
    assert datetime.fromtimestamp(start, paris) == datetime(2026, 3, 28, 9, 0, tzinfo=paris)
    assert datetime.fromtimestamp(close, paris) == datetime(2026, 3, 29, 9, 0, tzinfo=paris)
    assert close - start == 23 * 3600
    at_nine = datetime(2026, 3, 29, 9, 0, tzinfo=paris).timestamp()
    assert timing_rules.window_bounds("daily@09:00", at_nine, paris)[0] == at_nine


def test_digest_spec_event_field_then_preferences_critical_bypasses() -> None:
    prefs = {"digests": [{"category": "comments", "window": "1h"}]}
    e = parse_event(ev(category="comments"))
    assert timing_rules.digest_spec(e, prefs) == {"window": "1h", "category": "comments"}
    e = parse_event(ev(category="comments", digest={"window": "daily@08:00"}))
    assert timing_rules.digest_spec(e, prefs) == {"window": "daily@08:00", "category": "comments"}
    assert timing_rules.digest_spec(parse_event(ev(category="orders")), prefs) is None
    crit = parse_event(ev(category="comments", priority="critical"))
    assert timing_rules.digest_spec(crit, prefs) is None


# --------------------------------------------------------------------------------------
# Status fold
# --------------------------------------------------------------------------------------


def fold(doc: dict[str, Any] | None, *updates: dict[str, Any], **msg: Any) -> dict[str, Any]:
    return statuses.fold_status(doc, {"notification_id": "n1", "updates": list(updates), **msg},
                                0)


def u(channel: str, status: str, ts: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"channel": channel, "status": status, "ts": ts, **kw}


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {ch: e["status"] for ch, e in doc["channels"].items()}


def test_fold_cancel_cancels_what_is_pending_and_keeps_what_is_done() -> None:
    doc = fold(None, u("email", "sent"), u("sms", "deferred", deliver_at=9.0, delivery={}),
               u("push", "queued", delivery={}), u("webhook", "suppressed"))
    doc = fold(doc, cancel={"at": 5.0})
    assert states(doc) == {"email": "sent", "sms": "cancelled", "push": "cancelled",
                           "webhook": "suppressed"}
    assert doc["cancelled_at"] == 5.0
    assert "delivery" not in doc["channels"]["sms"]  # the reconciler has nothing to re-queue
    again = fold(doc, cancel={"at": 7.0})  # twice is harmless
    assert states(again) == states(doc) and again["cancelled_at"] == 5.0


@pytest.mark.parametrize("later", ["queued", "deferred", "retrying", "scheduled"])
@pytest.mark.parametrize("terminal", ["cancelled", "digested"])
def test_fold_new_terminal_states_never_move_back(terminal: str, later: str) -> None:
    doc = fold(None, u("email", terminal))
    assert states(fold(doc, u("email", later, 2.0))) == {"email": terminal}


def test_fold_a_send_already_under_way_wins_over_the_cancel() -> None:
    doc = fold(None, u("email", "queued"), cancel={"at": 2.0})
    assert states(doc) == {"email": "cancelled"}
    assert states(fold(copy.deepcopy(doc), u("email", "sent", 3.0))) == {"email": "sent"}
    assert states(fold(doc, u("email", "failed", 3.0))) == {"email": "cancelled"}


def test_fold_digested_item_is_cancelled_only_by_the_forced_update() -> None:
    doc = fold(None, u("email", "digested", digest_id="d1"))
    assert states(fold(doc, cancel={"at": 2.0})) == {"email": "digested"}
    assert states(fold(doc, u("email", "cancelled"))) == {"email": "digested"}
    doc = fold(doc, u("email", "cancelled", force=True))
    assert states(doc) == {"email": "cancelled"}
    assert "force" not in doc["channels"]["email"]


# --------------------------------------------------------------------------------------
# The ingest agent
# --------------------------------------------------------------------------------------


Published = list[tuple[str, list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]]


class Driver:
    """Feeds the real ingest agent; records status messages and channel produces."""

    def __init__(self, agent: Any, published: Published, produced: list[dict[str, Any]]):
        self.agent = agent
        self.published = published
        self.produced = produced

    async def put(self, user: str, value: dict[str, Any] | bytes,
                  headers: list[tuple[str, bytes]] | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        await self.agent.put(raw, key=user.encode(), partition=partition_for(user),
                             headers=headers)  # the test agent numbers the offsets

    async def fire(self, key: str) -> None:
        """What the scheduler does when ``key`` is due: a timer record for the row."""
        row = scheduled.get(key)
        assert row is not None
        await self.put(row["user_id"], {"key": key, "due": row["due"]},
                       headers=[(timing.TIMER_HEADER, row["kind"].encode())])

    async def flush(self) -> None:
        marker = f"flush-{uuid.uuid4().hex[:8]}"
        n = len(self.published)
        await self.put(marker, {"event_id": marker, "user_id": marker, "title": "t",
                                "channels": ["inapp"]})
        await until(lambda: any(c and c["user_id"] == marker for _, _, c, _ in
                                self.published[n:]))

    def channels(self, nid: str) -> dict[str, str]:
        """The channel states the status fold would show (published messages folded)."""
        doc: dict[str, Any] | None = None
        for n, updates, content, cancel in self.published:
            if n == nid:
                msg: dict[str, Any] = {"notification_id": n, "updates": updates}
                if content is not None:
                    msg["content"] = content
                if cancel is not None:
                    msg["cancel"] = cancel
                doc = statuses.fold_status(doc, msg, 0)
        return states(doc) if doc else {}


@pytest.fixture
async def ingest(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Driver]:
    agent_def = app_agent("ingest", build_app(throttle_limit=0))

    published: Published = []
    produced: list[dict[str, Any]] = []

    async def record(nid: str, updates: list[dict[str, Any]], content: Any = None,
                     cancel: Any = None, **kw: Any) -> None:
        published.append((nid, [dict(x) for x in updates], content, cancel))

    async def to_channel(*, key: bytes, value: bytes) -> None:
        produced.append(orjson.loads(value))

    async def nothing() -> None:
        return None

    monkeypatch.setattr(statuses, "publish_status", record)
    for topic in deliver_topics.values():
        monkeypatch.setattr(topic, "send", to_channel)
    monkeypatch.setattr(timing, "outputs_on_broker", nothing)  # no broker here
    async with agent_def.test_context() as agent:
        yield Driver(agent, published, produced)


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_scheduled_event_waits_then_goes_through_the_rules(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("e")
    nid = notification_id_for(user, eid)
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "Later",
                            "channels": ["inapp"], "delay_s": 3600})
    await ingest.flush()
    assert ingest.channels(nid) == {"inapp": "scheduled"}
    key = timing_rules.event_key(user, eid)
    row = scheduled.get(key)
    assert row is not None and row["kind"] == "event" and row["nid"] == nid
    assert inbox.get(user) is None
    # The same event re-sent before its time: dropped (seen), still one schedule.
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "Later",
                            "channels": ["inapp"], "delay_s": 10})
    await ingest.flush()
    assert scheduled.get(key)["due"] == row["due"]
    await ingest.fire(key)
    await ingest.flush()
    assert ingest.channels(nid)["inapp"] == "sent"
    assert [it["id"] for it in inbox.get(user)["items"]] == [nid]
    assert scheduled.get(key) is None
    # A second timer for the same row (a crash before the row was dropped): nothing.
    n = len(ingest.published)
    await ingest.put(user, {"key": key, "due": row["due"]},
                     headers=[(timing.TIMER_HEADER, b"event")])
    await ingest.flush()
    assert all(p[0] != nid for p in ingest.published[n:])
    assert len(inbox.get(user)["items"]) == 1


async def test_released_event_meets_quiet_hours_at_its_time(
    ingest: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, eid = fresh("u"), fresh("e")
    preferences.data[user] = {"user_id": user, "email": "a@example.com",
                              "quiet_hours": {"start": "22:00", "end": "07:00",
                                              "timezone": "UTC"}}
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    send_at = datetime.combine(day, time(23, 30), tzinfo=UTC)
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "Night",
                            "channels": ["email"], "send_at": send_at.isoformat()})
    await ingest.flush()
    key = timing_rules.event_key(user, eid)
    await ingest.fire(key)  # released with now = its due time: inside quiet hours
    await ingest.flush()
    nid = notification_id_for(user, eid)
    assert ingest.channels(nid)["email"] == "deferred"
    deferred = scheduled.get(f"{nid}:email")
    assert deferred["due"] == datetime.combine(day + timedelta(days=1), time(7, 0),
                                               tzinfo=UTC).timestamp()


async def test_cancel_before_the_time_then_again_then_the_timer(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("e")
    nid = notification_id_for(user, eid)
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "x",
                            "channels": ["inapp", "email"], "delay_s": 600})
    await ingest.flush()
    key = timing_rules.event_key(user, eid)
    row = scheduled.get(key)
    for _ in range(2):  # cancelling twice is harmless
        await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eid})
    await ingest.flush()
    assert ingest.channels(nid) == {"inapp": "cancelled", "email": "cancelled"}
    assert scheduled.get(key) is None
    assert cancels.get(idempotency_scope(user, eid))[2] == user
    await ingest.put(user, {"key": key, "due": row["due"]},
                     headers=[(timing.TIMER_HEADER, b"event")])
    await ingest.flush()
    assert inbox.get(user) is None
    assert ingest.channels(nid) == {"inapp": "cancelled", "email": "cancelled"}


async def test_cancel_that_arrives_first_wins(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("e")
    nid = notification_id_for(user, eid)
    await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eid})
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "x",
                            "channels": ["inapp"]})
    await ingest.flush()
    assert inbox.get(user) is None
    assert ingest.channels(nid) == {"inapp": "cancelled"}  # only what the event asked for
    assert seen.get(idempotency_scope(user, eid)) is not None  # a re-send is a duplicate


async def test_cancel_drops_a_deferred_delivery(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("e")
    preferences.data[user] = {"user_id": user, "email": "a@example.com",
                              "quiet_hours": {"start": "00:00", "end": "23:59",
                                              "timezone": "UTC"}}
    nid = notification_id_for(user, eid)
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "x",
                            "channels": ["email"]})
    await ingest.flush()
    if ingest.channels(nid)["email"] != "deferred":  # 23:59-00:00 UTC: not quiet
        await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eid})
        await ingest.flush()
        pytest.skip("ran in the one minute of the day outside the quiet window")
    assert scheduled.get(f"{nid}:email") is not None
    await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eid})
    await ingest.flush()
    assert scheduled.get(f"{nid}:email") is None
    assert ingest.channels(nid)["email"] == "cancelled"


async def test_digest_collects_cancels_and_sends_one_message(ingest: Driver) -> None:
    user = fresh("u")
    preferences.data[user] = {"user_id": user, "locale": "fr",
                              "digests": [{"category": "comments", "window": "1h"}]}
    eids = [fresh("c") for _ in range(5)]
    for i, eid in enumerate(eids):
        await ingest.put(user, {"event_id": eid, "user_id": user, "title": f"Comment {i}",
                                "category": "comments", "channels": ["inapp"]})
    # Critical bypasses the digest; another category is not collected.
    await ingest.put(user, {"event_id": "urgent", "user_id": user, "title": "Now",
                            "category": "comments", "priority": "critical",
                            "channels": ["inapp"]})
    await ingest.flush()
    assert [it["title"] for it in inbox.get(user)["items"]] == ["Now"]
    keys = [k for _, k, _ in timing_heap() if k.startswith(timing_rules.user_prefixes(user)[1])]
    assert len(set(keys)) == 1
    key = keys[0]
    row = scheduled.get(key)
    assert [it["title"] for it in row["items"]] == [f"Comment {i}" for i in range(5)]
    digest_id = row["digest_id"]
    assert digest_id == notification_id_for(user, row["event_id"])
    first = notification_id_for(user, eids[0])
    assert ingest.channels(first) == {"inapp": "digested"}
    await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eids[0]})
    await ingest.flush()
    assert ingest.channels(first) == {"inapp": "cancelled"}
    assert len(scheduled.get(key)["items"]) == 4
    assert timing.pending_for(user)["digests"][0]["count"] == 4
    await ingest.fire(key)
    await ingest.flush()
    items = inbox.get(user)["items"]
    assert [it["id"] for it in items] == [digest_id, notification_id_for(user, "urgent")]
    assert items[0]["title"] == "4 nouvelles notifications dans comments"
    assert items[0]["body"].splitlines() == [f"- Comment {i}" for i in range(1, 5)]
    assert ingest.channels(digest_id)["inapp"] == "sent"
    assert scheduled.get(key) is None
    # The same window closed again (replay): the inbox keeps one digest.
    await ingest.put(user, {"key": key, "due": row["due"]},
                     headers=[(timing.TIMER_HEADER, b"digest")])
    await ingest.flush()
    assert len(inbox.get(user)["items"]) == 2


async def test_empty_digest_sends_nothing(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("c")
    await ingest.put(user, {"event_id": eid, "user_id": user, "title": "one",
                            "channels": ["inapp"], "digest": {"window": "1h"}})
    await ingest.flush()
    key = next(k for _, k, _ in timing_heap() if k.startswith(timing_rules.user_prefixes(user)[1]))
    await ingest.put(user, {"op": "cancel", "user_id": user, "event_id": eid})
    await ingest.flush()
    await ingest.fire(key)
    await ingest.flush()
    assert inbox.get(user) is None
    assert scheduled.get(key) is None


def timing_heap() -> list[tuple[float, str, int]]:
    from notifyd.stream.scheduler import scheduler

    return scheduler.heap


async def test_channel_agent_skips_a_cancelled_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    webhook_agent = app_agent("agent.webhook")
    from notifyd.model.records import Delivery
    from notifyd.stream.tables import ledger

    published = capture_statuses(monkeypatch)
    user, eid = fresh("u"), fresh("e")
    nid = notification_id_for(user, eid)
    cancels.data[idempotency_scope(user, eid)] = [1.0, 0, user]
    d = Delivery(notification_id=nid, event_id=eid, user_id=user, channel="webhook",
                 title="t", body="b", address="http://127.0.0.1:9/never")
    async with webhook_agent.test_context() as agent:
        await agent.put(d.dumps(), key=user.encode(), partition=partition_for(user))
        await until(lambda: published)
    assert published[0][1][0]["status"] == "cancelled"
    assert ledger.get(d.idempotency_key)["s"] == "cancelled"


# --------------------------------------------------------------------------------------
# Metrics and the bench's reading of them
# --------------------------------------------------------------------------------------


def test_due_lag_histogram_and_digest_counter_as_the_bench_reads_them() -> None:
    from prometheus_client import CollectorRegistry

    from notifyd.metrics import Metrics
    from notifyd.tools.bench.schedule import _METRIC_RE, lag_from_histogram

    m = Metrics(CollectorRegistry(auto_describe=True))
    m.due_lag("event", 0.2)
    m.due_lag("event", 0.6)
    m.due_lag("digest", -1.0)  # clock skew never counts as negative lateness
    m.digest_sent()
    text = m.render().decode()
    parsed: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_RE.match(line)
        if match:
            parsed[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    lag = lag_from_histogram(parsed, "event")
    assert lag["count"] == 2 and lag["mean_s"] == pytest.approx(0.4)
    assert lag["le_buckets"]["0.25"] == 1.0 and lag["le_buckets"]["1.0"] == 2.0
    assert lag_from_histogram(parsed, "digest")["le_buckets"]["0.01"] == 1.0
    assert parsed["notifyd_digests_sent_total"] == 1.0
    assert "notifyd_scheduled" in parsed


async def test_scheduler_index_rebuild_keeps_entries_pushed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from notifyd.stream import scheduler as sched_mod

    monkeypatch.setattr(sched_mod, "REBUILD_CHUNK", 1)  # yield after every row
    s = sched_mod.Scheduler()
    rows = {f"rebuild-{i}": {"due": float(i), "p": i % 2, "kind": "event", "user_id": "u"}
            for i in range(6)}
    for k, v in rows.items():
        scheduled.data[k] = v
    try:
        task = asyncio.create_task(s.rebuild(frozenset({0})))
        await asyncio.sleep(0)  # the rebuild is under way
        s.push(99.0, "pushed-meanwhile", 0)
        await task
        mine = sorted(k for _, k, _ in s.heap if k.startswith(("rebuild-", "pushed")))
        assert mine == ["pushed-meanwhile", "rebuild-0", "rebuild-2", "rebuild-4"]
        assert s.active == frozenset({0})
        assert s.heap[0][0] == min(d for d, _, _ in s.heap)  # a heap again
    finally:
        for k in rows:
            scheduled.data.pop(k, None)


async def test_scheduled_event_with_a_broken_template_is_refused_on_arrival(
    ingest: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.dead_letters import DeadLetters

    dlq = DeadLetters().install(monkeypatch)
    user, eid = fresh("u"), fresh("e")
    await ingest.put(user, {"event_id": eid, "user_id": user, "template": "no_such_one",
                            "channels": ["inapp"], "delay_s": 60})
    far = {"event_id": fresh("far"), "user_id": user, "title": "t", "channels": ["inapp"],
           "delay_s": 400 * 86400}
    await ingest.put(user, far)
    await ingest.flush()
    assert dlq.reasons() == [
        "unknown_template: no template named 'no_such_one'",
        "schedule_too_far: more than 365 days ahead (NOTIFYD_MAX_SCHEDULE_DAYS)",
    ]
    assert scheduled.get(timing_rules.event_key(user, eid)) is None
    assert ingest.channels(notification_id_for(user, eid)) == {}


async def test_replayed_item_of_a_sent_digest_joins_no_other_digest(ingest: Driver) -> None:
    user, eid = fresh("u"), fresh("c")
    preferences.data[user] = {"user_id": user,
                              "digests": [{"category": "comments", "window": "1h"}]}
    event = {"event_id": eid, "user_id": user, "title": "once", "category": "comments",
             "channels": ["inapp"]}
    origin = [(ORIGIN_HEADER, b"notifyd.events/1/41")]
    await ingest.put(user, event, headers=origin)
    await ingest.flush()
    mark = seen.get(idempotency_scope(user, eid))
    key = mark[4]
    assert key.startswith(timing_rules.user_prefixes(user)[1])
    await ingest.fire(key)
    await ingest.flush()
    assert len(inbox.get(user)["items"]) == 1
    # The same Kafka record again (a crash before its offset was committed), in
    # whatever window the clock is in now: it is not collected a second time.
    await ingest.put(user, event, headers=origin)
    await ingest.flush()
    assert timing.pending_for(user)["digests"] == []
    assert len(inbox.get(user)["items"]) == 1
