"""The loops agents run: bind log context per record, never let one record kill them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import structlog
from faust.streams import Stream
from faust.types import EventT, StreamT

from notifyd.stream.handlers.deadletter import dead_letter_failure, hold
from notifyd.stream.tables import current_event

log = structlog.stdlib.get_logger("notifyd.stream.agents")

Handler = Callable[[EventT[Any]], Awaitable[None]]


async def handle_one(ev: EventT[Any], handler: Handler) -> None:
    """Run ``handler`` on one record; whatever it raises ends in a dead letter.

    A bug or an outage while handling one record must neither stop the partition nor
    lose the record: it goes to its dead-letter topic with ``internal_error: <Type>:
    <message>`` and its coordinates (``handlers.deadletter.dead_letter_failure``), which returns
    only once the broker has it.  Cancelled (the worker stops) before the outcome is
    written, the record is held unacked and handled again after the restart.
    """
    msg = ev.message
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        topic=msg.topic, partition=msg.partition, offset=msg.offset
    )
    try:
        await handler(ev)
    except asyncio.CancelledError:
        hold(ev)
        raise
    except Exception as exc:
        log.exception("agent.record_failed")
        await dead_letter_failure(ev, exc)
    finally:
        structlog.contextvars.clear_contextvars()


async def run_events(stream: StreamT[Any], handler: Handler) -> AsyncIterable[None]:
    """One record at a time, in order (Faust acks each when the next is taken)."""
    async for ev in stream.events():
        await handle_one(ev, handler)
        yield None


class KeyedSlots:
    """Up to ``limit`` jobs running, one after another per key.

    What a channel keeps in flight, whether Faust's stream feeds it
    (:func:`run_events_concurrently`) or a batch lane (``notifyd.stream.lanes``): one
    slow recipient no longer holds up the whole channel, and jobs of one key (a user)
    run in order, so a user's notifications keep their order and two copies of one
    delivery never race past the ledger.  Up to ``room`` jobs (default twice ``limit``)
    may be submitted and not finished: :meth:`submit` waits for room.  A job takes a
    slot only once the job before it of its key is done, so a slot is never held by a
    job waiting for another.
    """

    def __init__(self, limit: int, drain_s: float = 10.0, room: int | None = None) -> None:
        self._slots = asyncio.Semaphore(max(1, limit))
        self._room = asyncio.Semaphore(room or 2 * max(1, limit))
        self._tails: dict[Any, asyncio.Task[None]] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self.drain_s = drain_s

    def has_room(self) -> bool:
        """:meth:`submit` would not wait now (nor pass one that waits)."""
        return not self._room.locked()

    async def submit(
        self, key: Any, job: Callable[[], Awaitable[None]],
        done: Callable[[], None] | None = None,
    ) -> None:
        """Start ``job`` once there is room, to run after the last job of ``key`` when
        a slot is free; ``done`` runs when it ended, however it ended."""
        await self._room.acquire()
        task = asyncio.create_task(self._run(key, self._tails.get(key), job, done))
        self._tails[key] = task
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run(
        self, key: Any, before: asyncio.Task[None] | None, job: Callable[[], Awaitable[None]],
        done: Callable[[], None] | None,
    ) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])  # never raises
            async with self._slots:
                await job()
        finally:
            self._room.release()
            if self._tails.get(key) is asyncio.current_task():
                del self._tails[key]
            if done is not None:
                done()

    async def drain(self) -> None:
        """Stopping: let in-flight sends finish (an interrupted send is re-sent after the
        restart under the same idempotency key), then cancel the stragglers."""
        pending = set(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.drain_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)


async def run_events_concurrently(
    stream: StreamT[Any], handler: Handler, limit: int, drain_s: float = 10.0
) -> None:
    """Up to ``limit`` records in flight, in order per message key (user id): a
    :class:`KeyedSlots` fed by Faust's stream.

    Each record is acked when its handler is done; Faust commits only the acked *prefix*
    of a partition (``Consumer._new_offset`` stops at the first gap), so a crash
    re-delivers whatever was in flight and never skips it.
    """
    assert isinstance(stream, Stream)
    stream.enable_acks = False  # acked below, when handled
    slots = KeyedSlots(limit, drain_s)

    async def one(ev: EventT[Any]) -> None:
        # Tables are read and written in the partition of the *current* event.
        with current_event(ev):
            await handle_one(ev, handler)  # catches everything but cancellation
        await stream.ack(ev)  # not on cancellation: re-consumed after a restart

    try:
        async for ev in stream.events():
            await slots.submit((ev.message.tp, ev.message.key), functools.partial(one, ev))
    finally:
        await slots.drain()
