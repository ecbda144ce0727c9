"""Issue "Realtime inbox": GET /api/v1/notifications/stream on Apache Kafka + Redis with
two workers.

A user opens the stream on the worker owning their partition and on the other one
(which relays it from the owner); events produced on the events topic reach both
clients as they are delivered, with the unread count.  Disconnected clients leave no
subscription or relay behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from notifyd.model.records import notification_id_for
from notifyd.stream.topics import partition_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, http_json, new_id, signup, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(scope="module")
def rt(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("realtime")
    st = start_stack(kafka.url, kafka.bootstrap, root, "realtime", sinks, workers=2,
                     redis_url=redis.url)
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


def assignment(stack: Stack) -> list[set[int]] | None:
    """Each worker's partitions once the group settled (both own some, all covered)."""
    parts: list[set[int]] = []
    for w in stack.workers:
        status, body = w.get("/readyz")
        if status != 200:
            return None
        parts.append(set(body["partitions"]))
    if not all(parts) or set().union(*parts) != set(range(PARTITIONS)):
        return None
    if sum(len(p) for p in parts) != PARTITIONS:
        return None
    return parts


async def next_event(resp: aiohttp.ClientResponse, timeout: float = 30) -> tuple[str, Any, str]:
    """The next Server-Sent Event: (event, data, id); comments are skipped."""
    name, data, event_id = "message", None, ""

    async def read() -> tuple[str, Any, str]:
        nonlocal name, data, event_id
        while True:
            raw = await resp.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
            elif not line and data is not None:
                return name, data, event_id

    return await asyncio.wait_for(read(), timeout)


def local_realtime(stack: Stack, i: int) -> dict[str, Any]:
    status, body = stack.workers[i].get("/api/v1/admin/stats?scope=local",
                                        stack.worker.op_headers)
    assert status == 200, body
    realtime: dict[str, Any] = body["workers"][0]["realtime"]
    return realtime


async def user_on_one_worker(rt: Stack) -> tuple[str, str, int, int]:
    """A new user with a token, the index of the worker owning the user's partition
    and of the other worker (once the assignment has settled)."""
    parts = await wait_for(lambda: assignment(rt), timeout=90, what="a settled assignment")
    user_id, token = signup(rt, "rt")
    owner = next(i for i, p in enumerate(parts) if partition_for(user_id, PARTITIONS) in p)
    return user_id, token, owner, 1 - owner


async def test_stream_on_owner_and_relayed_by_the_other_worker(rt: Stack) -> None:
    user_id, token, owner, other = await user_on_one_worker(rt)
    auth = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/notifications/stream"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        # Not logged in: the usual JSON 401 on both workers, relayed or not.
        for w in rt.workers:
            async with session.get(w.url + url) as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == "not_authenticated"
        # A request already routed once is never routed again.
        async with session.get(rt.workers[other].url + url,
                               headers={**auth, "X-Notifyd-Routed-By": "elsewhere"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "rebalancing"

        direct = await session.get(rt.workers[owner].url + url, headers=auth)
        relayed = await session.get(rt.workers[other].url + url, headers=auth)
        try:
            for resp in (direct, relayed):
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert await next_event(resp) == ("unread", {"user_id": user_id,
                                                             "unread": 0}, "")
            assert "X-Notifyd-Served-By" not in direct.headers
            assert relayed.headers["X-Notifyd-Served-By"].endswith(
                f":{rt.workers[owner].web_port}")
            # Both subscriptions live on the owner; the other worker holds one relay.
            assert local_realtime(rt, owner)["subscribers"] == 2
            assert local_realtime(rt, other)["proxied"] == 1

            events = [
                {"event_id": new_id("rt-ev"), "user_id": user_id, "title": f"Hello {n}",
                 "body": "live", "channels": ["inapp"], "category": "realtime"}
                for n in (1, 2)
            ]
            await rt.send_events(*events)
            for resp in (direct, relayed):
                for n, ev in enumerate(events, start=1):
                    name, data, event_id = await next_event(resp)
                    nid = notification_id_for(user_id, ev["event_id"])
                    assert (name, event_id) == ("notification", nid)
                    assert data["id"] == nid and data["title"] == ev["title"]
                    assert data["body"] == "live" and data["category"] == "realtime"
                    assert data["read"] is False and data["unread"] == n

            # The inbox agrees with what was streamed.
            status, page = http_json("GET", f"{rt.workers[other].url}/api/v1/notifications",
                                     headers=auth)
            assert status == 200 and page["unread"] == 2
        finally:
            direct.close()
            relayed.close()

    # Gone clients leave nothing behind on either worker.
    def cleaned() -> bool:
        return (local_realtime(rt, owner)["subscribers"] == 0
                and local_realtime(rt, other)["proxied"] == 0
                and local_realtime(rt, other)["subscribers"] == 0)

    await wait_for(cleaned, timeout=30, what="stream clean-up")


async def test_reconnect_replays_what_was_missed(rt: Stack) -> None:
    await wait_for(lambda: assignment(rt), timeout=90, what="a settled assignment")
    user_id, token = signup(rt, "rt")
    auth = {"Authorization": f"Bearer {token}"}
    first = {"event_id": new_id("rt-ev"), "user_id": user_id, "title": "first",
             "body": "b", "channels": ["inapp"]}
    await rt.send_events(first)
    await wait_for(lambda: rt.worker.table("inbox", user_id), what="first in the inbox")
    missed = {**first, "event_id": new_id("rt-ev"), "title": "missed"}
    await rt.send_events(missed)
    await wait_for(
        lambda: len((rt.worker.table("inbox", user_id) or {"items": []})["items"]) == 2,
        what="missed in the inbox",
    )
    # EventSource sends the id of the last event it saw when it reconnects.
    async with aiohttp.ClientSession() as session:
        for w in rt.workers:
            async with session.get(
                w.url + "/api/v1/notifications/stream",
                headers={**auth, "Last-Event-ID": notification_id_for(user_id, first["event_id"])},
            ) as resp:
                assert (await next_event(resp))[:2] == ("unread", {"user_id": user_id,
                                                                   "unread": 2})
                name, data, event_id = await next_event(resp)
                assert (name, data["title"], data["unread"]) == ("notification", "missed", 2)
                assert event_id == notification_id_for(user_id, missed["event_id"])


async def test_stats_add_up_both_workers(rt: Stack) -> None:
    await wait_for(lambda: assignment(rt), timeout=90, what="a settled assignment")
    for w in rt.workers:
        status, body = w.get("/api/v1/admin/stats?window=300", w.op_headers)
        assert status == 200, body
        assert len(body["workers"]) == 2 and not any("error" in x for x in body["workers"])
        assert body["window_s"] == 300
        assert set(body["latency_ms"]) >= {"p50", "p95", "p99", "count"}
    # user tokens are refused
    _, token = signup(rt, "rt")
    status, body = rt.worker.get("/api/v1/admin/stats",
                                 {"Authorization": f"Bearer {token}"})
    assert status == 403 and body["code"] == "operator_required"


async def test_streams_end_promptly_when_a_worker_stops(rt: Stack) -> None:
    """Last in this module: it stops one worker.  The relayed stream ends at once (the
    client reconnects elsewhere); the owner's stream survives the rebalance."""
    user_id, token, owner, other = await user_on_one_worker(rt)
    auth = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/notifications/stream"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        direct = await session.get(rt.workers[owner].url + url, headers=auth)
        relayed = await session.get(rt.workers[other].url + url, headers=auth)
        try:
            for resp in (direct, relayed):
                assert (await next_event(resp))[0] == "unread"
            started = asyncio.get_running_loop().time()
            await asyncio.to_thread(rt.workers[other].stop)
            # No waiting out aiohttp's 60 s handler shutdown timeout for open streams.
            assert asyncio.get_running_loop().time() - started < 30
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await next_event(relayed, timeout=10)
            # The owner keeps the user (it now has every partition) and keeps streaming.
            def settled() -> bool:
                status, body = rt.workers[owner].get("/readyz")
                return status == 200 and len(body["partitions"]) == PARTITIONS

            await wait_for(settled, timeout=90, what="the owner taking every partition")
            ev = {"event_id": new_id("rt-ev"), "user_id": user_id, "title": "after",
                  "body": "rebalance", "channels": ["inapp"]}
            await rt.send_events(ev)
            name, data, _ = await next_event(direct, timeout=60)
            assert (name, data["title"]) == ("notification", "after")
        finally:
            direct.close()
            relayed.close()
