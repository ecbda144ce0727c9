"""The realtime in-app inbox: ``GET /api/v1/notifications/stream`` (Server-Sent Events).

The inbox of a user lives on the worker owning the user's partition, and the in-app
channel agent of that worker writes it (:func:`notifyd.stream.handlers.inapp.deliver_inapp`), which
also publishes each new item to the in-process :data:`hub`.  A stream opened on that
worker subscribes to the hub; one opened on another worker is proxied, streaming, to
the owner (never twice: a request already routed once gets ``503 rebalancing``).

The stream sends, in this order::

    retry: 2000
    event: unread          data: {"user_id", "unread"}        on connect
    event: notification    data: {<inbox item>, "unread"}     one per new item (id: item id)
    event: dropped         data: {"dropped": n}               this client was too slow
    : keep-alive                                              every KEEPALIVE_S

and ends when the client goes, when the worker stops, or when the user's partition
moved to another worker (``event: reconnect`` first); EventSource reconnects by
itself, and a ``Last-Event-ID`` sent on reconnect replays the newer inbox items.

Slow clients cannot hold memory: every subscriber has a bounded queue and the oldest
event is dropped when it is full (the client is told with ``event: dropped`` and can
reload the inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from notifyd.errors import ServiceUnavailable
from notifyd.model.records import dumps
from notifyd.stream.app import app
from notifyd.stream.handlers.inapp import on_new_inbox_item
from notifyd.stream.tables import inbox
from notifyd.web.http import caller
from notifyd.web.openapi import Call, Resp
from notifyd.web.registry import registry
from notifyd.web.routing import (
    HTTP_CLIENT,
    forward_plan,
    is_local,
    owner_of,
    owner_unreachable,
    relay_whole,
)

log = structlog.stdlib.get_logger("notifyd.web.realtime")

#: Events a subscriber may have waiting before the oldest is dropped.
QUEUE_SIZE = 100
#: A comment line is written when nothing else was for this long (proxies and load
#: balancers close idle connections; a dead client is noticed on the next write).
KEEPALIVE_S = 15.0
#: How often a waiting stream checks that its client is still there, that the worker
#: is not stopping, and (every OWNER_CHECK_S) that it still owns the user.
POLL_S = 1.0
OWNER_CHECK_S = 5.0
#: EventSource's reconnection delay, sent as ``retry:``.
RETRY_MS = 2000
#: How many inbox items a ``Last-Event-ID`` may replay.
REPLAY_MAX = 50


def _still_owner(user_id: str) -> bool:
    if app.rebalancing:
        return True  # undecided; look again later
    try:
        return is_local(owner_of("inbox", user_id))
    except ServiceUnavailable:
        return True


@dataclass(frozen=True)
class StreamConfig:
    """Where a stream reads the inbox and its ownership, and how often it wakes, writes
    a keep-alive and re-checks ownership (:func:`install`; a test passes its own)."""

    #: The inbox document of a user (None: empty), read on this worker.
    read_inbox: Callable[[str], Any] = lambda user_id: inbox.get(user_id)
    #: Whether this worker still owns the user's partition.
    still_owner: Callable[[str], bool] = _still_owner
    poll_s: float = POLL_S
    keepalive_s: float = KEEPALIVE_S
    owner_check_s: float = OWNER_CHECK_S


STREAM_CONFIG: web.AppKey[StreamConfig] = web.AppKey("stream_config", StreamConfig)


class _Closed:
    """Sentinel: the hub is closing, end the stream."""


CLOSED = _Closed()
Message = tuple[str, dict[str, Any]] | _Closed


class Subscription:
    """One client's bounded mailbox on the hub."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, user_id: str, maxsize: int) -> None:
        self.hub = hub
        self.user_id = user_id
        self.id = next(self._ids)
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize)
        #: Events dropped since the last :meth:`take_dropped` (slow client).
        self.dropped = 0

    def offer(self, msg: Message) -> None:
        """Enqueue without waiting; a full queue loses its oldest event."""
        while True:
            try:
                self.queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                try:
                    old = self.queue.get_nowait()
                except asyncio.QueueEmpty:  # pragma: no cover - maxsize >= 1
                    continue
                if isinstance(old, _Closed):  # never lose the end of the stream
                    with contextlib.suppress(asyncio.QueueFull):
                        self.queue.put_nowait(old)
                    return
                self.dropped += 1

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if self.hub.closed and self.queue.empty():
            return CLOSED
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n

    def close(self) -> None:
        self.hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """user_id -> subscriptions of this process; fed by the in-app channel agent."""

    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self.maxsize = maxsize
        self._subs: dict[str, set[Subscription]] = {}
        self._on_close: set[Callable[[], None]] = set()
        self.closed = False
        self.published = 0
        self.dropped = 0

    def subscribe(self, user_id: str) -> Subscription:
        sub = Subscription(self, user_id, self.maxsize)
        if self.closed:
            sub.offer(CLOSED)
        self._subs.setdefault(user_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.user_id]

    def publish(self, user_id: str, item: dict[str, Any], unread: int) -> int:
        """Fan a new inbox item out to the user's subscribers (never blocks).

        Returns how many subscribers got it.  Safe to call from any code running on
        the worker's event loop, with or without subscribers.
        """
        subs = self._subs.get(user_id)
        if not subs or self.closed:
            return 0
        data = {**item, "unread": unread}
        for sub in subs:
            before = sub.dropped
            sub.offer(("notification", data))
            self.dropped += sub.dropped - before
        self.published += 1
        return len(subs)

    def subscribers(self, user_id: str | None = None) -> int:
        if user_id is not None:
            return len(self._subs.get(user_id, ()))
        return sum(len(s) for s in self._subs.values())

    def on_close(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` when the hub closes (until the returned function is called)."""
        self._on_close.add(fn)
        return lambda: self._on_close.discard(fn)

    def close(self) -> None:
        """End every stream (the web server is stopping)."""
        self.closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.offer(CLOSED)
        for fn in list(self._on_close):
            with contextlib.suppress(Exception):
                fn()

    def reopen(self) -> None:
        self.closed = False

    def stats(self) -> dict[str, Any]:
        return {
            "subscribers": self.subscribers(),
            "users": len(self._subs),
            "proxied": len(self._on_close),
            "published": self.published,
            "dropped": self.dropped,
        }


#: The hub of this process (see :func:`notifyd.stream.handlers.inapp.deliver_inapp`).
hub = Hub()


# --- the wire format -------------------------------------------------------------------


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One Server-Sent Event; ``data`` as JSON on one line (JSON has no raw newlines)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\n".encode() + b"data: " + dumps(data) + b"\n\n"


KEEPALIVE = b": keep-alive\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _replay(
    config: StreamConfig, user_id: str, last_id: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Inbox items newer than ``last_id`` (oldest first) and the unread count."""
    box = config.read_inbox(user_id) or {}
    unread = int(box.get("unread", 0))
    if not last_id:
        return [], unread
    newer: list[dict[str, Any]] = []
    for item in box.get("items", ()):
        if item.get("id") == last_id:
            return list(reversed(newer[:REPLAY_MAX])), unread
        if not item.get("archived"):
            newer.append(item)
    return [], unread  # unknown id (deleted, or another worker's stream): no replay


async def serve_stream(request: web.Request, user_id: str) -> web.StreamResponse:
    """The stream of ``user_id``'s new inbox items, served by the partition owner."""
    config = request.app[STREAM_CONFIG]
    with hub.subscribe(user_id) as sub:  # before reading the inbox: nothing is missed
        replay, unread = _replay(config, user_id, request.headers.get("Last-Event-ID"))
        resp = web.StreamResponse(
            headers={**_SSE_HEADERS, "X-Notifyd-Worker": str(app.conf.canonical_url)}
        )
        await resp.prepare(request)
        log.info("stream.opened", user_id=user_id, subscribers=hub.subscribers(user_id))
        try:
            await resp.write(
                f"retry: {RETRY_MS}\n".encode()
                + sse("unread", {"user_id": user_id, "unread": unread})
                + b"".join(sse("notification", {**it, "unread": unread}, it["id"])
                           for it in replay)
            )
            last_write = last_owner_check = time.monotonic()
            while True:
                msg = await sub.get(config.poll_s)
                now = time.monotonic()
                if isinstance(msg, _Closed):
                    break
                if msg is None:
                    if _gone(request):
                        break
                    if now - last_owner_check >= config.owner_check_s:
                        last_owner_check = now
                        if not config.still_owner(user_id):
                            await resp.write(sse("reconnect", {"reason": "partition_moved"}))
                            break
                    if now - last_write >= config.keepalive_s:
                        await resp.write(KEEPALIVE)
                        last_write = now
                    continue
                out = b""
                dropped = sub.take_dropped()
                if dropped:
                    out += sse("dropped", {"dropped": dropped})
                event, data = msg
                out += sse(event, data, str(data.get("id") or "") or None)
                await resp.write(out)
                last_write = now
        except ConnectionError:  # the client went away mid-write
            pass
        finally:
            log.info("stream.closed", user_id=user_id)
    return resp


# --- proxying a stream to the owner ----------------------------------------------------


_COPY_FROM_OWNER = ("content-type", "cache-control", "x-accel-buffering", "x-notifyd-worker")


async def stream_route(
    request: web.Request, table_name: str, key: str
) -> web.StreamResponse | None:
    """Like :func:`notifyd.web.routing.route` but streaming: ``None`` if this worker
    owns ``key``, else the owner's answer relayed chunk by chunk as it arrives."""
    plan = forward_plan(request, table_name, key)
    if plan is None:
        return None
    owner, target, headers = plan
    session = request.app[HTTP_CLIENT]
    # No total timeout: the answer is open-ended (the session's default would cut it).
    timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_connect=3)
    try:
        upstream = await session.get(
            target, headers=headers, timeout=timeout, allow_redirects=False
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise owner_unreachable(owner, exc) from exc
    forget = hub.on_close(upstream.close)
    try:
        if upstream.status != 200 or upstream.content_type != "text/event-stream":
            return await relay_whole(upstream, owner)
        resp = web.StreamResponse(
            headers={
                **{k: v for k, v in upstream.headers.items() if k.lower() in _COPY_FROM_OWNER},
                "X-Notifyd-Served-By": str(owner),
            }
        )
        await resp.prepare(request)
        log.info("stream.proxied", owner=str(owner))
        try:
            async for chunk in _relay(request, upstream):
                await resp.write(chunk)
        except (ConnectionError, aiohttp.ClientError):
            pass  # either side went away: end the stream (the client reconnects)
        return resp
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise owner_unreachable(owner, exc, "failed") from exc
    finally:
        forget()
        upstream.close()  # a stream is never reused: close, do not pool


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse
) -> AsyncIterator[bytes]:
    """Chunks of ``upstream`` until it ends, the client goes or the hub closes."""
    poll_s = request.app[STREAM_CONFIG].poll_s
    while True:
        try:
            chunk = await asyncio.wait_for(upstream.content.readany(), poll_s)
        except TimeoutError:
            if _gone(request) or hub.closed:
                return
            continue
        if not chunk:  # the owner ended the stream
            return
        yield chunk


# --- the route -------------------------------------------------------------------------


_STREAM_DOC = """\
Server-Sent Events of the caller's in-app inbox. On connect: `event: unread` with
`{"user_id", "unread"}`; then `event: notification` (`id:` the item id) with the inbox
item plus `unread` for every new in-app notification as it is delivered, `: keep-alive`
comments every 15 s, and `event: dropped` `{"dropped": n}` if this client fell behind
(reload the inbox). Any worker answers (the stream is relayed from the owner of the
user's partition). The stream ends when the partition moves (`event: reconnect`) or
the worker stops; EventSource reconnects by itself, and `Last-Event-ID` replays the
newer inbox items."""


@registry.route(
    "GET", "/api/v1/notifications/stream", summary="My inbox, live (Server-Sent Events)",
    auth="user", tags=("notifications",), routed=True, description=_STREAM_DOC,
    responses={
        200: Resp("An event stream", {"type": "string"}, content_type="text/event-stream"),
    },
)
async def notification_stream(call: Call) -> web.StreamResponse:
    user_id = caller(call).user_id
    proxied = await stream_route(call.request, "inbox", user_id)
    if proxied is not None:
        return proxied
    return await serve_stream(call.request, user_id)


async def _close_streams(webapp: web.Application) -> None:
    hub.close()


async def _open_hub(webapp: web.Application) -> None:
    hub.reopen()


def install(webapp: web.Application, config: StreamConfig | None = None) -> None:
    """Streams of ``webapp`` read and wake as ``config`` says (default: this worker's
    inbox table, every POLL_S); they end when the web server shuts down (before it
    waits for handlers)."""
    webapp[STREAM_CONFIG] = config or StreamConfig()
    webapp.on_startup.append(_open_hub)
    webapp.on_shutdown.append(_close_streams)
    on_new_inbox_item(hub.publish)  # each new inbox item of this worker feeds the hub

