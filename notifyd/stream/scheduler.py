"""Releases deferred deliveries when they are due, on the worker owning their partition.

Deferred deliveries (quiet hours, throttle, retry backoff), scheduled events and
digest windows (``notifyd.stream.timing``) are rows of the changelog-backed ``scheduled``
table, written in the owning partition.  This
in-memory heap is only an index over them: rebuilt from the table whenever the
assignment changes, so a crashed or rebalanced worker loses nothing.  Releasing
produces the delivery to its channel topic, then a control message that deletes
the row in partition context; if the worker dies in between, the row is released
again and the delivery ledger drops the duplicate.

The same loop expires old rows of ``seen``, ``ledger``, ``status`` and ``cancels``
through control messages sent to the rows' own partitions (Faust tables can only be
written while processing a record of that partition).  That sweep reads whole
tables, so it runs in a task of its own, yields to the event loop as it goes, and
comes round once per hundredth of the shortest time to live (one to sixty minutes):
rows outlive their TTL by that much at most.

What a due row becomes, and how an overdue delivery is re-queued, is the handlers'
business (``notifyd.stream.handlers.schedule.run_scheduler`` passes both in), so this
index imports no handler: the handlers import it to push rows.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from notifyd import clock
from notifyd.metrics import metrics
from notifyd.model.records import dumps
from notifyd.model.rows import EXPIRY_STAMPS
from notifyd.stream.app import app, recovery_done, settings
from notifyd.stream.tables import cancels, ledger, scheduled, seen, status
from notifyd.stream.topics import active_partitions, control_topic

log = structlog.stdlib.get_logger("notifyd.stream.scheduler")
EXPIRE_CHUNK = 500
REBUILD_CHUNK = 5000
#: Rows the sweep reads between yields to the event loop.
SWEEP_CHUNK = 5000
#: Longest the loop sleeps with nothing due: a push of an earlier entry and the end of
#: a rebalance wake it sooner; what is left to poll (the reconciler, the sweep) is on a
#: clock of its own.  Ticking twice a second instead was 2 of an idle worker's ~11
#: wake-ups per second.
IDLE_TICK_S = 5.0

#: Hands a due row (key, row) on: see ``notifyd.stream.handlers.schedule.release``.
Release = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Re-queues overdue deliveries of these partitions at ``now``; returns how many.
Reconcile = Callable[[frozenset[int], float], Awaitable[int]]


class Scheduler:
    def __init__(self) -> None:
        self.heap: list[tuple[float, str, int]] = []
        self.released: dict[str, float] = {}
        self.active: frozenset[int] = frozenset()
        self.last_sweep = 0.0
        self.last_reconcile = 0.0
        #: While :meth:`rebuild` runs: entries pushed meanwhile, kept in the new heap.
        self._rebuilding: list[tuple[float, str, int]] | None = None
        #: Seconds the last rebuild took (bench, logs).
        self.last_rebuild_s = 0.0
        self._sweeping: asyncio.Task[None] | None = None
        #: While the loop sleeps: what wakes it, and until when it sleeps (clock time).
        self._waker: asyncio.Future[None] | None = None
        self._until = 0.0

    def push(self, due: float, key: str, partition: int) -> None:
        heapq.heappush(self.heap, (due, key, partition))
        if self._rebuilding is not None:
            self._rebuilding.append((due, key, partition))
        if due < self._until:
            self.wake()

    def wake(self) -> None:
        """End the loop's sleep now (an entry due earlier, an assignment changed)."""
        waker = self._waker
        if waker is not None and not waker.done():
            waker.set_result(None)

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds or until :meth:`wake`."""
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        self._waker, self._until = waker, clock.now() + delay
        timer = loop.call_later(delay, self.wake)
        try:
            await waker
        finally:
            timer.cancel()
            self._waker, self._until = None, 0.0

    def _ready(self) -> bool:
        return not app.rebalancing and recovery_done(app)

    async def rebuild(self, active: frozenset[int]) -> None:
        """Index the rows of this worker's partitions (one pass over the table, on
        assignment change only).  Yields to the event loop every ``REBUILD_CHUNK`` rows:
        a million rows take seconds to decode, and the agents must not stall meanwhile."""
        started = time.monotonic()
        self._rebuilding = []
        heap: list[tuple[float, str, int]] = []
        try:
            data: Any = scheduled.data
            # A dict (memory store) may change while we yield: walk a snapshot of it.
            rows = list(data.items()) if isinstance(data, dict) else data.items()
            for i, (k, v) in enumerate(rows):
                if v and v["p"] in active:
                    heap.append((v["due"], k, v["p"]))
                if i % REBUILD_CHUNK == REBUILD_CHUNK - 1:
                    await asyncio.sleep(0)
            heap.extend(self._rebuilding)
        finally:
            self._rebuilding = None
        heapq.heapify(heap)
        self.heap = heap
        self.active = active  # only now: a rebuild that failed is tried again next tick
        self.released.clear()
        self.last_rebuild_s = time.monotonic() - started
        log.info("scheduler.rebuilt", pending=len(self.heap), partitions=sorted(self.active),
                 seconds=round(self.last_rebuild_s, 3))

    async def tick(self, release: Release, reconcile: Reconcile) -> float:
        """Release what is due; returns seconds until the next due entry (capped)."""
        if not self._ready():
            return 0.5
        active = active_partitions()
        if active != self.active:
            await self.rebuild(active)
        now = clock.now()
        while self.heap and self.heap[0][0] <= now:
            due, key, partition = heapq.heappop(self.heap)
            if partition not in self.active or self.released.get(key) == due:
                continue
            entry = scheduled.get(key)
            if entry is None or entry["due"] != due:
                continue  # replaced by a newer schedule or already released
            try:
                await release(key, entry)
                metrics.due_lag(entry.get("kind") or "delivery", clock.now() - due)
            except Exception:
                log.exception("scheduler.release_failed", key=key)
                heapq.heappush(self.heap, (due, key, partition))
                return 1.0
            self.released[key] = due
        if now - self.last_reconcile > reconcile_interval_s():
            self.last_reconcile = now
            await reconcile(self.active, now)
        if now - self.last_sweep > sweep_interval_s() and not self.sweeping():
            self.last_sweep = now
            self._sweeping = asyncio.create_task(self.sweep(now), name="notifyd.sweep")
        # Until the next reconcile, sweep (unless one runs) or due entry; IDLE_TICK_S at most.
        deadlines = [self.last_reconcile + reconcile_interval_s()]
        if not self.sweeping():
            deadlines.append(self.last_sweep + sweep_interval_s())
        if self.heap:
            deadlines.append(self.heap[0][0])
        return min(IDLE_TICK_S, max(0.0, min(deadlines) - now))

    def sweeping(self) -> bool:
        return self._sweeping is not None and not self._sweeping.done()

    async def stop_sweep(self) -> None:
        """The scheduler loop stops: so does a sweep under way (the next one redoes it)."""
        task, self._sweeping = self._sweeping, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def sweep(self, now: float) -> None:
        try:
            await self._sweep(now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep.failed")

    async def _sweep(self, now: float) -> None:
        for key in [k for k in self.released if scheduled.get(k) is None]:
            del self.released[key]
        plans: list[tuple[str, Any, float]] = [
            ("seen", seen, settings.dedupe_ttl_s),
            ("ledger", ledger, settings.dedupe_ttl_s),
            ("status", status, settings.status_ttl_s),
            ("cancels", cancels, settings.dedupe_ttl_s),
        ]
        for name, table, ttl in plans:
            stamp = EXPIRY_STAMPS[name]  # when and on which partition a row was written
            cutoff = now - ttl
            expired: dict[int, list[str]] = {}
            data: Any = table.data
            rows = list(data.items()) if isinstance(data, dict) else data.items()
            for i, (key, value) in enumerate(rows):
                if i % SWEEP_CHUNK == SWEEP_CHUNK - 1:
                    await asyncio.sleep(0)
                if not value:
                    continue
                ts, p = stamp(value)
                if ts < cutoff and p in self.active:
                    expired.setdefault(p, []).append(key)
            for p, keys in expired.items():
                for i in range(0, len(keys), EXPIRE_CHUNK):
                    chunk = keys[i : i + EXPIRE_CHUNK]
                    await control_topic.send(
                        partition=p, value=dumps({"op": "expire", "table": name, "keys": chunk})
                    )
            if expired:
                log.info("sweep.expired", table=name, count=sum(map(len, expired.values())))


def reconcile_interval_s() -> float:
    """Seconds between the reconciler's passes: half the re-queue delay, at most 10 s."""
    return min(10.0, settings.requeue_after_s / 2)


def sweep_interval_s() -> float:
    """Seconds between sweeps: a hundredth of the shortest TTL, within 1 to 60 minutes."""
    shortest = min(settings.dedupe_ttl_s, settings.status_ttl_s)
    return min(3600.0, max(60.0, shortest / 100))


scheduler = Scheduler()


async def run_scheduler(release: Release, reconcile: Reconcile) -> None:
    try:
        while True:
            try:
                delay = await scheduler.tick(release, reconcile)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler.tick_failed")
                delay = 1.0
            await scheduler.sleep(max(delay, 0.01))
    finally:
        await scheduler.stop_sweep()
