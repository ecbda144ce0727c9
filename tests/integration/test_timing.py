"""Issue 16 on the real stack: scheduled sends, cancellation in every order, digests, and
a crash (SIGKILL) with pending schedules and open digests.

Two stacks: one worker whose clock starts at 21:59 in Paris (clock-independent: the
time rules see the same instants on any machine), and two workers on the real clock
for cancellation across workers and the crash test (the sandbox's receipt times are
compared with the scheduled times, both on this machine's clock).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifyd.model.records import notification_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.integration.test_pipeline import contact, sms_to, wait_states
from tests.support.harness import Sinks, Stack, http_json, new_id, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PARIS = ZoneInfo("Europe/Paris")
CLOCK_START = datetime(2027, 6, 1, 21, 59, 0, tzinfo=PARIS)


def status_doc(st: Stack, nid: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = st.worker.table("status", nid)
    return doc


async def worker_now(st: Stack, user: str) -> float:
    """The worker's clock now, as ``time.time() + offset``: learnt from the acceptance
    time of a probe event (its status ``accepted_at``) against this process's clock."""
    return time.time() + await clock_offset(st, user)


async def clock_offset(st: Stack, user: str) -> float:
    """The worker's clock minus ours.  The probe was accepted before we saw its status:
    the estimate errs on the early side (never ahead of the worker's clock)."""
    eid = new_id("probe")
    await st.send_events({"event_id": eid, "user_id": user, "title": "probe",
                          "channels": ["inapp"]})
    doc = await wait_for(lambda: status_doc(st, notification_id_for(user, eid)),
                         what="probe status")
    return float(doc["accepted_at"]) - time.time()


async def next_window(st: Stack, user: str, size: float, margin: float) -> float:
    """The close of the ``size``-second digest window the worker's clock is in, at least
    ``margin`` seconds ahead (else the next one: waits for the boundary)."""
    offset = await clock_offset(st, user)
    now = time.time() + offset
    close = (now // size + 1) * size
    if close - now < margin:
        await wait_for(lambda: time.time() + offset > close + 0.5, timeout=margin + 5,
                       interval=0.1, what="the next digest window")
        close += size
    return close


@pytest.fixture(scope="module")
def clock_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    st = start_stack(
        kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("timing-clock"), "timing-clock",
        sinks, {"NOTIFYD_CLOCK_START": CLOCK_START.isoformat()}, redis_url=redis.url,
    )
    yield st
    for w in st.workers:
        w.stop()


async def test_scheduled_send_fires_at_its_time_through_the_rules_then(
    clock_stack: Stack,
) -> None:
    st = clock_stack
    user = new_id("u-sched")
    c = contact(st.sinks, user)
    now = await worker_now(st, user)
    # Quiet hours start at the next full minute at least 8 s ahead (22:00 unless the
    # worker took very long to start): the events arrive before it, are due after it.
    local = datetime.fromtimestamp(now + 8, PARIS)
    start = (local + timedelta(minutes=1)).replace(second=0, microsecond=0)
    await st.set_preferences(user, {**c, "quiet_hours": {
        "start": start.strftime("%H:%M"), "end": "07:00", "timezone": "Europe/Paris"}})
    send_at = start + timedelta(seconds=3)
    normal, crit, past, delayed = (new_id(p) for p in ("normal", "crit", "past", "delay"))
    await st.send_events(
        {"event_id": normal, "user_id": user, "title": "t", "body": "normal at start+3",
         "channels": ["sms"], "send_at": send_at.isoformat()},
        {"event_id": crit, "user_id": user, "title": "t", "body": "critical at start+3",
         "channels": ["sms"], "priority": "critical", "send_at": send_at.isoformat()},
        {"event_id": past, "user_id": user, "title": "t", "body": "from the past",
         "channels": ["sms"], "send_at": "2020-01-01T00:00:00+00:00"},
        {"event_id": delayed, "user_id": user, "title": "t", "body": "in an hour",
         "channels": ["sms"], "delay_s": 3600},
    )
    n_crit, n_normal = notification_id_for(user, crit), notification_id_for(user, normal)
    chans = await wait_states(st, n_crit, {"sms": "scheduled"})
    assert chans["sms"]["deliver_at"] == send_at.timestamp()
    await wait_states(st, notification_id_for(user, past), {"sms": "sent"})
    doc = await wait_for(lambda: status_doc(st, notification_id_for(user, delayed)))
    assert doc["channels"]["sms"]["status"] == "scheduled"
    assert doc["channels"]["sms"]["deliver_at"] == pytest.approx(doc["accepted_at"] + 3600)
    # At its time the critical one is sent (it bypasses quiet hours) and not before.
    chans = await wait_states(st, n_crit, {"sms": "sent"}, timeout=90)
    sent_at = chans["sms"]["ts"]
    assert sent_at >= send_at.timestamp()
    assert [h["status"] for h in chans["sms"]["history"]] == ["scheduled", "queued", "sent"]
    # The normal one met the quiet hours at its time (not at arrival): deferred to 07:00.
    chans = await wait_states(st, n_normal, {"sms": "deferred"}, timeout=30)
    seven = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(),
                             tzinfo=PARIS).replace(hour=7).timestamp()
    assert chans["sms"]["deliver_at"] == seven
    assert sorted(d["payload"]["body"] for d in sms_to(st, c["phone"])) == [
        "critical at start+3", "from the past"]


async def test_digest_of_50_events_is_one_message_per_channel(clock_stack: Stack) -> None:
    st = clock_stack
    user = new_id("u-digest")
    c = contact(st.sinks, user)
    await st.set_preferences(user, {**c, "digests": [{"category": "comments",
                                                      "window": "1m"}]})
    close = await next_window(st, user, 60, 20)  # 50 events arrive in one window
    eids = [new_id("c") for _ in range(50)]
    await st.send_events(*[
        {"event_id": e, "user_id": user, "title": f"Comment {i}", "body": "b",
         "category": "comments", "channels": ["email", "sms", "webhook", "inapp"]}
        for i, e in enumerate(eids)
    ], {"event_id": "urgent", "user_id": user, "title": "Urgent", "body": "now",
        "category": "comments", "priority": "critical", "channels": ["sms"]})
    last = await wait_states(st, notification_id_for(user, eids[-1]), {"sms": "digested"})
    digest_id = last["sms"]["digest_id"]
    assert last["sms"]["deliver_at"] == close
    await wait_states(st, notification_id_for(user, "urgent"), {"sms": "sent"})
    # One item cancelled and SMS opted out of before the window closes: both count.
    await st.send_events({"op": "cancel", "user_id": user, "event_id": eids[0]})
    await wait_states(st, notification_id_for(user, eids[0]), {"sms": "cancelled"})
    await st.set_preferences(user, {"opt_out": {"comments": ["sms"]}}, op="patch")
    chans = await wait_states(st, digest_id, {"email": "sent", "webhook": "sent",
                                              "inapp": "sent"}, timeout=90)
    assert chans["sms"]["status"] == "suppressed"
    assert chans["sms"]["reason"].startswith("opted_out")
    doc = status_doc(st, digest_id)
    assert doc is not None and doc["title"] == "49 new notifications in comments"
    hooks = [d for d in st.sinks.deliveries("webhook")
             if d["payload"].get("notification_id") == digest_id]
    assert len(hooks) == 1
    assert hooks[0]["payload"]["body"].splitlines()[:2] == ["- Comment 1", "- Comment 2"]
    assert hooks[0]["payload"]["body"].endswith("… and 39 more")
    sms_bodies = [d["payload"]["body"] for d in sms_to(st, c["phone"])]
    assert sms_bodies == ["now"]  # only the critical one: no item was sent on its own
    assert all(d["payload"].get("notification_id") == digest_id
               for d in st.sinks.deliveries("webhook") if d["idempotency_key"].startswith(
                   tuple(notification_id_for(user, e) for e in eids)))
    item = await wait_states(st, notification_id_for(user, eids[10]), {"email": "digested"})
    assert item["email"]["digest_id"] == digest_id


# --------------------------------------------------------------------------------------
# Two workers on the real clock: cancel in every order, across workers; the crash test.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(
    kafka: KafkaBroker, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("timing-pair")
    sinks = Sinks(ledger_path=root / "receipts.jsonl")
    st = start_stack(
        kafka.url, kafka.bootstrap, root, "timing-pair", sinks,
        {"NOTIFYD_BROKER_SESSION_TIMEOUT_S": "8", "NOTIFYD_THROTTLE_LIMIT": "0",
         "NOTIFYD_REQUEUE_AFTER_S": "60"},
        workers=2, redis_url=redis.url,
    )
    yield st
    for w in st.workers:
        w.stop()
    sinks.close()


def went_through(st: Stack, nid: str, state: str) -> bool:
    doc = status_doc(st, nid)
    history = ((doc or {}).get("channels", {}).get("webhook") or {}).get("history", [])
    return any(h["status"] == state for h in history)


def scheduled_gauge(w: Any) -> float:
    """``notifyd_scheduled`` of a worker (entries in its scheduler's index)."""
    with urllib.request.urlopen(f"{w.url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("notifyd_scheduled "):
                return float(line.split()[1])
    raise AssertionError("notifyd_scheduled missing from /metrics")


def hooks_for(st: Stack, nid: str) -> list[dict[str, Any]]:
    return [d for d in st.sinks.deliveries("webhook") if d["idempotency_key"] == f"{nid}:webhook"]


async def test_cancel_wins_in_every_order(pair: Stack) -> None:
    st = pair
    user = new_id("u-cancel")
    await st.set_preferences(user, {"webhook_url": st.sinks.webhook_url(user)})
    later = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    ids = {k: new_id(k) for k in ("kafka", "first", "http", "cli", "twice")}

    def ev(eid: str) -> dict[str, Any]:
        return {"event_id": eid, "user_id": user, "title": "t", "body": eid,
                "channels": ["webhook", "inapp"], "send_at": later}

    # Cancel before its event (out of order): the event is dropped when it arrives.
    await st.send_events({"op": "cancel", "user_id": user, "event_id": ids["first"]})
    await st.send_events(*(ev(e) for e in ids.values()))
    for e in ids.values():
        if e != ids["first"]:
            await wait_states(st, notification_id_for(user, e), {"webhook": "scheduled"})
    await wait_states(st, notification_id_for(user, ids["first"]),
                      {"webhook": "cancelled", "inapp": "cancelled"})
    # Kafka op from a producer.
    await st.send_events({"op": "cancel", "user_id": user, "event_id": ids["kafka"]})
    # HTTP DELETE by an operator, on each worker (one of them routes), twice.
    for w in st.workers:
        code, body = http_json("DELETE", f"{w.url}/api/v1/notifications/"
                               f"{notification_id_for(user, ids['http'])}",
                               headers=w.op_headers)
        assert code == 200, (code, body)
        assert {ch: s["status"] for ch, s in body["channels"].items()} == {
            "webhook": "cancelled", "inapp": "cancelled"}
    code, body = http_json("DELETE", f"{st.worker.url}/api/v1/notifications/{new_id('nope')}",
                           headers=st.worker.op_headers)
    assert code == 404 and body["code"] == "notification_not_found"
    # The CLI.
    res = subprocess.run(
        [sys.executable, "-m", "notifyd", "cancel", "--event-id", ids["cli"], "--user", user],
        capture_output=True, text=True, timeout=60, env=st.worker.env(),
    )
    assert res.returncode == 0, res.stderr
    assert notification_id_for(user, ids["cli"]) in res.stdout
    # Twice over Kafka: harmless.
    for _ in range(2):
        await st.send_events({"op": "cancel", "user_id": user, "event_id": ids["twice"]})
    for e in ids.values():
        await wait_states(st, notification_id_for(user, e),
                          {"webhook": "cancelled", "inapp": "cancelled"})
    # Past their time nothing was sent; a marker scheduled at the same time was.
    marker = new_id("marker")
    await st.send_events({**ev(marker), "send_at": later})
    await wait_states(st, notification_id_for(user, marker), {"webhook": "sent"}, timeout=60)
    assert all(hooks_for(st, notification_id_for(user, e)) == [] for e in ids.values())
    for e in ids.values():
        row = st.worker.table("scheduled", f"event:{len(user)}:{user}:{e}?user_id={user}")
        assert row is None


async def test_cancel_keeps_sent_channels_and_drops_a_deferred_one(pair: Stack) -> None:
    st = pair
    user = new_id("u-partial")
    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=2)).strftime("%H:%M"), "timezone": "UTC"}
    await st.set_preferences(user, {"webhook_url": st.sinks.webhook_url(user),
                                    "quiet_hours": quiet})
    eid = new_id("e")
    nid = notification_id_for(user, eid)
    await st.send_events({"event_id": eid, "user_id": user, "title": "t", "body": "b",
                          "channels": ["webhook", "inapp"]})
    await wait_states(st, nid, {"webhook": "deferred", "inapp": "sent"})
    code, body = http_json("DELETE", f"{st.workers[1].url}/api/v1/notifications/{nid}",
                           headers=st.workers[1].op_headers)
    assert code == 200, (code, body)
    assert body["channels"]["inapp"]["status"] == "sent"
    assert body["channels"]["webhook"]["status"] == "cancelled"
    assert st.worker.table("scheduled", f"{nid}:webhook?user_id={user}") is None


async def test_crash_with_pending_schedules_and_open_digests(pair: Stack) -> None:
    """SIGKILL the worker holding scheduled deliveries and open digests before they are
    due: every schedule is delivered once, at or after its time; every digest once."""
    st = pair
    users = [new_id("cu") for _ in range(16)]
    for u in users:
        await st.set_preferences(u, {"webhook_url": st.sinks.webhook_url(u)})
    digest_users = users[:8]
    await next_window(st, users[0], 60, 25)  # the digest items arrive in one window
    base = time.time()
    events = []
    for i in range(160):
        due = base + 6 + (i % 48) * 0.75  # 6..41 s ahead: before, during and after the kill
        events.append({"event_id": new_id("se"), "user_id": users[i % 16], "title": f"s{i}",
                       "body": "scheduled", "channels": ["webhook"],
                       "send_at": datetime.fromtimestamp(due, UTC).isoformat()})
    items = [{"event_id": new_id("di"), "user_id": u, "title": f"d{j}", "body": "item",
              "channels": ["webhook"], "category": "crash", "digest": {"window": "1m"}}
             for u in digest_users for j in range(5)]
    await st.send_events(*events, *items)
    nids = {notification_id_for(e["user_id"], e["event_id"]): datetime.fromisoformat(
        e["send_at"]).timestamp() for e in events}
    for nid in nids:  # scheduled (by now perhaps already sent, if the machine is slow)
        await wait_for(lambda nid=nid: went_through(st, nid, "scheduled"), timeout=60,
                       what=f"{nid} scheduled")
    digests: dict[str, str] = {}
    for it in items:
        chans = await wait_states(st, notification_id_for(it["user_id"], it["event_id"]),
                                  {"webhook": "digested"}, timeout=60)
        digests[it["user_id"]] = chans["webhook"]["digest_id"]
    assert len(set(digests.values())) == len(digest_users)
    victim = st.workers[1]
    pending = await asyncio.to_thread(scheduled_gauge, victim)
    assert pending > 0, "the worker to kill holds no pending schedule"
    victim.kill()  # SIGKILL: holds half of the partitions, so half of the schedules
    killed_at = time.time()
    await asyncio.sleep(1.5)  # let the kill land before the restart (not a sync point)
    victim.start(wait=False)
    await victim.wait_ready_async()
    back_at = time.time()
    want = {f"{nid}:webhook" for nid in nids} | {f"{d}:webhook" for d in digests.values()}
    await wait_for(lambda: want <= {d["idempotency_key"] for d in
                                    st.sinks.deliveries("webhook")},
                   timeout=240, interval=1, what="every schedule and digest delivered")
    got = [d for d in st.sinks.deliveries("webhook") if d["idempotency_key"] in want]
    counts = Counter(d["idempotency_key"] for d in got)
    late = [d["received_at"] - nids[d["idempotency_key"].split(":")[0]] for d in got
            if d["idempotency_key"].split(":")[0] in nids]
    early = [x for x in late if x < 0]
    print(f"\nTIMING CRASH TEST: {len(nids)} schedules + {len(digests)} digests, 1 SIGKILL "
          f"of a worker holding {pending:.0f} pending entries: "
          f"{sum(1 for d in nids.values() if killed_at <= d <= back_at)} schedules due while "
          f"it was down ({back_at - killed_at:.1f}s): "
          f"delivered {len(counts)}/{len(want)}, duplicates "
          f"{sum(1 for c in counts.values() if c > 1)}, lateness min {min(late):.2f}s "
          f"max {max(late):.2f}s")
    assert all(c == 1 for c in counts.values())
    assert early == []
    # No item of a digest was sent on its own.
    item_keys = {f"{notification_id_for(it['user_id'], it['event_id'])}:webhook" for it in items}
    assert not item_keys & {d["idempotency_key"] for d in st.sinks.deliveries("webhook")}
    bodies = {d["idempotency_key"]: d["payload"]["title"] for d in got}
    assert all(bodies[f"{d}:webhook"] == "5 new notifications in crash"
               for d in digests.values())
