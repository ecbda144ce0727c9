"""Issue #17 pieces without a broker: fallback chains, topic events and subscriber pages,
callback jobs, and the callback sender against a real local HTTP server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from notifyd.config import Settings
from notifyd.domain import callbacks as callback_rules
from notifyd.domain import fallback
from notifyd.errors import InvalidEvent
from notifyd.model import fallback as chains
from notifyd.model.records import parse_event
from notifyd.providers.webhook import verify
from notifyd.stream import audience, callbacks

SECRET = "cb-secret-0123456789abcdef0123456789"


# --- fallback chains -------------------------------------------------------------------


def test_parse_chain_normalises() -> None:
    steps = chains.parse_chain([
        {"channel": "inapp"},
        {"channel": "push", "after_s": 300, "unless": "read"},
        {"channel": "email", "after_s": 3600, "unless": "delivered"},
    ])
    assert steps == [
        {"channel": "inapp", "after_s": 0},
        {"channel": "push", "after_s": 300, "unless": "read"},
        {"channel": "email", "after_s": 3600, "unless": "delivered"},
    ]


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ([], "non-empty"),
        ("inapp", "non-empty"),
        ([{"channel": "fax"}], "channel must be one of"),
        ([{"channel": "inapp"}, {"channel": "inapp", "after_s": 1}], "already a step"),
        ([{"channel": "inapp", "after_s": 5}], "first step is sent at once"),
        ([{"channel": "inapp", "unless": "read"}], "not on the first step"),
        ([{"channel": "inapp"}, {"channel": "push", "after_s": -1}], "between 0 and"),
        ([{"channel": "inapp"}, {"channel": "push", "after_s": True}], "number of seconds"),
        ([{"channel": "inapp"}, {"channel": "push", "after_s": 9, "unless": "seen"}], "unless"),
        ([{"channel": "inapp"}, {"channel": "push", "after_s": 9},
          {"channel": "email", "after_s": 5}], "not be earlier"),
        ([{"channel": "inapp", "when": 1}], "unknown field"),
    ],
)
def test_parse_chain_refuses(chain: Any, message: str) -> None:
    with pytest.raises(chains.InvalidChain, match=message):
        chains.parse_chain(chain)


def test_preferences_chains_by_category() -> None:
    out = chains.parse_preferences_chains({"*": [{"channel": "email"}]})
    assert out == {"*": [{"channel": "email", "after_s": 0}]}
    assert chains.parse_preferences_chains(None) is None
    with pytest.raises(chains.InvalidChain, match="invalid category"):
        chains.parse_preferences_chains({"bad category": [{"channel": "email"}]})


def event(**fields: Any) -> Any:
    return parse_event(orjson.dumps({"event_id": "e1", "user_id": "u1", "title": "t", **fields}))


def test_prepare_restricts_to_the_first_step_and_documents_the_chain() -> None:
    ev = event(fallback=[{"channel": "inapp"}, {"channel": "sms", "after_s": 60}],
               callback_url="https://producer.example/cb")
    plan = fallback.prepare(ev, None)
    assert ev.channels == ("inapp",)
    assert [s["channel"] for s in plan.steps] == ["inapp", "sms"]
    assert plan.content["callback_url"] == "https://producer.example/cb"
    assert plan.content["fallback"] == plan.steps


def test_prepare_uses_the_preferences_chain_of_the_category() -> None:
    prefs = {"fallback": {"alerts": [{"channel": "push", "after_s": 0}],
                          "*": [{"channel": "email", "after_s": 0}]}}
    ev = event(category="alerts")
    assert fallback.prepare(ev, prefs).steps[0]["channel"] == "push"
    other = event(category="news")
    assert fallback.prepare(other, prefs).steps[0]["channel"] == "email"
    explicit = event(category="news", channels=["sms"])  # the event's channels win
    assert fallback.prepare(explicit, prefs).steps == [] and explicit.channels == ("sms",)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"fallback": [{"channel": "inapp"}], "channels": ["sms"]}, "invalid_fallback"),
        ({"fallback": [{"channel": "nope"}]}, "invalid_fallback"),
        ({"callback_url": "javascript:alert(1)"}, "invalid_callback_url"),
        ({"callback_url": 5}, "wrong_type"),
    ],
)
def test_bad_extras_are_invalid_events(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        fallback.check_extras(event(**fields))
    assert exc.value.reason.startswith(reason)


# --- topics ------------------------------------------------------------------------------


def test_topic_event_detection_is_for_topic_without_user() -> None:
    assert audience.topic_event(b'{"event_id":"e","topic":"t","title":"x"}') is not None
    assert audience.topic_event(b'{"event_id":"e","topic":"t","user_id":"u"}') is None
    assert audience.topic_event(b'{"event_id":"e","user_id":"u"}') is None
    assert audience.topic_event(b'not json "topic"') is None


def test_topic_event_is_checked_once_as_its_copies_would_be() -> None:
    ok = {"event_id": "e", "topic": "release-notes", "title": "x"}
    assert audience.check_topic_event(ok, 10_000) == "release-notes"
    for bad, reason in [
        ({**ok, "topic": "no spaces"}, "invalid_topic"),
        ({**ok, "topic": "x" * 101}, "invalid_topic"),
        ({"event_id": "e", "topic": "t"}, "missing_content"),
        ({**ok, "channels": ["fax"]}, "unknown_channel"),
        ({**ok, "fallback": []}, "invalid_fallback"),
    ]:
        with pytest.raises(InvalidEvent) as exc:
            audience.check_topic_event(bad, 10_000)
        assert exc.value.reason.startswith(reason), (bad, exc.value.reason)


def test_buckets_are_stable_and_spread() -> None:
    users = [f"user-{i}" for i in range(5000)]
    buckets = {audience.bucket_of(u) for u in users}
    assert len(buckets) == audience.BUCKETS  # 5000 users fill every bucket
    assert audience.bucket_of("user-1") == audience.bucket_of("user-1")
    assert audience.bucket_key("t", 7) == "t#007"


def test_cursor_round_trip_and_refusal() -> None:
    assert audience.parse_cursor(None) == (0, "")
    assert audience.parse_cursor("12:user:with:colons") == (12, "user:with:colons")
    for bad in ("x", "999:u", "-1:u", "abc:u", "007:u", "\u00b2:u"):
        with pytest.raises(audience.InvalidSubscription):
            audience.parse_cursor(bad)


def test_cursor_pattern_is_what_parse_cursor_accepts() -> None:
    """The documented pattern of ?cursor= and the check agree on every bucket number."""
    pattern = re.compile(audience.CURSOR_PATTERN)
    for b in [*range(0, 1000), "00", "01", "-0", "\u0661"]:
        cursor = f"{b}:user"
        try:
            audience.parse_cursor(cursor)
            accepted = True
        except audience.InvalidSubscription:
            accepted = False
        assert accepted == bool(pattern.search(cursor)) == (
            isinstance(b, int) and b < audience.BUCKETS), cursor


# --- callbacks ---------------------------------------------------------------------------


def doc(**channels: str) -> dict[str, Any]:
    return {
        "notification_id": "n1", "event_id": "e1", "user_id": "u1",
        "callback_url": "https://producer.example/cb",
        "channels": {ch: {"status": s, "ts": 1.0, "attempts": 1} for ch, s in channels.items()},
    }


def test_callback_jobs_only_for_new_terminal_states() -> None:
    jobs = callback_rules.jobs_for({"email": "queued", "sms": "sent"},
                              doc(email="sent", sms="sent", push="retrying", inapp="suppressed"),
                              "")
    keys = sorted(j["payload"]["idempotency_key"] for j in jobs)
    assert keys == ["n1:email:sent", "n1:inapp:suppressed"]
    assert all(j["url"] == "https://producer.example/cb" for j in jobs)


def test_callback_default_url_and_none() -> None:
    d = doc(email="failed")
    del d["callback_url"]
    assert callback_rules.jobs_for({}, d, "") == []
    [job] = callback_rules.jobs_for({}, d, "https://default.example/cb")
    assert job["url"] == "https://default.example/cb"
    assert job["payload"]["status"] == "failed"


class Receiver:
    """A producer's callback endpoint: answers 503 ``fail_first`` times, then 200."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if len(self.requests) <= self.fail_first:
            return web.json_response({"code": "busy"}, status=503)
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(fail_first=2)
    app = web.Application()
    app.router.add_post("/cb", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rec, str(server.make_url("/cb"))
    finally:
        await server.close()


def sender_settings(**kw: Any) -> Settings:
    return Settings(
        callback_secret=SECRET, retry_base_s=0.01, retry_max_s=0.02, callback_max_attempts=4,
        **kw,
    )


def job(url: str) -> dict[str, Any]:
    return callback_rules.jobs_for({}, {**doc(sms="dead"), "callback_url": url}, "")[0]


async def deliver_once(s: Settings, url: str) -> dict[str, Any]:
    """One callback job for ``url`` through a started, then stopped, sender."""
    sender = callbacks.CallbackSender(s)
    await sender.start()
    try:
        return await sender.deliver(job(url))
    finally:
        await sender.stop()


async def test_sender_retries_then_delivers_signed_with_the_same_key(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    outcome = await deliver_once(sender_settings(egress_allow="127.0.0.1/32"), url)
    assert outcome == {"result": "delivered", "attempts": 3}
    assert len(rec.requests) == 3
    assert {h["Idempotency-Key"] for h, _ in rec.requests} == {"n1:sms:dead"}
    for headers, body in rec.requests:
        assert verify(SECRET.encode(), headers["X-Notifyd-Timestamp"], body,
                      headers["X-Notifyd-Signature"])
        assert orjson.loads(body)["status"] == "dead"


async def test_sender_gives_up_after_max_attempts(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.fail_first = 100
    outcome = await deliver_once(sender_settings(egress_allow="127.0.0.1/32"), url)
    assert outcome["result"] == "dead" and outcome["attempts"] == 4
    assert outcome["reason"].startswith("http_503")


async def test_sender_egress_denied_is_not_retried(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver  # loopback, not allow-listed here
    outcome = await deliver_once(sender_settings(), url)
    assert outcome["result"] == "failed" and outcome["attempts"] == 1
    assert outcome["reason"].startswith("egress_denied")
    assert rec.requests == []


def test_no_callback_for_channels_the_event_did_not_request() -> None:
    d = doc(email="sent", sms="suppressed")
    d["channels"]["sms"]["reason"] = "not_requested: event restricted channels to email"
    assert [j["payload"]["channel"] for j in callback_rules.jobs_for({}, d, "")] == ["email"]


# --- the bench's fan-out phase -----------------------------------------------------------


def test_fanout_counter_counts_distinct_recipients_and_completion() -> None:
    from notifyd.model.records import notification_id_for
    from notifyd.tools.bench.fanout import _FanoutCounter, format_fanout

    users = ["a", "b"]
    c = _FanoutCounter("ev-1", {notification_id_for(u, "ev-1"): u for u in users})
    for u in ("a", "b", "a"):  # a copy produced twice (a resumed chunk) counts once
        c.on_event(orjson.dumps({"event_id": "ev-1", "user_id": u, "topic": "t"}), 1.0)
    c.on_event(orjson.dumps({"event_id": "ev-1", "topic": "t"}), 1.0)  # the topic event
    assert c.produced == {"a", "b"} and c.copies == 3
    for u in users:
        assert not c.all_delivered.is_set()
        nid = notification_id_for(u, "ev-1")  # rows of the status changelog
        c.on_status(orjson.dumps({"notification_id": nid,
                                  "channels": {"inapp": {"status": "queued"}}}), 1.5)
        assert u not in c.delivered
        c.on_status(orjson.dumps({"notification_id": nid,
                                  "channels": {"inapp": {"status": "sent"}}}), 2.0)
    c.on_status(None, 3.0)  # a tombstone
    assert c.all_delivered.is_set() and c.last_delivered_at == 2.0
    text = format_fanout({"subscribers": 2, "runs": [
        {"workers": 1, "fanout_s": 0.5, "fanout_per_s": 4.0, "delivered_s": 1.0,
         "recipients_per_s": 2.0}]})
    assert "fan-out of one topic event to 2 subscribers" in text
    assert format_fanout({"skipped": True}) == ""
