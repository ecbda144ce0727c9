"""Batch lanes (``notifyd.stream.lanes``): what a fetch hands them, when their offsets are
booked as acked, and the Faust internals they rely on (re-check on a Faust upgrade)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from faust.events import Event
from faust.transport.consumer import Consumer
from faust.types import TP, Message

from notifyd.stream import lanes as lanes_mod
from notifyd.stream.app import app, settings  # the current (this test's)
from notifyd.stream.lanes import Batch, Lane, Lanes
from tests.support.offsets import fresh_partition


def _event(tp: TP, offset: int, key: bytes = b"u1") -> Any:
    m = Message(tp.topic, tp.partition, offset, 0.0, 0, [], key, b"{}", None, tp=tp)
    return Event(app, key, b"{}", [], m)


@pytest.fixture
def tp(monkeypatch: pytest.MonkeyPatch) -> Iterator[TP]:
    """Partition 2 of the events topic, empty offset books, acks enabled, flow running."""
    monkeypatch.setattr(app.flow_control, "is_active", lambda: True)
    with fresh_partition(monkeypatch, 2) as t:
        yield t


class Acks:
    def __init__(self) -> None:
        self.booked: list[int] = []
        self.generation = 1

    def __call__(self, tp: TP, offset: int, generation: int) -> bool:
        if generation != self.generation:
            return False
        self.booked.append(offset)
        return True


async def _run_until(lane: Lane, acks: Acks, done: Any) -> None:
    space = asyncio.Event()
    task = asyncio.create_task(lane.run(acks, lambda: acks.generation, space))
    try:
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0.001)  # polling the lane's progress, not a fixed wait
        raise AssertionError("lane made no progress")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_concurrent_lane_keeps_each_keys_order_and_acks_only_handled_records(
    tp: TP,
) -> None:
    seen: list[tuple[bytes, int]] = []
    gate = asyncio.Event()

    async def handle(ev: Any) -> None:
        if ev.message.offset == 0:
            await gate.wait()  # the first of u1's records is slow
        seen.append((ev.message.key, ev.message.offset))

    lane = Lane(name="t", topics=frozenset({tp.topic}), handle=handle, concurrency=8)
    acks = Acks()
    keys = [b"u1", b"u2", b"u1", b"u3"]
    lane.put(Batch(tp, 1, [_event(tp, i, k) for i, k in enumerate(keys)]))
    assert lane.lowest_in_flight(tp) == 0

    def others_done() -> bool:
        if len(seen) == 2:
            gate.set()
        return len(seen) == 4

    await _run_until(lane, acks, others_done)
    # u2 and u3 went ahead of the slow record; u1's second waited for its first.
    assert seen[:2] == [(b"u2", 1), (b"u3", 3)]
    assert seen[2:] == [(b"u1", 0), (b"u1", 2)]
    assert sorted(acks.booked) == [0, 1, 2, 3]
    assert lane.lowest_in_flight(tp) is None and lane.accepting()


async def test_a_batch_from_an_earlier_generation_is_dropped_unhandled(tp: TP) -> None:
    handled: list[int] = []

    async def handle(ev: Any) -> None:
        handled.append(ev.message.offset)

    lane = Lane(name="t", topics=frozenset({tp.topic}), handle=handle)
    acks = Acks()
    lane.put(Batch(tp, 0, [_event(tp, 7)]))  # fetched before a rebalance
    lane.put(Batch(tp, 1, [_event(tp, 7)]))  # fetched again after Faust's seek
    await _run_until(lane, acks, lambda: acks.booked)
    assert handled == [7] and acks.booked == [7]


async def test_a_fold_lane_acks_the_whole_batch_after_the_fold(tp: TP) -> None:
    folded: list[list[int]] = []

    async def fold(events: Any) -> None:
        folded.append([ev.message.offset for ev in events])

    lane = Lane(name="t", topics=frozenset({tp.topic}), fold=fold)
    acks = Acks()
    lane.put(Batch(tp, 1, [_event(tp, i) for i in range(5)]))
    await _run_until(lane, acks, lambda: len(acks.booked) == 5)
    assert folded == [[0, 1, 2, 3, 4]]


async def test_prepare_sees_the_whole_batch_before_its_first_record_is_handled(
    tp: TP,
) -> None:
    order: list[str] = []

    @contextlib.contextmanager
    def prepare(events: Any) -> Iterator[None]:
        order.append("prepare " + ",".join(str(ev.message.offset) for ev in events))
        try:
            yield
        finally:
            order.append("end")

    async def handle(ev: Any) -> None:
        order.append(f"handle {ev.message.offset}")

    lane = Lane(name="t", topics=frozenset({tp.topic}), handle=handle, prepare=prepare)
    acks = Acks()
    lane.put(Batch(tp, 1, [_event(tp, i) for i in range(3)]))
    lane.put(Batch(tp, 1, [_event(tp, 3)]))
    await _run_until(lane, acks, lambda: len(acks.booked) == 4)
    assert order == ["prepare 0,1,2", "handle 0", "handle 1", "handle 2", "end",
                     "prepare 3", "handle 3", "end"]


async def test_a_prepared_batch_abandoned_midway_still_ends_its_preparation(tp: TP) -> None:
    ended = asyncio.Event()
    started = asyncio.Event()

    @contextlib.contextmanager
    def prepare(events: Any) -> Iterator[None]:
        try:
            yield
        finally:
            ended.set()

    async def handle(ev: Any) -> None:
        started.set()
        await asyncio.Event().wait()  # cancelled here: the worker stops

    lane = Lane(name="t", topics=frozenset({tp.topic}), handle=handle, prepare=prepare)
    acks = Acks()
    lane.put(Batch(tp, 1, [_event(tp, 0), _event(tp, 1)]))
    await _run_until(lane, acks, started.is_set)  # cancels the lane once it is in
    assert ended.is_set() and acks.booked == []


async def test_a_record_cancelled_while_handled_is_never_acked(tp: TP) -> None:
    started = asyncio.Event()

    async def handle(ev: Any) -> None:
        started.set()
        await asyncio.Event().wait()  # a provider call that never ends

    lane = Lane(name="t", topics=frozenset({tp.topic}), handle=handle, drain_s=0.01)
    acks = Acks()
    lane.put(Batch(tp, 1, [_event(tp, 3)]))
    await _run_until(lane, acks, started.is_set)  # then the worker stops
    assert acks.booked == []


def test_booked_acks_commit_the_run_from_the_committed_offset(tp: TP) -> None:
    consumer = app.consumer
    consumer._committed_offset[tp] = 10
    ack = lanes_mod._acker(consumer)
    gen = app.consumer_generation_id
    assert ack(tp, 11, gen) and ack(tp, 12, gen)
    assert consumer._new_offset(tp) is None  # 10 is still being handled
    assert not ack(tp, 10, gen + 1)  # from another generation: not booked
    assert ack(tp, 10, gen)
    assert not ack(tp, 10, gen)  # once
    assert not ack(tp, 9, gen)  # below the committed offset
    assert consumer._new_offset(tp) == 13


def test_no_ack_is_booked_while_the_flow_is_stopped(
    tp: TP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.flow_control, "is_active", lambda: False)  # rebalancing
    ack = lanes_mod._acker(app.consumer)
    assert not ack(tp, 0, app.consumer_generation_id)
    assert not app.consumer._acked.get(tp)


def test_a_first_commit_waits_for_the_lowest_record_a_lane_holds(
    tp: TP, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = app.consumer
    lane = Lane(name="t", topics=frozenset({tp.topic}))
    monkeypatch.setattr(app, "_notifyd_lanes", Lanes(app, [lane]), raising=False)
    lane.put(Batch(tp, 1, [_event(tp, o) for o in (5, 6, 7)]))
    consumer._acked[tp].extend([6, 7])
    consumer._acked_index[tp].update([6, 7])
    assert consumer._new_offset(tp) is None  # 5 is in the lane, unhandled
    lane._done(tp, [5])
    consumer._acked[tp].append(5)
    consumer._acked_index[tp].add(5)
    assert consumer._new_offset(tp) == 8


async def test_a_fetch_gives_lane_records_to_lanes_and_leaves_full_lanes_out(
    tp: TP, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    consumer = app.consumer
    other = TP("elsewhere", 2)
    lane = Lane(name="t", topics=frozenset({tp.topic}), max_backlog=3)
    lanes = Lanes(app, [lane])
    asked: list[set[TP]] = []

    def rec(t: TP, offset: int) -> Any:
        return SimpleNamespace(topic=t.topic, partition=t.partition, offset=offset, timestamp=0,
                               timestamp_type=0, headers=[], key=b"k", value=b"v",
                               checksum=None, serialized_key_size=1, serialized_value_size=1)

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        asked.append(set(active_partitions))
        return {t: [rec(t, o) for o in range(3)] for t in active_partitions}

    monkeypatch.setattr(consumer, "_getmany", getmany)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {tp, other})
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(app, "_notifyd_lanes", lanes, raising=False)
    records, _ = await consumer._wait_next_records(1.0)
    assert list(records) == [other]  # the lane's went to the lane
    assert [ev.message.offset for ev in lane._queue[0].events] == [0, 1, 2]
    # Faust's sensor counts them (/metrics) and its liveness check sees them taken.
    assert tp in app.monitor.stream_inbound_time
    assert app.monitor.messages_received_by_topic[tp.topic] >= 3
    records, _ = await consumer._wait_next_records(1.0)
    assert asked[1] == {other}  # the lane is full: its partition sits this fetch out
    assert lane.drop([tp]) == 3 and lane.accepting()  # revoked: forgotten, room again


async def test_a_fetch_across_a_whole_rebalance_is_fetched_again(
    tp: TP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch that returns after a rebalance came and went (new generation, flow active
    again) must not be dropped silently: the client's positions are past its records, so
    nothing would fetch them again.  Every partition goes back to its first fetched
    record, a table's changelog partition too (it has no committed offset to go back to:
    its recovery would wait for the dropped records for good)."""
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError

    consumer = app.consumer
    lane = Lane(name="t", topics=frozenset({tp.topic}))
    lanes = Lanes(app, [lane])
    changelog, gone = TP("app-prefs-changelog", 1), TP("revoked", 0)
    seeks: dict[TP, int] = {}
    threads: list[str] = []
    gen0 = app.consumer_generation_id

    def rec(t: TP, offset: int) -> Any:
        return SimpleNamespace(topic=t.topic, partition=t.partition, offset=offset)

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        app.consumer_generation_id = gen0 + 1  # rebalanced meanwhile, flow resumed
        return {tp: [rec(tp, 4), rec(tp, 5)], changelog: [rec(changelog, 7)],
                gone: [rec(gone, 2)]}

    def seek(t: TP, offset: int) -> None:
        if t == gone:
            raise IllegalStateError(f"No current assignment for partition {t}")
        seeks[t] = offset

    async def call_thread(fun: Callable[[], Awaitable[Any]]) -> Any:
        threads.append("consumer")
        return await fun()

    client = SimpleNamespace(seek=seek)
    thread = SimpleNamespace(_ensure_consumer=lambda: client, call_thread=call_thread)
    monkeypatch.setattr(consumer, "_thread", thread)
    monkeypatch.setattr(consumer, "_getmany", getmany)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {tp, changelog})
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(app, "_notifyd_lanes", lanes, raising=False)
    try:
        records, _ = await consumer._wait_next_records(1.0)
    finally:
        app.consumer_generation_id = gen0
    assert records == {} and not lane._queue
    assert seeks == {tp: 4, changelog: 7}
    assert threads == ["consumer"]  # one hop to the client's thread for them all


def test_lanes_patch_the_fetch_loop_faust_still_has() -> None:
    """``Consumer._wait_next_records`` and the books the acks go to (Faust internals)."""
    assert getattr(Consumer._wait_next_records, "__notifyd_lanes__", False)
    consumer = app.consumer
    import inspect

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "stream_inbound_time" in inspect.getsource(
        AIOKafkaConsumerThread.verify_event_path
    )
    # a fetch across a rebalance is put back through the client's own thread
    assert callable(AIOKafkaConsumerThread.call_thread)
    assert callable(AIOKafkaConsumerThread._ensure_consumer)
    for book in ("_acked", "_acked_index", "_committed_offset", "_n_acked", "_to_message",
                 "_get_active_partitions", "_getmany", "not_waiting_next_records"):
        assert hasattr(consumer, book), book


def test_fetches_gather_batches_when_busy_and_long_poll_when_quiet() -> None:
    """Faust's 1500 ms / 1 byte fetches cost a fetch per record under load; 5 ms / 1 MiB
    ones cost ~20% of a core when idle: the pacer switches with the rate it sees."""
    import inspect
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import Fetcher

    # What the pacer sets is what aiokafka's fetcher builds its requests from.
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher)
    assert "self._fetch_min_bytes" in inspect.getsource(Fetcher)
    assert "timeout=timeout" in inspect.getsource(Fetcher._fetch_requests_routine)
    from notifyd.stream import fetching

    assert "backoff = self._fetcher_timeout" in inspect.getsource(fetching._original)
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500, _fetch_min_bytes=1, _fetcher_timeout=0.2)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(
        _fetcher=fetcher)))
    pacer = lanes_mod.FetchPacer(busy=(5, 1 << 20), window_s=0.0)
    pacer.observe(consumer, 0)
    assert pacer.mode == "quiet" and fetcher._fetch_max_wait_ms == 1500
    assert fetcher._fetcher_timeout == 1.0  # quiet: no re-plan every 0.2 s under a long poll
    pacer.observe(consumer, 500)  # 500 records in (next to) no time: busy
    assert pacer.mode == "busy"
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (5, 1 << 20)
    assert fetcher._fetcher_timeout == 0.2  # aiokafka's own again
    pacer.observe(consumer, 0)  # nothing: quiet again
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (1500, 1)
    assert fetcher._fetcher_timeout == 1.0
    # A worker's lanes pace its fetches with the settings' busy values.
    lanes = app._notifyd_lanes  # type: ignore[attr-defined]
    assert lanes.pacer.busy == (settings.fetch_max_wait_ms, settings.fetch_min_bytes)


def test_fetches_wait_longer_while_the_lanes_are_behind() -> None:
    """A backlog of fetched records is handled no sooner for fetching every 5 ms: behind,
    the broker may hold a fetch longer (fuller fetches, CPU left to the handlers), and
    busy pacing comes back once the backlog is down to a quarter (hysteresis)."""
    from types import SimpleNamespace

    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500, _fetch_min_bytes=1)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(
        _fetcher=fetcher)))
    pacer = lanes_mod.FetchPacer(
        busy=(5, 1 << 20), behind=(25, 1 << 20), behind_backlog=1000, window_s=0.0,
        cold_topics=frozenset({"prefs"}),
    )
    pacer.observe(consumer, 0)  # the rate's first window
    pacer.observe(consumer, 500, backlog=999)
    assert pacer.mode == "busy" and fetcher._fetch_max_wait_ms == 5
    assert fetcher._notifyd_cold_topics == {"prefs"}  # notifyd.stream.fetching
    pacer.observe(consumer, 500, backlog=1000)
    assert pacer.mode == "behind" and fetcher._fetch_max_wait_ms == 25
    pacer.observe(consumer, 500, backlog=300)  # still above a quarter: stays behind
    assert pacer.mode == "behind"
    pacer.observe(consumer, 500, backlog=200)
    assert pacer.mode == "busy" and fetcher._fetch_max_wait_ms == 5
    pacer.observe(consumer, 0, backlog=5000)  # no records coming in: quiet, whatever held
    assert pacer.mode == "quiet" and fetcher._fetch_max_wait_ms == 1500
    assert fetcher._notifyd_cold_topics is None  # a long poll wakes for any partition
    # The worker's pacer takes the settings' values; behind off when not longer than busy.
    from notifyd.stream.agents import pacer_for

    on = pacer_for(settings)
    assert on.behind == (settings.fetch_behind_wait_ms, settings.fetch_min_bytes)
    assert on.behind_backlog == settings.fetch_behind_backlog
    # The worker's: in fetch sessions (the default) nothing is cold; without them, the
    # few-records-a-minute topics are.
    from notifyd.stream.agents import cold_topics
    from notifyd.stream.runtime import current

    lanes = app._notifyd_lanes  # type: ignore[attr-defined]
    assert lanes.pacer.sessions and not lanes.pacer.cold_topics
    names = {t.split(".")[-1] for t in cold_topics(current())}
    assert names == {"preferences", "control", "subscriptions", "callbacks"}
    nosessions = pacer_for(settings.model_copy(update={"fetch_sessions": False}),
                           frozenset({"x"}))
    assert nosessions.cold_topics == {"x"} and not nosessions.sessions
    off = pacer_for(settings.model_copy(
        update={"fetch_behind_wait_ms": 0, "fetch_cold_interval_ms": 0}), frozenset({"x"}))
    assert off.behind is None and off.cold_topics == frozenset()
