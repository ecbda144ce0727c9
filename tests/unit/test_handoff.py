"""Deliveries handed from a source lane to a channel lane in the worker
(``notifyd.stream.handoff``, ``notifyd.stream.lanes``): when a delivery may skip its topic,
that it keeps its place behind the user's records in the topic, and that the source
record is acked only once what it handed off is done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from faust.events import Event
from faust.types import TP, Message

from notifyd.stream import handoff
from notifyd.stream.app import app  # the current (this test's)
from notifyd.stream.lanes import LANE_HEADER, Batch, Lane, Lanes

DELIVER = "t.deliver.webhook"


def _event(tp: TP, offset: int, key: bytes, headers: list[tuple[str, bytes]] | None = None
           ) -> Any:
    m = Message(tp.topic, tp.partition, offset, 0.0, 0, headers or [], key, b"{}", None, tp=tp)
    return Event(app, key, b"{}", m.headers, m)


class Acks:
    def __init__(self) -> None:
        self.booked: list[tuple[str, int]] = []

    def __call__(self, tp: TP, offset: int, generation: int) -> bool:
        self.booked.append((tp.topic, offset))
        return True


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.001)  # polling progress, not a fixed wait
    raise AssertionError("condition never held")


class Running:
    """Lanes run as the worker runs them (ack booked by ``Acks``), stopped at exit."""

    def __init__(self, *lanes: Lane) -> None:
        self.lanes, self.acks, self.tasks = lanes, Acks(), list[asyncio.Task[None]]()

    async def __aenter__(self) -> Running:
        space = asyncio.Event()
        self.tasks = [asyncio.create_task(lane.run(self.acks, lambda: 1, space))
                      for lane in self.lanes]
        await until(lambda: all(lane._wakeup is not None for lane in self.lanes))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def channel(handle: Callable[[Any], Awaitable[None]], concurrency: int = 4) -> Lane:
    return Lane(name="deliver.webhook", topics=frozenset({DELIVER}), handle=handle,
                concurrency=concurrency, drain_s=0.01)


@pytest.fixture(autouse=True)
def generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "consumer_generation_id", 7, raising=False)


async def test_a_partition_takes_hand_offs_once_the_lane_took_up_a_record_of_ours() -> None:
    handled: list[tuple[bytes, int]] = []

    async def handle(ev: Any) -> None:
        handled.append((ev.message.key, ev.message.offset))

    lane = channel(handle)
    lanes = Lanes(app, [lane])
    tp = TP(DELIVER, 2)
    async with Running(lane):
        with handoff.holding() as holds:
            # A previous owner may have left records: nothing skips the topic yet.
            assert not await lanes.offer(DELIVER, 2, b"u1", b"{}")
            headers = lanes.topic_headers(DELIVER, 2, b"u1")
            assert headers == [(LANE_HEADER, f"{lanes.token}:7".encode())]
            assert not await lanes.offer(DELIVER, 2, b"u2", b"{}")
            # The lane takes up our record: everything before it is taken up too.
            lane.put(Batch(tp, 1, [_event(tp, 40, b"u1", headers)]))
            await until(lambda: tp in lane._synced)
            assert await lanes.offer(DELIVER, 2, b"u2", b"{}")
            assert len(holds) == 1
            assert await holds[0] is True
            # Another partition has not been taken up yet.
            assert not await lanes.offer(DELIVER, 3, b"u2", b"{}")
        await until(lambda: len(handled) == 2)
    assert handled == [(b"u1", 40), (b"u2", -1)]


async def test_a_user_with_a_delivery_still_in_the_topic_gets_the_next_through_it_too() -> None:
    handled: list[bytes] = []

    async def handle(ev: Any) -> None:
        handled.append(ev.message.key)

    lane = channel(handle)
    lanes = Lanes(app, [lane])
    tp = TP(DELIVER, 2)
    async with Running(lane):
        first = lanes.topic_headers(DELIVER, 2, b"u0")
        lane.put(Batch(tp, 1, [_event(tp, 1, b"u0", first)]))
        await until(lambda: tp in lane._synced)
        with handoff.holding():
            queued = lanes.topic_headers(DELIVER, 2, b"u1")  # u1's lane was busy, say
            assert not await lanes.offer(DELIVER, 2, b"u1", b"{}")  # behind it, by topic
            assert await lanes.offer(DELIVER, 2, b"u2", b"{}")  # others are not held up
            lane.put(Batch(tp, 1, [_event(tp, 2, b"u1", queued)]))
            await until(lambda: (tp, b"u1") not in lane._pending)
            assert await lanes.offer(DELIVER, 2, b"u1", b"{}")
        await until(lambda: len(handled) == 4)
    assert handled.index(b"u1") < len(handled) - 1 and handled[-1] in (b"u1", b"u2")


async def test_nothing_is_handed_off_without_a_source_record_to_hold() -> None:
    lane = channel(lambda ev: asyncio.sleep(0))
    lanes = Lanes(app, [lane])
    lane._synced.add(TP(DELIVER, 2))
    async with Running(lane):
        assert not await lanes.offer(DELIVER, 2, b"u1", b"{}")  # e.g. the scheduler's loop
        with handoff.holding():
            assert not await lanes.offer("t.deliver.sms", 2, b"u1", b"{}")  # no such lane
            assert await lanes.offer(DELIVER, 2, b"u1", b"{}")


async def test_the_source_record_is_acked_once_its_hand_off_is_done() -> None:
    gate = asyncio.Event()
    delivered: list[int] = []

    async def deliver(ev: Any) -> None:
        await gate.wait()  # the provider is still answering
        delivered.append(ev.message.offset)

    chan = channel(deliver)
    src_tp = TP("t.events", 2)
    lanes = Lanes(app, [chan])

    async def ingest(ev: Any) -> None:
        assert await lanes.offer(DELIVER, 2, ev.message.key, b"{}")

    src = Lane(name="ingest", topics=frozenset({src_tp.topic}), handle=ingest,
               holds_sources=True)
    chan._synced.add(TP(DELIVER, 2))
    async with Running(src, chan) as run:
        src.put(Batch(src_tp, 1, [_event(src_tp, 5, b"u1"), _event(src_tp, 6, b"u2")]))
        await until(lambda: len(src._held) == 2)  # both handled, neither acked
        assert run.acks.booked == [] and src.lowest_in_flight(src_tp) == 5
        gate.set()
        await until(lambda: len(run.acks.booked) == 2)
    assert sorted(run.acks.booked) == [("t.events", 5), ("t.events", 6)]
    assert delivered == [-1, -1] and src.lowest_in_flight(src_tp) is None


async def test_a_hand_off_cut_short_by_a_stop_leaves_its_source_unacked() -> None:
    started = asyncio.Event()

    async def deliver(ev: Any) -> None:
        started.set()
        await asyncio.Event().wait()  # a provider call that never ends

    chan = channel(deliver)
    src_tp = TP("t.events", 2)
    lanes = Lanes(app, [chan])

    async def ingest(ev: Any) -> None:
        assert await lanes.offer(DELIVER, 2, ev.message.key, b"{}")

    src = Lane(name="ingest", topics=frozenset({src_tp.topic}), handle=ingest,
               holds_sources=True)
    chan._synced.add(TP(DELIVER, 2))
    run = Running(src, chan)
    async with run:
        src.put(Batch(src_tp, 1, [_event(src_tp, 5, b"u1")]))
        await until(started.is_set)
    assert run.acks.booked == []  # handled again after the restart; the ledger dedupes


async def test_a_slow_channel_never_holds_its_source_up() -> None:
    never = asyncio.Event()

    async def stuck(ev: Any) -> None:
        await never.wait()

    lane = channel(stuck, concurrency=2)  # room for 4 jobs
    lanes = Lanes(app, [lane])
    lane._synced.add(TP(DELIVER, 2))
    async with Running(lane):
        with handoff.holding() as holds:
            for user in (b"u1", b"u2", b"u3", b"u4"):
                assert await lanes.offer(DELIVER, 2, user, b"{}")
            # No room: the topic takes it at once, without waiting for room.
            assert not lane.can_take(TP(DELIVER, 2), b"u5")
            offer = lanes.offer(DELIVER, 2, b"u5", b"{}")
            with pytest.raises(StopIteration) as finished:
                offer.send(None)  # returns without suspending once: it never waits
            assert finished.value.value is False
            assert len(holds) == 4


async def test_a_new_generation_forgets_what_was_pending() -> None:
    lane = channel(lambda ev: asyncio.sleep(0))
    lanes = Lanes(app, [lane])
    tp = TP(DELIVER, 2)
    lanes.topic_headers(DELIVER, 2, b"u1")
    lane._synced.add(tp)
    assert (tp, b"u1") in lane._pending
    lane.forget_order([tp])  # revoked
    assert not lane._pending and tp not in lane._synced
    lanes.topic_headers(DELIVER, 2, b"u1")
    app.consumer_generation_id = 8  # type: ignore[misc]
    lanes.topic_headers(DELIVER, 2, b"u2")  # marked with the new generation
    assert list(lane._pending) == [(tp, b"u2")]
