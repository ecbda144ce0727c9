"""Batch lanes: the hot path's topics read a fetch at a time, on Faust's assignment.

Faust hands every record to its streams one at a time: conductor, channel queue,
stream iteration, sensors and ack cost about 100 µs per record on this class of
machine, several times notifyd's own work.  For the topics of the hot path (ingest,
the channels' deliveries, status) a :class:`Lanes` takes each fetch's records out of
Faust's fetch loop before that machinery (:func:`install` wraps
``Consumer._wait_next_records``) and gives them to the topic's lane, a batch per
partition per fetch.  Faust keeps what it is good at: group membership and the
partition assignment, table recovery (a partition is fetched only once its tables are
recovered), standbys, and commits.

A lane books a record's offset as acked in Faust's consumer only once the record is
handled (its outputs handed to the producer, which Faust flushes before it commits:
``notifyd.stream.faust_fixes``), and only in the consumer generation it was fetched
in: a record fetched before a rebalance is fetched and handled again after it (our
steps are idempotent).  Faust commits only runs of acked offsets that start at the
committed one, so a record still in flight holds back every record after it.

A lane whose backlog is full is left out of the next fetches (its partitions' records
wait in the client's buffer), so a slow provider holds up its own channel only.  The
agents of these topics stay declared (``agent.test_context()`` drives the same handlers
record by record); with ``NOTIFYD_BATCH_LANES=false`` Faust's streams run them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka.errors import IllegalStateError
from faust.events import Event
from faust.transport.consumer import Consumer
from faust.types import TP, EventT
from faust.types.tuples import Message, ack_lock

from notifyd.stream import fetching, handoff
from notifyd.stream.agents.common import KeyedSlots, handle_one
from notifyd.stream.headers import header_value
from notifyd.stream.tables import current_event

if TYPE_CHECKING:
    import faust

log = structlog.stdlib.get_logger("notifyd.stream.lanes")

#: Marks a record this process produced to a lane's topic (its value: ``Lanes.token``).
LANE_HEADER = "notifyd-lane"

#: Books one handled record as acked: ``(tp, offset, generation) -> booked``.
Acker = Callable[[TP, int, int], bool]
RecordHandler = Callable[[EventT[Any]], Awaitable[None]]
BatchHandler = Callable[[Sequence[EventT[Any]]], Awaitable[object]]
#: Work a batch's records need before any is handled, done for the whole batch in one
#: pass; the context ends once the batch is handled (or abandoned).
BatchPreparer = Callable[[Sequence[EventT[Any]]], contextlib.AbstractContextManager[object]]


@dataclass
class Batch:
    """The records of one partition from one fetch, in offset order."""

    tp: TP
    generation: int
    events: list[EventT[Any]]

    def offsets(self) -> list[int]:
        return [ev.message.offset for ev in self.events]


@dataclass
class Lane:
    """A hot-path stage: its topics, how it handles a batch, and how much it may hold.

    ``handle`` runs records one after another (``concurrency`` 1), or up to
    ``concurrency`` at once in order per message key (a provider's I/O), or, given
    ``fold``, the whole batch in one call (the status fold); ``open``/``close`` bracket
    the lane's life (a channel's provider).  ``prepare`` (with ``concurrency`` 1) does
    the stateless part of every record of a batch in one pass before the records are
    handled: a stage run over the batch keeps the caches warm for it, where the same
    code interleaved with the rest of each record's handling costs two to three times
    as much per call."""

    name: str
    topics: frozenset[str]
    handle: RecordHandler | None = None
    fold: BatchHandler | None = None
    prepare: BatchPreparer | None = None
    concurrency: int = 1
    #: Records fetched and not yet handled beyond which the lane is left out of fetches.
    max_backlog: int = 2000
    open: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    drain_s: float = 10.0
    #: A source lane (ingest): a record whose handler handed deliveries off to a channel
    #: lane (``notifyd.stream.handoff``) is acked only once they are done.
    holds_sources: bool = False
    _queue: deque[Batch] = field(default_factory=deque, repr=False)
    _backlog: int = 0
    _wakeup: asyncio.Event | None = field(default=None, repr=False)
    _inflight: dict[TP, set[int]] = field(default_factory=dict, repr=False)
    _slots: KeyedSlots | None = field(default=None, repr=False)
    _space: asyncio.Event | None = field(default=None, repr=False)
    #: Source records waiting for their hand-offs before they are acked.
    _held: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    #: Records this process produced to this lane's topic in the current generation and
    #: the lane has not taken up yet, per (partition, user): a user's next delivery is
    #: handed off only once none of theirs is left, so it keeps its place behind them.
    _pending: dict[tuple[TP, bytes | None], int] = field(default_factory=dict, repr=False)
    #: Partitions where the lane took up a record this process produced in the current
    #: generation: every record before it in the partition (a previous owner's) is taken
    #: up too, and hand-offs may begin.
    _synced: set[TP] = field(default_factory=set, repr=False)
    #: ``LANE_HEADER``'s value on this process's records of the current generation.
    _mark: str = ""

    def accepting(self) -> bool:
        return self._backlog < self.max_backlog

    def put(self, batch: Batch) -> None:
        self._queue.append(batch)
        self._backlog += len(batch.events)
        offsets = self._inflight.setdefault(batch.tp, set())
        offsets.update(ev.message.offset for ev in batch.events)
        if self._wakeup is not None:
            self._wakeup.set()

    def lowest_in_flight(self, tp: TP) -> int | None:
        offsets = self._inflight.get(tp)
        return min(offsets) if offsets else None

    def drop(self, tps: Iterable[TP]) -> int:
        """Forget queued batches of ``tps`` (revoked: fetched again by their next owner)."""
        gone = set(tps)
        kept: deque[Batch] = deque()
        dropped = 0
        for b in self._queue:
            if b.tp in gone:
                dropped += len(b.events)
                self._done(b.tp, b.offsets())
            else:
                kept.append(b)
        self._queue = kept
        return dropped

    def busy_with(self, tps: Iterable[TP]) -> bool:
        return any(self._inflight.get(tp) for tp in tps)

    def forget_order(self, tps: Iterable[TP]) -> None:
        """Revoked: what this lane knew of the partitions' order starts over."""
        gone = set(tps)
        self._synced -= gone
        for k in [k for k in self._pending if k[0] in gone]:
            del self._pending[k]

    # -- hand-offs (notifyd.stream.handoff) ----------------------------------------------

    def can_take(self, tp: TP, key: bytes | None) -> bool:
        """May a delivery of ``tp`` for the user ``key`` skip the topic now?

        Only behind every record of the partition a previous owner left and every one
        of that user's this process produced, so it keeps its place per user; and only
        while the lane has room, never waiting for it: a busy channel's deliveries take
        the topic, so a slow channel never holds its source up.  (Waiting for room, up
        to 20 ms while room came back within 2 ms on average, made no measurable
        difference to a 20,000-event burst on 2 cores; pacing every hand-off on its
        channel made one a fifth slower.)"""
        slots = self._slots
        return (
            slots is not None
            and tp in self._synced
            and (tp, key) not in self._pending
            and slots.has_room()
        )

    def note_produced(self, tp: TP, key: bytes | None, mark: str) -> list[tuple[str, bytes]]:
        """A record of ``tp`` for ``key`` goes through the topic, marked ``mark`` (this
        process and generation): no hand-off for that user may pass it."""
        if mark != self._mark:  # a new generation: what the lane knew starts over
            self._mark = mark
            self._pending.clear()
            self._synced.clear()
        k = (tp, key)
        self._pending[k] = self._pending.get(k, 0) + 1
        return [(LANE_HEADER, mark.encode())]

    async def take_handoff(self, ev: EventT[Any]) -> asyncio.Future[bool]:
        """Run a handed-off delivery in this lane's slots; the future says whether it ended
        (False: cancelled, the worker stopping; its source record is then not acked)."""
        assert self._slots is not None and self.handle is not None
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        handle = self.handle

        async def job() -> None:
            with current_event(ev):
                await handle_one(ev, handle)  # everything but cancellation is caught
            done.set_result(True)

        def finished() -> None:
            if not done.done():
                done.set_result(False)

        await self._slots.submit((ev.message.tp, ev.message.key), job, done=finished)
        return done

    def _taken_up(self, tp: TP, ev: EventT[Any]) -> None:
        """``ev`` is submitted; one of this process's records of this generation: every
        record before it is submitted too (topic order), and its user's count drops."""
        if header_value(ev.message.headers, LANE_HEADER) != self._mark:
            return
        self._synced.add(tp)
        k = (tp, ev.message.key)
        n = self._pending.get(k, 0)
        if n > 1:
            self._pending[k] = n - 1
        else:
            self._pending.pop(k, None)

    def _done(self, tp: TP, offsets: Iterable[int]) -> None:
        held = self._inflight.get(tp)
        n = 0
        for off in offsets:
            n += 1
            if held is not None:
                held.discard(off)
        self._backlog -= n

    async def run(self, ack: Acker, current_generation: Callable[[], int],
                  space: asyncio.Event) -> None:
        """Handle batches as they come until cancelled."""
        self._wakeup = asyncio.Event()
        if self.open is not None:
            await self.open()
        slots = KeyedSlots(self.concurrency, self.drain_s)
        self._space = space
        if self.concurrency > 1:
            self._slots = slots
        try:
            while True:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                batch = self._queue.popleft()
                if batch.generation != current_generation():
                    # Fetched before a rebalance: fetched again after Faust's seek.
                    self._done(batch.tp, batch.offsets())
                    space.set()
                    continue
                if self.fold is not None:
                    await self._fold(batch, ack)
                    space.set()
                elif self.concurrency <= 1:
                    with (self.prepare(batch.events) if self.prepare is not None
                          else contextlib.nullcontext()):
                        for ev in batch.events:
                            await self._one(batch, ev, ack)
                    space.set()
                else:
                    for ev in batch.events:
                        await slots.submit((batch.tp, ev.message.key),
                                           functools.partial(self._one, batch, ev, ack),
                                           done=space.set)
                        if self._mark:
                            self._taken_up(batch.tp, ev)
        finally:
            self._slots = None
            self._synced.clear()
            self._pending.clear()
            await slots.drain()
            for t in list(self._held):
                t.cancel()
            await asyncio.gather(*self._held, return_exceptions=True)
            if self.close is not None:
                await self.close()

    async def _one(self, batch: Batch, ev: EventT[Any], ack: Acker) -> None:
        assert self.handle is not None
        off = ev.message.offset
        if self.holds_sources:
            with handoff.holding() as holds, current_event(ev):
                await handle_one(ev, self.handle)  # everything but cancellation is caught
            if holds:
                # Acked once what it handed off is done (the next records go on meanwhile).
                task = asyncio.create_task(self._ack_when_done(batch, off, holds, ack))
                self._held.add(task)
                task.add_done_callback(self._held.discard)
                return
        else:
            with current_event(ev):
                await handle_one(ev, self.handle)  # everything but cancellation is caught
        ack(batch.tp, off, batch.generation)
        self._done(batch.tp, (off,))

    async def _ack_when_done(
        self, batch: Batch, off: int, holds: list[asyncio.Future[bool]], ack: Acker
    ) -> None:
        try:
            ended = await asyncio.gather(*holds)
            if all(ended):
                ack(batch.tp, off, batch.generation)
        finally:
            self._done(batch.tp, (off,))
            if self._space is not None:
                self._space.set()

    async def _fold(self, batch: Batch, ack: Acker) -> None:
        assert self.fold is not None
        await self.fold(batch.events)  # dead-letters what it cannot fold; raises nothing else
        offsets = batch.offsets()
        for off in offsets:
            ack(batch.tp, off, batch.generation)
        self._done(batch.tp, offsets)


@dataclass
class FetchPacer:
    """Faust's consumer fetches: long polls when quiet, batches when busy, fewer and
    fuller fetches when the worker is behind.

    Faust asks the broker for at least 1 byte, waiting up to 1500 ms: cheap when idle,
    but under load every fetch returns a record or two, and each response (every
    subscribed partition, ~100) is built and decoded in Python by the consumer thread,
    a fixed cost per fetch that then took a third of the worker's CPU.  Asking for
    ``busy[1]`` bytes within ``busy[0]`` ms gathers a batch per fetch instead (+30%
    events/s, lower latency at 100/s on 2 cores), but polling every few ms costs 20% of
    a core when idle.  So the pacer reads the rate the fetch loop sees and switches
    between the two (hysteresis: busy from ``busy_rate`` records/s, about 50 events/s,
    quiet again below half of it).

    A worker whose lanes hold ``behind_backlog`` fetched records or more cannot use
    records sooner than it handles the ones it has: fetching every few ms then only
    spends the CPU it lacks on near-empty fetches.  Then (``behind``) the broker may
    hold a fetch for ``behind[0]`` ms (same minimum bytes); the latency this adds is
    below the queueing delay of that backlog.  Busy again once the backlog is under a
    quarter of it.

    While quiet, aiokafka's fetch loop also wakes every ``fetcher_timeout`` (0.2 s) to
    plan again over every assigned partition (~200), though the long poll in flight
    leaves it nothing to send: a tenth of an idle worker's CPU.  It wakes anyway for
    what changes the plan (a fetch answered, records consumed, the assignment, a pause
    lifted), so while quiet the pacer sets that timeout to ``quiet_replan_s``."""

    busy: tuple[int, int]
    quiet: tuple[int, int] = (1500, 1)
    behind: tuple[int, int] | None = None
    behind_backlog: int = 1000
    #: Topics fetched at most every ``cold_interval_s`` while not quiet (``fetching``).
    cold_topics: frozenset[str] = frozenset()
    cold_interval_s: float = 0.05
    #: Fetches in incremental sessions (``fetching.FetchSession``).
    sessions: bool = False
    #: aiokafka's ``fetcher_timeout`` while quiet (None: left as it is).
    quiet_replan_s: float | None = 1.0
    _fetcher: Any = None
    _replan_s: float = 0.2
    busy_rate: float = 200.0
    window_s: float = 0.25
    mode: str = "quiet"
    _count: int = 0
    _since: float = 0.0

    def observe(self, consumer: Any, n: int, backlog: int = 0) -> None:
        if self.sessions or self.quiet_replan_s is not None:
            fetcher = _fetcher_of(consumer)
            if fetcher is not self._fetcher:  # a consumer (re)started: its new fetcher
                self._fetcher = fetcher
                if fetcher is not None:
                    if self.sessions:
                        fetching.use_sessions(fetcher)
                    self._replan_s = getattr(fetcher, "_fetcher_timeout", self._replan_s)
                    self._set_replan(fetcher, self.mode)
        self._count += n
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed < self.window_s:
            return
        rate = self._count / elapsed
        self._count, self._since = 0, now
        mode = self.mode
        if rate >= self.busy_rate:
            mode = "busy"
        elif rate < self.busy_rate / 2:
            mode = "quiet"
        if self.behind is not None and mode == "busy":
            if backlog >= self.behind_backlog:
                mode = "behind"
            elif self.mode == "behind" and backlog >= self.behind_backlog // 4:
                mode = "behind"
        if mode != self.mode:
            fetcher = _fetcher_of(consumer)
            if fetcher is not None:
                wait_ms, min_bytes = {
                    "quiet": self.quiet, "busy": self.busy, "behind": self.behind or self.busy
                }[mode]
                # Read when the fetcher builds its next request (aiokafka's thread).
                fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = wait_ms, min_bytes
                fetching.set_cold(
                    fetcher,
                    self.cold_topics if mode != "quiet" and self.cold_topics else None,
                    self.cold_interval_s,
                )
                self._set_replan(fetcher, mode)
                self.mode = mode

    def _set_replan(self, fetcher: Any, mode: str) -> None:
        if self.quiet_replan_s is not None:
            quiet = mode == "quiet"
            fetcher._fetcher_timeout = self.quiet_replan_s if quiet else self._replan_s


def _fetcher_of(consumer: Any) -> Any:
    """aiokafka's fetcher behind Faust's consumer (None before it started)."""
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    return getattr(client, "_fetcher", None)


class Lanes:
    """The lanes of one app, fed by its consumer's fetch loop."""

    def __init__(
        self,
        app: faust.App,
        lanes: Sequence[Lane],
        revoke_wait_s: float = 5.0,
        pacer: FetchPacer | None = None,
        direct: bool = True,
    ):
        self.app = app
        self.pacer = pacer
        self.lanes = list(lanes)
        self.by_topic = {t: lane for lane in self.lanes for t in lane.topics}
        self.space = asyncio.Event()
        self.revoke_wait_s = revoke_wait_s
        #: Deliveries may skip their topic (``notifyd.stream.handoff``).
        self.direct = direct
        #: Marks the records this process produces to a lane's topic (``LANE_HEADER``),
        #: with the consumer generation they were produced in.
        self.token = os.urandom(8).hex()
        self._tasks: list[asyncio.Task[None]] = []

    # -- hand-offs (notifyd.stream.handoff) --------------------------------------------

    async def offer(self, topic: str, partition: int, key: bytes, value: bytes) -> bool:
        """Hand a record of ``topic`` to its lane, held by the source record being
        handled; False (nothing done) when it must go through the topic: no source
        record to hold, no lane, or the lane not ready for ``partition`` (see
        ``Lane.can_take``)."""
        holds = handoff.current_holds()
        lane = self.by_topic.get(topic)
        if holds is None or lane is None:
            return False
        tp = TP(topic, partition)
        if not lane.can_take(tp, key):
            return False
        msg = Message(topic, partition, -1, time.time(), 0, [], key, value, None, tp=tp)
        # There is room: submitted without waiting.
        holds.append(await lane.take_handoff(Event(self.app, key, value, msg.headers, msg)))
        return True

    def topic_headers(
        self, topic: str, partition: int, key: bytes | None
    ) -> list[tuple[str, bytes]] | None:
        lane = self.by_topic.get(topic)
        if lane is None:
            return None
        mark = f"{self.token}:{self.app.consumer_generation_id}"
        return lane.note_produced(TP(topic, partition), key, mark)

    # -- fed by the consumer (install) -------------------------------------------------

    def fetchable(self, tp: TP) -> bool:
        lane = self.by_topic.get(tp.topic)
        return lane is None or lane.accepting()

    def all_accepting(self) -> bool:
        return all(lane.accepting() for lane in self.lanes)

    def take(self, consumer: Any, records: dict[TP, list[Any]], generation: int) -> None:
        """Move the records of lane topics from ``records`` (a fetch) to their lanes."""
        to_message = consumer._to_message
        app = self.app
        monitor = app.monitor
        now = time.monotonic()
        for tp in [tp for tp in records if tp.topic in self.by_topic]:
            recs = records.pop(tp)
            events: list[EventT[Any]] = []
            for r in recs:
                m = to_message(tp, r)
                events.append(Event(app, m.key, m.value, m.headers, m))
            if events:
                _count_in(monitor, tp, len(events), events[-1].message.offset, now)
                self.by_topic[tp.topic].put(Batch(tp, generation, events))

    def backlog(self) -> int:
        """Records fetched and not yet handled, all lanes together."""
        return sum(lane._backlog for lane in self.lanes)

    def lowest_in_flight(self, tp: TP) -> int | None:
        """The lowest offset of ``tp`` a lane holds and has not handled (None: none);
        ``faust_fixes`` holds a first commit below it."""
        lane = self.by_topic.get(tp.topic)
        return lane.lowest_in_flight(tp) if lane is not None else None

    # -- life --------------------------------------------------------------------------

    async def run(self) -> None:
        consumer = self.app.consumer
        ack = _acker(consumer)

        def generation() -> int:
            return int(self.app.consumer_generation_id)

        self._tasks = [
            asyncio.create_task(lane.run(ack, generation, self.space), name=f"lane:{lane.name}")
            for lane in self.lanes
        ]
        try:
            # A lane that fails is a bug: let the worker crash rather than stall.
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def on_revoked(self, revoked: Iterable[TP]) -> None:
        """Before the partitions are released: forget their queued batches and give the
        ones being handled a moment to finish (their acks are no longer booked: the next
        owner handles them again, and finds what they did in its tables)."""
        tps = set(revoked)
        dropped = sum(lane.drop(tps) for lane in self.lanes)
        for lane in self.lanes:
            lane.forget_order(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.revoke_wait_s
        while any(lane.busy_with(tps) for lane in self.lanes) and loop.time() < deadline:
            self.space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.space.wait(), max(0.0, deadline - loop.time()))
        if dropped:
            log.info("lanes.revoked", dropped=dropped)


def _count_in(monitor: Any, tp: TP, n: int, last_offset: int, now: float) -> None:
    """What Faust's sensor counts per record as its streams take it (``/metrics``:
    ``notifyd_faust_messages_received``, ``notifyd_faust_events``), counted per batch;
    ``stream_inbound_time`` is what Faust's liveness check (``verify_event_path``) reads
    to tell a partition's stream is working."""
    monitor.messages_received_total += n
    monitor.messages_received_by_topic[tp.topic] += n
    monitor.tp_read_offsets[tp] = last_offset
    monitor.events_total += n
    monitor.stream_inbound_time[tp] = now


def _acker(consumer: Any) -> Acker:
    """Book acks the way ``Consumer.ack`` does, by offset (no message object needed), and
    only in the generation the record was fetched in with the flow running."""
    app = consumer.app
    flow = app.flow_control
    acked, acked_index = consumer._acked, consumer._acked_index
    committed = consumer._committed_offset

    def ack(tp: TP, offset: int, generation: int) -> bool:
        with ack_lock:
            if generation != app.consumer_generation_id or not flow.is_active():
                return False
            done = committed.get(tp)
            if done is not None and offset < done:
                return False
            index = acked_index[tp]
            if offset in index:
                return False
            index.add(offset)
            acked[tp].append(offset)
            consumer._n_acked += 1
            return True

    return ack


# --------------------------------------------------------------------------------------
# The fetch loop's side
# --------------------------------------------------------------------------------------

_original_wait_next_records = Consumer._wait_next_records


async def _wait_next_records_with_lanes(self: Any, timeout: float) -> Any:
    """``Consumer._wait_next_records`` that leaves full lanes out of the fetch and hands
    the records of lane topics to their lanes (the rest go on to Faust's streams)."""
    lanes: Lanes | None = getattr(self.app, "_notifyd_lanes", None)
    if lanes is None:
        return await _original_wait_next_records(self, timeout)
    if not self.flow_active:
        await self.wait(self.can_resume_flow)
    try:
        self.not_waiting_next_records.set()
        active = self._get_active_partitions()
        if not lanes.all_accepting():  # else every partition is fetchable: no new set
            active = {tp for tp in active if lanes.fetchable(tp)}
        records: dict[TP, list[Any]] = {}
        if active:
            generation = self.app.consumer_generation_id
            records = await self._getmany(active_partitions=active, timeout=timeout)
            if lanes.pacer is not None:
                lanes.pacer.observe(
                    self, sum(len(r) for r in records.values()), lanes.backlog()
                )
            if records and self.flow_active and generation == self.app.consumer_generation_id:
                lanes.take(self, records, generation)
            elif records:
                # A rebalance came during this fetch: which assignment these records
                # came from is not known, and the client's positions are past them.
                # Every partition goes back to its first fetched record, so the next
                # fetch brings them again in the current generation.  Seeking to the
                # committed offsets instead would leave a table's changelog partitions
                # (never committed) past records its recovery is waiting for.
                await _seek_back(self, records)
                records = {}
        else:
            # Every partition is a full lane's (or none is assigned): wait for room.
            lanes.space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lanes.space.wait(), 1.0)
        return records, active
    finally:
        self.not_waiting_next_records.set()


async def _seek_back(consumer: Any, records: dict[TP, list[Any]]) -> None:
    """Put each partition of ``records`` back at its first record (in the consumer's
    thread, where the client lives; a partition no longer assigned is left to its next
    owner, which starts at the committed offset)."""
    back = {tp: recs[0].offset for tp, recs in records.items() if recs}
    if not back:
        return
    client = consumer._thread._ensure_consumer()

    async def seek() -> int:
        n = 0
        for tp, offset in back.items():
            # aiokafka asserts there is an assignment at all (none mid-rebalance)
            with contextlib.suppress(IllegalStateError, AssertionError):
                client.seek(tp, offset)
                n += 1
        return n

    n = await consumer._thread.call_thread(seek)
    log.info("lanes.fetch_crossed_rebalance", partitions=len(back), sought_back=n)


def install(app: faust.App, lanes: Lanes) -> None:
    """Feed ``lanes`` from ``app``'s consumer (one set of lanes per app)."""
    app._notifyd_lanes = lanes  # type: ignore[attr-defined]
    if lanes.pacer is not None and (lanes.pacer.cold_topics or lanes.pacer.sessions):
        fetching.install()
    if not getattr(Consumer._wait_next_records, "__notifyd_lanes__", False):
        _wait_next_records_with_lanes.__notifyd_lanes__ = True  # type: ignore[attr-defined]
        Consumer._wait_next_records = _wait_next_records_with_lanes  # type: ignore[method-assign]
