"""The realtime hub (fan-out, bounded queues, unsubscribe, close), the SSE stream it
feeds (served by a real aiohttp server), the in-app agent publishing to it, and the
figures of the console's stats endpoint."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator, ValidationError

from notifyd.model.records import Delivery
from notifyd.stream.handlers import status as statuses
from notifyd.web import console, realtime
from notifyd.web.api import v1 as api
from notifyd.web.realtime import CLOSED, Hub, sse
from tests.support.app import app_agent

OWNER: web.AppKey[dict[str, bool]] = web.AppKey("owner", dict)
ITEM = {"id": "n1", "title": "Hi", "body": "there", "read": False, "archived": False}


# --- the hub -------------------------------------------------------------------------


async def test_fan_out_to_every_subscriber_of_the_user_only() -> None:
    hub = Hub()
    a, b, other = hub.subscribe("u1"), hub.subscribe("u1"), hub.subscribe("u2")
    assert hub.subscribers() == 3 and hub.subscribers("u1") == 2
    assert hub.publish("u1", ITEM, 4) == 2
    for sub in (a, b):
        assert await sub.get(1) == ("notification", {**ITEM, "unread": 4})
    assert await other.get(0.01) is None  # nothing for u2
    assert hub.publish("nobody", ITEM, 1) == 0
    assert hub.stats()["published"] == 1


async def test_queue_is_bounded_and_drops_the_oldest() -> None:
    hub = Hub(maxsize=3)
    sub = hub.subscribe("u")
    for i in range(5):
        hub.publish("u", {"id": f"n{i}"}, i)
    assert sub.queue.qsize() == 3
    assert sub.take_dropped() == 2 and sub.take_dropped() == 0
    assert hub.stats()["dropped"] == 2
    got = [await sub.get(1) for _ in range(3)]
    assert [m[1]["id"] for m in got if not isinstance(m, type(CLOSED))] == ["n2", "n3", "n4"]


async def test_unsubscribe_forgets_the_user() -> None:
    hub = Hub()
    with hub.subscribe("u") as sub:
        assert hub.subscribers("u") == 1
    assert hub.subscribers() == 0 and hub.stats()["users"] == 0
    assert hub.publish("u", ITEM, 1) == 0
    assert sub.queue.empty()
    sub.close()  # twice is harmless
    assert hub.subscribers() == 0


async def test_close_ends_every_stream_even_a_full_one() -> None:
    hub = Hub(maxsize=2)
    full, idle = hub.subscribe("u"), hub.subscribe("v")
    for i in range(2):
        hub.publish("u", {"id": str(i)}, i)
    closed: list[bool] = []
    forget = hub.on_close(lambda: closed.append(True))
    hub.close()
    assert closed == [True]
    assert await idle.get(1) is CLOSED
    assert hub.publish("u", {"id": "late"}, 9) == 0  # a closed hub takes nothing
    # the oldest item made room for the end of the stream, which is never dropped
    assert list(full.queue._queue)[-1] is CLOSED  # type: ignore[attr-defined]
    for i in range(3):
        full.offer(("notification", {"id": f"late{i}"}))
        assert CLOSED in list(full.queue._queue)  # type: ignore[attr-defined]
    assert await hub.subscribe("w").get(1) is CLOSED  # subscribing to a closed hub
    forget()
    hub.reopen()
    assert hub.closed is False


def test_sse_wire_format() -> None:
    assert sse("unread", {"unread": 2}) == b'event: unread\ndata: {"unread":2}\n\n'
    assert sse("notification", {"t": "a\nb"}, "n1") == (
        b'id: n1\nevent: notification\ndata: {"t":"a\\nb"}\n\n'
    )


# --- the stream, served --------------------------------------------------------------


async def read_event(resp: Any, timeout: float = 5) -> tuple[str, Any]:
    """The next event (comments skipped) as (event name, decoded data)."""
    name, data = "message", None
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), timeout)).decode()
        if not line:
            raise EOFError("stream ended")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = orjson.loads(line[6:])
        elif line == "" and data is not None:
            return name, data


@pytest.fixture
async def stream_client() -> AsyncIterator[TestClient[Any, Any]]:
    boxes: dict[str, Any] = {
        "u1": {"items": [{**ITEM, "id": "n2"}, ITEM], "unread": 2},
    }
    owner = {"local": True}
    config = realtime.StreamConfig(
        read_inbox=boxes.get,
        still_owner=lambda user_id: owner["local"],
        poll_s=0.05,
        keepalive_s=0.1,
        owner_check_s=0.1,
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        return await realtime.serve_stream(request, request.query["user"])

    webapp = web.Application()
    webapp.router.add_get("/stream", handler)
    webapp[OWNER] = owner
    realtime.install(webapp, config)
    try:
        async with TestClient(TestServer(webapp)) as client:
            yield client
    finally:
        realtime.hub.reopen()  # on_shutdown closed the process-wide hub


async def test_stream_sends_unread_then_new_items_and_cleans_up(
    stream_client: TestClient[Any, Any],
) -> None:
    resp = await stream_client.get("/stream", params={"user": "u1"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert await read_event(resp) == ("unread", {"user_id": "u1", "unread": 2})
    assert realtime.hub.subscribers("u1") == 1
    realtime.hub.publish("u1", {**ITEM, "id": "n3"}, 3)
    name, data = await read_event(resp)
    assert name == "notification" and data["id"] == "n3" and data["unread"] == 3
    # keep-alive comments flow while nothing happens
    line = b""
    while not line.startswith(b":"):
        line = await asyncio.wait_for(resp.content.readline(), 5)
    assert line == b": keep-alive\n"
    resp.close()
    for _ in range(100):
        if realtime.hub.subscribers("u1") == 0:
            break
        await asyncio.sleep(0.05)
    assert realtime.hub.subscribers("u1") == 0


async def test_stream_replays_items_after_last_event_id(
    stream_client: TestClient[Any, Any],
) -> None:
    resp = await stream_client.get("/stream", params={"user": "u1"},
                                   headers={"Last-Event-ID": "n1"})
    assert (await read_event(resp))[0] == "unread"
    name, data = await read_event(resp)
    assert (name, data["id"], data["unread"]) == ("notification", "n2", 2)
    resp.close()


async def test_stream_ends_when_the_partition_moves_or_the_server_stops(
    stream_client: TestClient[Any, Any],
) -> None:
    resp = await stream_client.get("/stream", params={"user": "u1"})
    assert (await read_event(resp))[0] == "unread"
    stream_client.app[OWNER]["local"] = False
    assert (await read_event(resp))[0] == "reconnect"
    with pytest.raises(EOFError):
        await read_event(resp)
    stream_client.app[OWNER]["local"] = True
    resp = await stream_client.get("/stream", params={"user": "u1"})
    assert (await read_event(resp))[0] == "unread"
    realtime.hub.close()  # what on_shutdown does
    try:
        with pytest.raises(EOFError):
            await read_event(resp)
    finally:
        realtime.hub.reopen()


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Events as the SSE spec (and schemathesis) reads them: fields of each block,
    ``retry`` as an integer, comments dropped."""
    events = []
    for block in raw.decode().split("\n\n"):
        event: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = int(value) if name == "retry" else value
        if "data" in event:
            events.append(event)
    return events


def check_event(event: dict[str, Any]) -> None:
    """``event`` against the stream's documented schema, its JSON data included."""
    components = api.openapi_document()["components"]

    def validate(schema: dict[str, Any], value: Any) -> None:
        # The document's components at the root, so "#/components/..." resolves.
        Draft202012Validator({**schema, "components": components}).validate(value)

    validate(realtime.STREAM_EVENT, event)
    [branch] = [b for b in realtime.STREAM_EVENT["oneOf"]
                if b["properties"]["event"]["const"] == event["event"]]
    validate(branch["properties"]["data"]["contentSchema"], orjson.loads(event["data"]))


async def test_the_stream_matches_its_documented_schema(
    stream_client: TestClient[Any, Any],
) -> None:
    """What schemathesis checks on a live worker: every event the stream sends."""
    resp = await stream_client.get("/stream", params={"user": "u1"},
                                   headers={"Last-Event-ID": "n1"})
    stream_client.app[OWNER]["local"] = False  # ends it with event: reconnect
    raw = await asyncio.wait_for(resp.read(), 5)
    raw += sse("dropped", {"dropped": 3})
    events = parse_sse(raw)
    assert [e["event"] for e in events] == ["unread", "notification", "reconnect", "dropped"]
    assert events[0]["retry"] == realtime.RETRY_MS and events[1]["id"] == "n2"
    for event in events:
        check_event(event)
    with pytest.raises(ValidationError):  # the check can fail
        check_event({"event": "unread", "data": '{"user_id": "u1", "unread": -1}'})


# --- the in-app agent feeds the hub ---------------------------------------------------


async def test_deliver_inapp_publishes_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    async def record(
        nid: str, updates: list[dict[str, Any]], content: Any = None, **kw: Any
    ) -> None:
        return None

    monkeypatch.setattr(statuses, "publish_status", record)
    user = f"rt-{uuid.uuid4().hex[:8]}"
    with realtime.hub.subscribe(user) as sub:
        async with app_agent("agent.inapp").test_context() as agent:
            for nid in ("a", "b", "a"):  # the repeat is idempotent: no second event
                d = Delivery(notification_id=f"{user}-{nid}", event_id=nid, user_id=user,
                             channel="inapp", title=f"t {nid}", body="b")
                await agent.put(d.dumps(), key=user.encode())
            got = [await sub.get(5) for _ in range(2)]
            assert [(m[1]["title"], m[1]["unread"]) for m in got  # type: ignore[index]
                    ] == [("t a", 1), ("t b", 2)]
            assert await sub.get(0.2) is None


# --- the console's figures ----------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert console.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert console.histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert console.histogram_quantile(0.5, []) is None
    assert console.histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 5.0)]) == 1.0


def test_status_scan_and_cluster_sum() -> None:
    now = 1000.0
    docs = [
        {"p": 0, "channels": {
            "email": {"status": "sent", "ts": 990.0, "latency_ms": 40.0,
                      "history": [{"status": "queued", "ts": 989.0},
                                  {"status": "sent", "ts": 990.0}]},
            "sms": {"status": "failed", "ts": 995.0, "history": [{"status": "failed",
                                                                   "ts": 995.0}]}}},
        {"p": 1, "channels": {"email": {"status": "sent", "ts": 10.0, "latency_ms": 5.0}}},
        {"p": 3, "channels": {"email": {"status": "queued", "ts": 999.0}}},  # not ours
    ]
    scanned = console.scan_status(docs, {0, 1}, now, 60)
    assert scanned["email"]["states"] == {"sent": 2}
    assert scanned["email"]["window"] == {"queued": 1, "sent": 1}
    assert scanned["sms"]["window"] == {"failed": 1}
    worker = {"channels": {
        name: {"states": ch["states"], "window": ch["window"],
               "rate_per_s": ch["window"].get("sent", 0) / 60,
               "buckets": [[le if math.isfinite(le) else "inf", v]
                           for le, v in ch["buckets"].items()],
               "latency_sum_s": ch["latency_sum_s"]}
        for name, ch in scanned.items()}}
    total = console.summarize([worker, worker], 60)
    assert total["sent"] == 2 and total["failed"] == 2
    assert total["channels"]["email"]["states"] == {"sent": 4}
    assert total["throughput_per_s"] == pytest.approx(2 / 60, abs=1e-3)
    lat = total["channels"]["email"]["latency_ms"]
    assert lat["count"] == 2 and lat["mean"] == pytest.approx(40.0)
    assert 25 <= lat["p50"] <= 50


def test_counter_sampler_baseline() -> None:
    s = console.Sampler(keep_s=100)
    for t in (0.0, 5.0, 10.0, 15.0):
        s.samples.append(console.CounterSample(t, {}, {}, {}))
    base = s.baseline(16.0, 10.0)
    assert base is not None and base.at == 5.0
    oldest = s.baseline(16.0, 60.0)
    assert oldest is not None and oldest.at == 0.0
    assert console.read_counters() is not None  # notifyd.metrics is readable
