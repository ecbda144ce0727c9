"""Issue 3: the pipeline on Apache Kafka with real SMTP, HTTP webhook and sandbox APIs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from notifyd.model.records import notification_id_for
from notifyd.providers.webhook import verify
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import WEBHOOK_SECRET, Sinks, Stack, header, new_id, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def contact(sinks: Sinks, user: str) -> dict[str, Any]:
    digits = int(hashlib.sha256(user.encode()).hexdigest(), 16) % 10**9
    return {
        "email": f"{user}@example.com",
        "phone": f"+1555{digits:09d}"[:12],
        "push_tokens": [f"tok-{user}"],
        "webhook_url": sinks.webhook_url(user),
    }


def channel_states(stack: Stack, nid: str) -> dict[str, Any] | None:
    doc = stack.worker.table("status", nid)
    return doc["channels"] if doc else None


async def wait_states(
    stack: Stack, nid: str, want: dict[str, str], timeout: float = 30
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        chans = channel_states(stack, nid)
        if chans and all(chans.get(ch, {}).get("status") == st for ch, st in want.items()):
            return chans
        return None

    return await wait_for(probe, timeout=timeout, what=f"{nid} states {want}")


def sms_to(stack: Stack, phone: str) -> list[dict[str, Any]]:
    return [d for d in stack.sinks.deliveries("sms") if d["payload"]["to"] == phone]


def emails_to(stack: Stack, addr: str) -> list[Any]:
    return [m for m in stack.sinks.emails() if m["To"] == addr]


ALL_SENT = {ch: "sent" for ch in ("email", "sms", "push", "webhook", "inapp")}


async def test_one_event_reaches_every_channel(stack: Stack) -> None:
    user = new_id("u-all")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    event_id = new_id("evt")
    await stack.send_events(
        {
            "event_id": event_id,
            "user_id": user,
            "title": "Your code",
            "body": "Code 123456",
            "priority": "high",
            "data": {"k": "v"},
        }
    )
    nid = notification_id_for(user, event_id)
    chans = await wait_states(stack, nid, ALL_SENT)
    assert all(chans[ch]["attempts"] == 1 for ch in ALL_SENT)

    mails = emails_to(stack, c["email"])
    assert len(mails) == 1 and mails[0]["Subject"] == "Your code"
    assert mails[0]["X-Notifyd-Idempotency-Key"] == f"{nid}:email"
    assert "Code 123456" in mails[0].get_content()

    sms = sms_to(stack, c["phone"])
    assert len(sms) == 1 and sms[0]["payload"]["body"] == "Code 123456"
    push = [d for d in stack.sinks.deliveries("push") if d["payload"]["tokens"] == c["push_tokens"]]
    assert len(push) == 1 and push[0]["payload"]["title"] == "Your code"

    hooks = [d for d in stack.sinks.deliveries("webhook") if d.get("name") == user]
    assert len(hooks) == 1  # the receiver refuses a bad signature with 401
    body = orjson.dumps(hooks[0]["payload"])
    assert hooks[0]["payload"]["notification_id"] == nid
    # Independent check of the signature scheme on the payload the receiver accepted.
    from notifyd.providers.webhook import sign

    ts = "1700000000"
    assert verify(
        WEBHOOK_SECRET.encode(), ts, body, sign(WEBHOOK_SECRET.encode(), ts, body), now=1700000000
    )

    box = stack.worker.table("inbox", user)
    assert box["items"][0]["id"] == nid


async def test_opt_out_suppresses_with_reason(stack: Stack) -> None:
    user = new_id("u-opt")
    c = contact(stack.sinks, user)
    await stack.set_preferences(
        user, {**c, "opt_out": {"marketing": ["email", "sms"]}, "channels": {"push": False}}
    )
    eid = new_id("evt")
    await stack.send_events(
        {"event_id": eid, "user_id": user, "category": "marketing", "title": "Sale", "body": "50%"}
    )
    nid = notification_id_for(user, eid)
    chans = await wait_states(
        stack,
        nid,
        {
            "email": "suppressed",
            "sms": "suppressed",
            "push": "suppressed",
            "webhook": "sent",
            "inapp": "sent",
        },
    )
    assert chans["email"]["reason"] == "opted_out: user opted out of category 'marketing' on email"
    assert chans["sms"]["reason"].startswith("opted_out:")
    assert chans["push"]["reason"] == "channel_disabled: user turned push off"
    assert emails_to(stack, c["email"]) == [] and sms_to(stack, c["phone"]) == []
    # Another category is not affected by the opt-out.
    eid2 = new_id("evt")
    await stack.send_events(
        {
            "event_id": eid2,
            "user_id": user,
            "category": "security",
            "title": "New login",
            "body": "from Paris",
        }
    )
    await wait_states(stack, notification_id_for(user, eid2), {"email": "sent", "sms": "sent"})
    assert len(emails_to(stack, c["email"])) == 1


async def test_channel_restriction(stack: Stack) -> None:
    user = new_id("u-restrict")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    eid = new_id("evt")
    await stack.send_events(
        {"event_id": eid, "user_id": user, "title": "t", "body": "only sms", "channels": ["sms"]}
    )
    chans = await wait_states(stack, notification_id_for(user, eid), {"sms": "sent"})
    for ch in ("email", "push", "webhook", "inapp"):
        assert chans[ch]["status"] == "suppressed"
        assert chans[ch]["reason"] == "not_requested: event restricted channels to sms"
    assert len(sms_to(stack, c["phone"])) == 1
    assert emails_to(stack, c["email"]) == []


async def test_templates_with_locale(stack: Stack) -> None:
    user = new_id("u-tpl")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, {**c, "locale": "fr-CA"})
    eid = new_id("evt")
    await stack.send_events(
        {
            "event_id": eid,
            "user_id": user,
            "template": "welcome",
            "data": {"name": "Zoé"},
            "channels": ["email", "sms", "inapp"],
        }
    )
    await wait_states(
        stack, notification_id_for(user, eid), {"email": "sent", "sms": "sent", "inapp": "sent"}
    )
    mail = emails_to(stack, c["email"])[0]
    assert mail["Subject"] == "Bienvenue, Zoé !"  # fr-CA falls back to fr
    # The short SMS variant exists only in English: a French user keeps French text.
    assert sms_to(stack, c["phone"])[0]["payload"]["body"] == (
        "Bonjour Zoé, votre compte notifyd est prêt."
    )
    en_user = new_id("u-tpl-en")
    c_en = contact(stack.sinks, en_user)
    await stack.set_preferences(en_user, c_en)
    eid_en = new_id("evt")
    await stack.send_events(
        {"event_id": eid_en, "user_id": en_user, "template": "welcome",
         "data": {"name": "Ada"}, "channels": ["sms"]}
    )
    await wait_states(stack, notification_id_for(en_user, eid_en), {"sms": "sent"})
    assert sms_to(stack, c_en["phone"])[0]["payload"]["body"] == (
        "Welcome Ada! Your account is ready."
    )
    # A template variable missing from data is a dead letter with the reason.
    bad = new_id("evt")
    await stack.send_events({"event_id": bad, "user_id": user, "template": "welcome", "data": {}})
    recs = await stack.read_topic(
        stack.names.events_dlq, lambda rs: any(bad.encode() in r.value for r in rs)
    )
    rec = next(r for r in recs if bad.encode() in r.value)
    assert header(rec, "notifyd-reason") == "template_error: welcome: 'name' is undefined"


async def test_throttle_defers_excess_with_reason(stack: Stack) -> None:
    user = new_id("u-thr")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    ids = [new_id("evt") for _ in range(6)]
    await stack.send_events(
        *[
            {"event_id": e, "user_id": user, "title": f"n{i}", "body": "x", "channels": ["sms"]}
            for i, e in enumerate(ids)
        ]
    )
    states = []
    for e in ids:
        chans = await wait_for(
            lambda e=e: (
                (channel_states(stack, notification_id_for(user, e)) or {}).get("sms", {}).get("status")
                in ("sent", "deferred")
                and channel_states(stack, notification_id_for(user, e))
            ),
            what="sms decided",
        )
        states.append(chans["sms"])
    # Limit is 4 per hour on this worker: the first four go, the rest wait for a slot.
    assert [s["status"] for s in states] == ["sent"] * 4 + ["deferred"] * 2
    assert states[4]["reason"] == "throttled: more than 4 per 3600s on sms"
    assert states[4]["deliver_at"] > states[0]["ts"] + 3500
    assert len(sms_to(stack, c["phone"])) == 4
    # critical bypasses the throttle
    crit = new_id("evt")
    await stack.send_events(
        {
            "event_id": crit,
            "user_id": user,
            "title": "alarm",
            "body": "!",
            "channels": ["sms"],
            "priority": "critical",
        }
    )
    await wait_states(stack, notification_id_for(user, crit), {"sms": "sent"})


async def test_resent_event_id_delivered_once(stack: Stack) -> None:
    user = new_id("u-dup")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    eid = new_id("evt")
    ev = {
        "event_id": eid,
        "user_id": user,
        "title": "once",
        "body": "only once",
        "channels": ["sms", "email", "inapp"],
    }
    await stack.send_events(ev)
    await wait_states(stack, notification_id_for(user, eid), {"sms": "sent", "email": "sent"})
    await stack.send_events(ev, ev)
    # A later, different event proves the re-sent ones were processed (and dropped).
    marker = new_id("evt")
    await stack.send_events({**ev, "event_id": marker})
    await wait_states(stack, notification_id_for(user, marker), {"sms": "sent", "email": "sent"})
    assert len(sms_to(stack, c["phone"])) == 2
    assert len(emails_to(stack, c["email"])) == 2
    assert len(stack.worker.table("inbox", user)["items"]) == 2


async def test_bad_events_interleaved_with_good_ones(stack: Stack) -> None:
    user = new_id("u-mix")
    good_ids = [new_id("good") for _ in range(10)]
    values: list[tuple[bytes | None, bytes]] = []
    bad_reasons: dict[bytes, str] = {}
    bad_inputs = [
        (b"{not json", "invalid_json"),
        (orjson.dumps({"user_id": user, "title": "no id"}), "missing_field"),
        (
            orjson.dumps({"event_id": "x", "user_id": user, "title": "t", "channels": ["fax"]}),
            "unknown_channel",
        ),
        (orjson.dumps({"event_id": "y", "user_id": 42, "title": "t"}), "wrong_type"),
        (
            orjson.dumps({"event_id": "z", "user_id": user, "title": "t", "priority": "urgent"}),
            "invalid_priority",
        ),
    ]
    for i, gid in enumerate(good_ids):
        values.append(
            (user.encode(), orjson.dumps({"event_id": gid, "user_id": user, "title": f"g{i}"}))
        )
        raw, code = bad_inputs[i % len(bad_inputs)]
        key = new_id("bad").encode()
        bad_reasons[key] = code
        values.append((key, raw))
    await stack.produce(stack.names.events, values)
    box = await wait_for(
        lambda: (b := stack.worker.table("inbox", user)) and len(b["items"]) == 10 and b,
        what="10 good events in the inbox",
    )
    assert {it["id"] for it in box["items"]} == {notification_id_for(user, g) for g in good_ids}
    recs = await stack.read_topic(
        stack.names.events_dlq, lambda rs: set(bad_reasons) <= {r.key for r in rs}
    )
    got = {r.key: header(r, "notifyd-reason") for r in recs if r.key in bad_reasons}
    assert set(got) == set(bad_reasons)
    for key, code in bad_reasons.items():
        assert got[key].startswith(code), (got[key], code)
    assert stack.worker.alive()


async def test_event_keyed_by_something_else_uses_the_users_preferences(stack: Stack) -> None:
    user = new_id("u-rekey")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    for i in range(4):  # several keys, so some certainly land on another partition
        eid = new_id("evt")
        await stack.send_events(
            {
                "event_id": eid,
                "user_id": user,
                "title": "rekeyed",
                "body": f"via key {i}",
                "channels": ["sms"],
            },
            key=f"order-{i}-{eid}",
        )
        await wait_states(stack, notification_id_for(user, eid), {"sms": "sent"})
    bodies = sorted(d["payload"]["body"] for d in sms_to(stack, c["phone"]))
    assert bodies == [f"via key {i}" for i in range(4)]


# --------------------------------------------------------------------------------------
# Quiet hours: a worker whose clock starts at 06:59:50 in Paris (fixed clock).
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    start = datetime(2026, 3, 2, 6, 59, 45, tzinfo=ZoneInfo("Europe/Paris"))
    st = start_stack(
        kafka.url,
        kafka.bootstrap,
        tmp_path_factory.mktemp("quiet"),
        "quiet",
        sinks,
        {"NOTIFYD_CLOCK_START": start.isoformat()},
        redis_url=redis.url,
    )
    yield st
    for w in st.workers:
        w.stop()


async def test_quiet_hours_defer_until_window_end(quiet_stack: Stack) -> None:
    st = quiet_stack
    user = new_id("u-quiet")
    c = contact(st.sinks, user)
    await st.set_preferences(
        user, {**c, "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}}
    )
    eid, crit = new_id("evt"), new_id("crit")
    await st.send_events(
        {
            "event_id": eid,
            "user_id": user,
            "title": "digest",
            "body": "later please",
            "channels": ["sms", "inapp"],
        },
        {
            "event_id": crit,
            "user_id": user,
            "title": "breach",
            "body": "now!",
            "channels": ["sms"],
            "priority": "critical",
        },
    )
    nid = notification_id_for(user, eid)
    chans = await wait_states(st, nid, {"sms": "deferred", "inapp": "sent"})
    assert chans["sms"]["reason"] == "quiet_hours: until 07:00 Europe/Paris"
    seven = datetime(2026, 3, 2, 7, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert chans["sms"]["deliver_at"] == seven
    # critical bypasses quiet hours
    await wait_states(st, notification_id_for(user, crit), {"sms": "sent"})
    assert [d["payload"]["body"] for d in sms_to(st, c["phone"])] == ["now!"]
    # At 07:00 (worker clock) the deferred SMS is released and sent.
    await wait_states(st, nid, {"sms": "sent"}, timeout=40)
    assert sorted(d["payload"]["body"] for d in sms_to(st, c["phone"])) == ["later please", "now!"]



# --------------------------------------------------------------------------------------
# Quiet hours in a repeated hour: a worker whose clock starts at the SECOND 02:05:00 of
# the autumn change in Paris (27 Oct 2024, 03:00 CEST -> 02:00 CET), 01:05 UTC.  The
# test picks a window end a minute or two ahead of the worker's clock, still inside the
# repeated hour, however long the worker took to start.
# --------------------------------------------------------------------------------------

FALL_BACK_START = datetime(2024, 10, 27, 2, 5, tzinfo=ZoneInfo("Europe/Paris"), fold=1)


@pytest.fixture(scope="module")
def fall_back_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, float]]:
    assert FALL_BACK_START.isoformat() == "2024-10-27T02:05:00+01:00"
    launched = time.time()
    st = start_stack(
        kafka.url,
        kafka.bootstrap,
        tmp_path_factory.mktemp("fallback"),
        "fallback",
        sinks,
        {"NOTIFYD_CLOCK_START": FALL_BACK_START.isoformat()},
        redis_url=redis.url,
    )
    yield st, launched
    for w in st.workers:
        w.stop()


async def test_quiet_hours_in_the_repeated_hour_end_at_the_second_pass(
    fall_back_stack: tuple[Stack, float],
) -> None:
    """A window ending inside the repeated hour, asked at its second pass: quiet until the
    second pass of the end time, not the first one an hour ago (which sent at once,
    during quiet hours)."""
    st, launched = fall_back_stack
    # The worker's clock started at FALL_BACK_START when its process started, after
    # ``launched``: it reads at most this now.
    worker_now = FALL_BACK_START.timestamp() + (time.time() - launched)
    # A whole minute 0.5-1.5 minutes ahead: the preferences and the event (a few seconds
    # even under load) are in before it, and the test waits no longer than it must.
    end_utc = (int(worker_now + 30) // 60 + 1) * 60
    end_local = datetime.fromtimestamp(end_utc, ZoneInfo("Europe/Paris"))
    assert end_local.fold == 1 and end_local.hour == 2, "worker took 50+ minutes to start"
    end_hhmm = end_local.strftime("%H:%M")
    user = new_id("u-fold")
    c = contact(st.sinks, user)
    await st.set_preferences(
        user, {**c, "quiet_hours": {"start": "01:00", "end": end_hhmm, "timezone": "Europe/Paris"}}
    )
    eid = new_id("evt")
    await st.send_events(
        {"event_id": eid, "user_id": user, "title": "night", "body": f"after {end_hhmm} CET",
         "channels": ["sms", "inapp"]}
    )
    nid = notification_id_for(user, eid)
    # Sent in the end either way; the status document tells when and after what.
    chans = await wait_states(st, nid, {"sms": "sent", "inapp": "sent"}, timeout=300)
    sms = chans["sms"]
    assert sms["history"][0] == {
        "status": "deferred", "ts": sms["history"][0]["ts"],
        "reason": f"quiet_hours: until {end_hhmm} Europe/Paris",
    }
    assert sms["deliver_at"] == end_utc, datetime.fromtimestamp(
        sms["deliver_at"], ZoneInfo("Europe/Paris")
    ).isoformat()
    # Deferred inside the window, sent once the worker's clock left it; in-app at once.
    assert sms["history"][0]["ts"] < end_utc <= sms["ts"]
    assert chans["inapp"]["ts"] < end_utc
    assert [d["payload"]["body"] for d in sms_to(st, c["phone"])] == [f"after {end_hhmm} CET"]


async def test_log_lines_carry_record_coordinates_and_ids(stack: Stack) -> None:
    """structlog JSON: a record's log lines carry topic, partition, offset, ids."""
    from notifyd.tools.broker.base import free_port

    user = new_id("u-log")
    # A webhook nobody listens on: the channel logs a retry.
    await stack.set_preferences(user, {"webhook_url": f"http://127.0.0.1:{free_port()}/hook"})
    eid = new_id("evt")
    await stack.send_events({"event_id": eid, "user_id": user, "title": "t",
                             "channels": ["webhook"]})
    nid = notification_id_for(user, eid)

    def retry_line() -> dict[str, Any] | None:
        for line in stack.worker.log_path.read_text(errors="replace").splitlines():
            if nid in line and '"delivery.retrying"' in line:
                return dict(orjson.loads(line))
        return None

    rec = await wait_for(retry_line, what="a delivery.retrying log line")
    assert rec["topic"] == stack.names.deliver("webhook")
    assert isinstance(rec["partition"], int) and isinstance(rec["offset"], int)
    assert rec["notification_id"] == nid and rec["user_id"] == user
    assert rec["level"] == "info" and "timestamp" in rec
