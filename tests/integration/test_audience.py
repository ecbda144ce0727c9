"""Issue #17 on the real stack (Apache Kafka, two workers): topics and fan-out, delivery
callbacks to producers, channel fallback chains.

One two-worker stack serves the module: a topic's subscribers are spread over both
workers' partitions, so the fan-out crosses workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from notifyd.model.records import notification_id_for
from notifyd.stream.audience import bucket_of
from notifyd.stream.topics import partition_for
from notifyd.tools.broker.base import free_port
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import WEBHOOK_SECRET, Sinks, Stack, http_json, new_id, signup, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def aud(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("audience")
    # Callbacks are signed with the sandbox receiver's secret, so it verifies them.
    env = {"NOTIFYD_THROTTLE_LIMIT": "0", "NOTIFYD_CALLBACK_SECRET": WEBHOOK_SECRET}
    st = start_stack(kafka.url, kafka.bootstrap, root, "audience", sinks, env, workers=2,
                     redis_url=redis.url)
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


def call(st: Stack, i: int, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or st.operator_token}"}
    return http_json(method, f"{st.workers[i].url}{path}", body, headers)


def users_on_every_partition(prefix: str, per_partition: int = 3) -> list[str]:
    """User ids covering each of the 4 partitions (so both workers) ``per_partition`` times."""
    out: list[str] = []
    counts = dict.fromkeys(range(4), 0)
    i = 0
    while min(counts.values()) < per_partition:
        u = f"{prefix}-{i}"
        p = partition_for(u, 4)
        if counts[p] < per_partition:
            counts[p] += 1
            out.append(u)
        i += 1
    return out


def all_subscribers(st: Stack, topic: str, limit: int) -> list[str]:
    """Every page of the operator listing, alternating the worker asked."""
    users: list[str] = []
    cursor: str | None = None
    page = 0
    while True:
        q = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, body = call(st, page % 2, "GET", f"/api/v1/topics/{topic}/subscribers{q}")
        assert status == 200, body
        assert len(body["items"]) <= limit
        users += [it["user_id"] for it in body["items"]]
        cursor = body["next_cursor"]
        page += 1
        if cursor is None:
            return users


def inbox_ids(st: Stack, user_id: str) -> list[str]:
    box = st.worker.table("inbox", user_id) or {"items": []}
    return [it["id"] for it in box["items"]]


def delivered_inapp(st: Stack, users: list[str], event_id: str) -> bool:
    for u in users:
        doc = st.worker.table("status", notification_id_for(u, event_id))
        if not doc or doc["channels"].get("inapp", {}).get("status") != "sent":
            return False
    return True


# --- topics and fan-out ----------------------------------------------------------------


async def test_subscriptions_api_and_fan_out_across_two_workers(aud: Stack) -> None:
    topic = new_id("release-notes")
    subs = users_on_every_partition(new_id("sub"))
    me, token = signup(aud, "aud")
    # Operators subscribe users through either worker (each request is routed to the
    # owner of the user's partition); one user subscribes themself.
    for n, u in enumerate(subs):
        status, body = call(aud, n % 2, "PUT", f"/api/v1/topics/{topic}/subscribers/{u}")
        assert status == 200, body
        assert body["topic"] == topic and body["user_id"] == u
    status, body = call(aud, 1, "PUT", f"/api/v1/subscriptions/{topic}", token=token)
    assert status == 200, body
    everyone = [*subs, me]
    # Read your writes, on both sides: the user's list and the topic's (paged) listing.
    for i in (0, 1):
        status, mine = call(aud, i, "GET", "/api/v1/subscriptions", token=token)
        assert status == 200 and [t["topic"] for t in mine["topics"]] == [topic], mine
    listed = all_subscribers(aud, topic, limit=5)
    assert sorted(listed) == sorted(everyone) and len(listed) == len(set(listed))
    status, first = call(aud, 0, "GET", f"/api/v1/topics/{topic}/subscribers?limit=1")
    assert first["total"] == len(everyone)
    # A bucket row, read through either worker (routed by its topic).
    row_key = f"{topic}%23{bucket_of(me):03d}"
    for i in (0, 1):
        status, row = call(aud, i, "GET", f"/api/v1/admin/tables/subscribers/{row_key}")
        assert status == 200 and me in row["value"], row
    # Invalid topic names and cursors are 400 with {code, detail}.
    status, err = call(aud, 0, "PUT", "/api/v1/subscriptions/bad%20topic!", token=token)
    assert status == 400 and err["code"] == "invalid_parameter", err
    status, err = call(aud, 0, "GET", f"/api/v1/topics/{topic}/subscribers?cursor=zz")
    assert status == 400 and err["code"] == "invalid_cursor", err

    # One subscriber opted out of the category in-app: their own preferences apply.
    picky = subs[0]
    await aud.set_preferences(picky, {"opt_out": {"releases": ["inapp"]}})

    event_id = new_id("rn")
    event = {"event_id": event_id, "topic": topic, "title": "v2 is out", "body": "notes",
             "category": "releases", "channels": ["inapp"]}
    await aud.send_events(event, key=topic)
    others = [u for u in everyone if u != picky]
    await wait_for(lambda: delivered_inapp(aud, others, event_id), timeout=60,
                   what="every subscriber's in-app notification")
    doc = await wait_for(
        lambda: aud.worker.table("status", notification_id_for(picky, event_id)),
        what="the opted-out subscriber's status")
    assert doc["channels"]["inapp"]["status"] == "suppressed"
    assert doc["channels"]["inapp"]["reason"].startswith("opted_out")
    for u in others:
        assert inbox_ids(aud, u).count(notification_id_for(u, event_id)) == 1

    # Re-sending the topic event (another record) fans out nothing.  Both records below
    # are keyed by something else than the topic, so both are re-keyed to the topic's
    # partition, in order: once the marker is fanned out, the re-send was handled.
    unsub = subs[1]
    status, _ = call(aud, 0, "DELETE", f"/api/v1/topics/{topic}/subscribers/{unsub}")
    assert status == 204
    marker = {**event, "event_id": new_id("rn2")}
    await aud.send_events(event, marker, key="not-the-topic")
    remaining = [u for u in others if u != unsub]
    await wait_for(lambda: delivered_inapp(aud, remaining, marker["event_id"]), timeout=60,
                   what="the second topic event")
    copies = await aud.read_topic(
        aud.names.events,
        lambda recs: sum(1 for r in recs if b'"user_id"' in r.value
                         and orjson.loads(r.value)["event_id"] == marker["event_id"])
        >= len(remaining) + 1,
    )
    per_recipient = [orjson.loads(r.value) for r in copies if b'"user_id"' in r.value]
    first_copies = [e["user_id"] for e in per_recipient if e["event_id"] == event_id]
    assert sorted(first_copies) == sorted(everyone), "the re-sent topic event fanned out again"
    second = [e["user_id"] for e in per_recipient if e["event_id"] == marker["event_id"]]
    assert sorted(second) == sorted([u for u in everyone if u != unsub])
    assert aud.worker.table("status", notification_id_for(unsub, marker["event_id"])) is None
    status, body = call(aud, 1, "GET", f"/api/v1/topics/{topic}/subscribers?limit=100")
    assert unsub not in [it["user_id"] for it in body["items"]]


# --- delivery callbacks ------------------------------------------------------------------


def callbacks_received(st: Stack, name: str) -> list[dict[str, Any]]:
    return [d for d in st.sinks.deliveries("webhook") if d.get("name") == name]


async def test_callbacks_post_each_terminal_state_once_signed(aud: Stack) -> None:
    user = new_id("cb")
    await aud.set_preferences(user, {"email": f"{user}@example.com"})  # no phone
    name = new_id("producer")
    event_id = new_id("ev")
    await aud.send_events({
        "event_id": event_id, "user_id": user, "title": "t", "body": "b",
        "channels": ["inapp", "sms", "email"], "callback_url": aud.sinks.webhook_url(name),
    })
    nid = notification_id_for(user, event_id)
    got = await wait_for(lambda: len(callbacks_received(aud, name)) >= 3 and
                         callbacks_received(aud, name), timeout=60, what="three callbacks")
    # The sandbox receiver accepted them: the signature verified with the shared secret.
    keys = [d["idempotency_key"] for d in got]
    assert sorted(keys) == sorted(
        [f"{nid}:inapp:sent", f"{nid}:sms:suppressed", f"{nid}:email:sent"]
    )
    by_channel = {d["payload"]["channel"]: d["payload"] for d in got}
    assert by_channel["sms"]["status"] == "suppressed"
    assert by_channel["sms"]["reason"].startswith("no_address")
    assert by_channel["email"]["status"] == "sent"
    assert {p["notification_id"] for p in by_channel.values()} == {nid}
    assert {p["user_id"] for p in by_channel.values()} == {user}
    doc = await wait_for(
        lambda: (d := aud.worker.table("status", nid)) and len(d.get("callbacks", {})) == 3 and d,
        what="callback outcomes in the status document")
    assert {v["result"] for v in doc["callbacks"].values()} == {"delivered"}
    assert doc["callback_url"] == aud.sinks.webhook_url(name)


async def test_callback_to_a_denied_address_is_recorded_not_retried(aud: Stack) -> None:
    user = new_id("cbd")
    event_id = new_id("ev")
    await aud.send_events({
        "event_id": event_id, "user_id": user, "title": "t", "channels": ["inapp"],
        "callback_url": "http://10.20.30.40/hooks/notifyd",
    })
    nid = notification_id_for(user, event_id)
    doc = await wait_for(
        lambda: (d := aud.worker.table("status", nid)) and d.get("callbacks") and d,
        what="the denied callback's outcome")
    outcome = doc["callbacks"][f"{nid}:inapp:sent"]
    assert outcome["result"] == "failed" and outcome["attempts"] == 1, outcome
    assert outcome["reason"].startswith("egress_denied"), outcome
    assert "10.20.30.40" not in outcome["reason"]


async def test_invalid_callback_url_is_dead_lettered(aud: Stack) -> None:
    user = new_id("cbx")
    event_id = new_id("ev")
    await aud.send_events({"event_id": event_id, "user_id": user, "title": "t",
                           "callback_url": "ftp://example.com/x"})
    recs = await aud.read_topic(
        aud.names.events_dlq, lambda rs: any(event_id.encode() in r.value for r in rs))
    mine = [r for r in recs if event_id.encode() in r.value]
    assert mine and dict(mine[0].headers)["notifyd-reason"].startswith(b"invalid_callback_url")


# --- channel fallback ------------------------------------------------------------------


def status_of(st: Stack, nid: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = st.worker.table("status", nid)
    return doc


def channel_state(st: Stack, nid: str, channel: str) -> str | None:
    doc = status_of(st, nid)
    return None if doc is None else doc["channels"].get(channel, {}).get("status")


async def test_fallback_read_in_time_skips_the_later_steps(aud: Stack) -> None:
    user, token = signup(aud, "aud")
    await aud.set_preferences(user, {"email": f"{user}@example.com",
                                     "push_tokens": [f"tok-{user}"]})
    event_id = new_id("fb")
    await aud.send_events({
        "event_id": event_id, "user_id": user, "title": "Your report", "body": "ready",
        "fallback": [{"channel": "inapp"},
                     {"channel": "push", "after_s": 600, "unless": "read"},
                     {"channel": "email", "after_s": 1200, "unless": "read"}],
    })
    nid = notification_id_for(user, event_id)
    await wait_for(lambda: channel_state(aud, nid, "inapp") == "sent", what="in-app sent")
    doc = status_of(aud, nid)
    assert doc is not None
    assert [s["channel"] for s in doc["fallback"]] == ["inapp", "push", "email"]
    assert doc["channels"]["push"]["status"] == "pending"
    assert doc["channels"]["push"]["deliver_at"] == doc["accepted_at"] + 600
    assert doc["channels"]["email"]["status"] == "pending"
    # The user reads it (through the other worker: routed to their partition's owner).
    status, item = call(aud, 1, "PATCH", f"/api/v1/notifications/{nid}", {"read": True},
                        token=token)
    assert status == 200 and item["read"] is True, item
    await wait_for(lambda: channel_state(aud, nid, "push") == "skipped"
                   and channel_state(aud, nid, "email") == "skipped", what="steps skipped")
    doc = status_of(aud, nid)
    assert doc is not None and doc["channels"]["push"]["reason"] == "fallback: read"


async def test_fallback_escalates_when_not_read_at_the_right_time(aud: Stack) -> None:
    user = new_id("fbe")
    # The chain comes from the user's preferences for the category.
    await aud.set_preferences(user, {
        "push_tokens": [f"tok-{user}"], "email": f"{user}@example.com",
        "fallback": {"alerts": [{"channel": "inapp"},
                                {"channel": "push", "after_s": 2, "unless": "read"},
                                {"channel": "email", "after_s": 4, "unless": "delivered"}]},
    })
    event_id = new_id("fb")
    await aud.send_events({"event_id": event_id, "user_id": user, "title": "Disk almost full",
                           "category": "alerts"})
    nid = notification_id_for(user, event_id)
    await wait_for(lambda: channel_state(aud, nid, "push") == "sent", timeout=60,
                   what="the push step")
    doc = status_of(aud, nid)
    assert doc is not None
    queued = [h for h in doc["channels"]["push"]["history"] if h["status"] == "queued"]
    assert queued and queued[0]["ts"] >= doc["accepted_at"] + 2, doc["channels"]["push"]
    push = [d for d in aud.sinks.deliveries("push") if d["payload"]["tokens"] == [f"tok-{user}"]]
    assert len(push) == 1 and push[0]["received_at"] >= doc["accepted_at"] + 2
    # The in-app item was delivered, so "unless delivered" skips the e-mail step when due.
    await wait_for(lambda: channel_state(aud, nid, "email") == "skipped", timeout=60,
                   what="the e-mail step skipped")
    doc = status_of(aud, nid)
    assert doc is not None and doc["channels"]["email"]["reason"] == "fallback: delivered"


async def test_fallback_previous_channel_dead_sends_the_next_step_at_once(aud: Stack) -> None:
    user = new_id("fbd")
    # Nothing listens on this port: connection refused, retried, then dead.
    await aud.set_preferences(user, {
        "webhook_url": f"http://127.0.0.1:{free_port()}/hook", "email": f"{user}@example.com"})
    event_id = new_id("fb")
    await aud.send_events({
        "event_id": event_id, "user_id": user, "title": "Payment failed",
        "fallback": [{"channel": "webhook"}, {"channel": "email", "after_s": 3600}],
    })
    nid = notification_id_for(user, event_id)
    await wait_for(lambda: channel_state(aud, nid, "webhook") == "dead", timeout=60,
                   what="the webhook step dead")
    await wait_for(lambda: channel_state(aud, nid, "email") == "sent", timeout=60,
                   what="the e-mail step sent at once")
    doc = status_of(aud, nid)
    assert doc is not None
    assert any(h.get("reason") == "fallback: previous step dead"
               for h in doc["channels"]["email"]["history"]), doc["channels"]["email"]
    assert any(m["To"] == f"{user}@example.com" for m in aud.sinks.emails())


async def test_invalid_fallback_chain_is_refused(aud: Stack) -> None:
    status, err = call(aud, 0, "POST", "/api/v1/notifications", {
        "title": "t", "fallback": [{"channel": "inapp"}, {"channel": "inapp", "after_s": 5}]})
    assert status == 422 and err["code"] == "invalid_fallback", err
    status, err = call(aud, 0, "PUT", "/api/v1/users/someone/preferences",
                       {"fallback": {"x": [{"channel": "push", "after_s": 5}]}})
    assert status == 422 and err["code"] == "invalid_preferences", err


# --- a crash in the middle of a fan-out (last: it kills a worker of the module's stack) --


async def test_fan_out_survives_a_sigkill_without_a_second_copy(aud: Stack) -> None:
    """SIGKILL the worker fanning out, restart it: every subscriber has the notification
    exactly once (the re-done chunk is dropped by ``seen``)."""
    from tests.integration.conftest import _wait_balanced

    topic = new_id("crash-topic")
    n = 4000
    users = [f"{topic}-u{i}" for i in range(n)]
    cmd = {"op": "subscribe", "phase": "topic", "topic": topic, "user_ids": users}
    await aud.produce(aud.names.subscriptions, [(topic.encode(), orjson.dumps(cmd))])

    def total() -> bool:
        status, body = call(aud, 0, "GET", f"/api/v1/topics/{topic}/subscribers?limit=1")
        return status == 200 and body["total"] == n

    await wait_for(total, timeout=60, what="4000 subscribers")
    owner = next(w for w in aud.workers
                 if partition_for(topic, 4) in (w.get("/readyz")[1] or {}).get("partitions", []))
    event_id = new_id("crash")
    await aud.send_events({"event_id": event_id, "topic": topic, "title": "crash",
                           "channels": ["inapp"]}, key=topic)
    await wait_for(lambda: '"fanout.accepted"' in owner.log_path.read_text(errors="replace")
                   and event_id in owner.log_path.read_text(errors="replace"),
                   interval=0.05, what="the fan-out to start")
    owner.kill()  # SIGKILL mid-fan-out: no commit, no flush
    owner.start(wait=False)
    await owner.wait_ready_async()
    await asyncio.to_thread(_wait_balanced, aud.workers)

    changelog = "notifyd-it-audience-inbox-changelog"
    nids = {u: notification_id_for(u, event_id) for u in users}
    latest: dict[str, Any] = {}  # user -> the inbox as last written
    read = [0]

    def all_in(records: list[Any]) -> bool:
        for r in records[read[0]:]:
            if r.key is not None and r.value is not None:
                latest[r.key.decode()] = orjson.loads(r.value)
        read[0] = len(records)
        return all(
            any(it["id"] == nids[u] for it in (latest.get(u) or {}).get("items", ()))
            for u in users
        )

    await aud.read_topic(changelog, all_in, timeout=240)
    missing = [u for u in users
               if not any(it["id"] == nids[u] for it in (latest.get(u) or {}).get("items", ()))]
    assert missing == [], f"{len(missing)} subscribers never got it"
    twice = [u for u in users if sum(it["id"] == nids[u] for it in latest[u]["items"]) != 1]
    assert twice == []
    copies = await aud.read_topic(
        aud.names.events,
        lambda rs: sum(1 for r in rs if event_id.encode() in r.value and b'"user_id"' in r.value)
        >= n)
    produced = sum(1 for r in copies if event_id.encode() in r.value and b'"user_id"' in r.value)

    # What a fan-out resumed after a crash does, made certain: its first chunk is
    # produced again (the continuation record replayed).  Every copy is a duplicate.
    def duplicates() -> int:
        return sum(
            1
            for w in aud.workers
            for line in w.log_path.read_text(errors="replace").splitlines()
            if '"event.duplicate"' in line and event_id in line
        )

    before = duplicates()
    replay = {"topic": topic, "bucket": 0, "done": 0, "started_at": 0,
              "event": {"event_id": event_id, "topic": topic, "title": "crash",
                        "channels": ["inapp"]}}
    await aud.produce(aud.names.fanout, [(topic.encode(), orjson.dumps(replay))])
    await wait_for(lambda: duplicates() - before >= n, timeout=240, interval=1,
                   what=f"{n} re-produced copies dropped as duplicates")
    latest.clear()
    read[0] = 0
    await aud.read_topic(changelog, all_in, timeout=30)
    twice = [u for u in users if sum(it["id"] == nids[u] for it in latest[u]["items"]) != 1]
    assert twice == [], "a re-produced copy was delivered again"
    print(f"\nFAN-OUT CRASH: {n} subscribers, per-recipient events produced {produced} "
          f"({produced - n} re-produced after the SIGKILL), every subscriber exactly once; "
          f"a replayed fan-out re-produced {n} copies, all dropped as duplicates")
