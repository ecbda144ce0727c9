"""Releases deferred deliveries when they are due, on the worker owning their partition.

Deferred deliveries (quiet hours, throttle, retry backoff), scheduled events and
digest windows (``notifyd.stream.timing``) are rows of the changelog-backed ``scheduled``
table, written in the owning partition.  This
in-memory heap is only an index over them: rebuilt from the table whenever the
assignment changes, so a crashed or rebalanced worker loses nothing.  Releasing
produces the delivery to its channel topic, then a control message that deletes
the row in partition context; if the worker dies in between, the row is released
again and the delivery ledger drops the duplicate.

The same loop expires old rows of ``seen``, ``ledger`` and ``status`` through
control messages sent to the rows' own partitions (Faust tables can only be
written while processing a record of that partition).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Any

import structlog

from notifyd import clock
from notifyd.metrics import metrics
from notifyd.model.records import dumps
from notifyd.stream.app import app, recovery_done, settings
from notifyd.stream.topics import active_partitions

log = structlog.stdlib.get_logger("notifyd.stream.scheduler")
EXPIRE_CHUNK = 500
REBUILD_CHUNK = 5000


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

    def push(self, due: float, key: str, partition: int) -> None:
        heapq.heappush(self.heap, (due, key, partition))
        if self._rebuilding is not None:
            self._rebuilding.append((due, key, partition))

    def _ready(self) -> bool:
        return not app.rebalancing and recovery_done(app)

    async def rebuild(self, active: frozenset[int]) -> None:
        """Index the rows of this worker's partitions (one pass over the table, on
        assignment change only).  Yields to the event loop every ``REBUILD_CHUNK`` rows:
        a million rows take seconds to decode, and the agents must not stall meanwhile."""
        from notifyd.stream.tables import scheduled

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

    async def tick(self) -> float:
        """Release what is due; returns seconds until the next due entry (capped)."""
        from notifyd.stream.pipeline import release
        from notifyd.stream.tables import scheduled

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
        if now - self.last_reconcile > min(10.0, settings.requeue_after_s / 2):
            self.last_reconcile = now
            await self.reconcile(now)
        if now - self.last_sweep > 60:
            self.last_sweep = now
            await self.sweep(now)
        return min(0.5, self.heap[0][0] - now) if self.heap else 0.5

    async def reconcile(self, now: float) -> int:
        """Re-queue deliveries whose outcome is overdue (safety net, at-least-once).

        The status table (this worker's partitions) knows every channel still
        ``queued``/``retrying``/``deferred`` with the delivery it is waiting for.  One
        overdue by ``requeue_after_s`` is produced to its channel topic again: if it was
        in fact delivered the channel agent finds it in the ledger and re-states the
        outcome; if a crash or rebalance left its record unprocessed it is delivered now.
        """
        from notifyd.stream.pipeline import publish_status
        from notifyd.stream.tables import status
        from notifyd.stream.topics import deliver_topics

        requeued: list[str] = []
        grace = settings.requeue_after_s
        for nid, doc in list(status.data.items()):
            if not doc or doc.get("p") not in self.active:
                continue
            for channel, entry in doc.get("channels", {}).items():
                delivery = entry.get("delivery")
                if not delivery or entry.get("status") not in ("queued", "retrying", "deferred"):
                    continue
                due = max(entry.get("ts") or 0, entry.get("deliver_at") or 0)
                if now - due < grace:
                    continue
                await deliver_topics[channel].send(
                    key=str(delivery["user_id"]).encode(), value=dumps(delivery)
                )
                await publish_status(
                    nid,
                    [
                        {
                            "channel": channel,
                            "status": "queued",
                            "ts": now,
                            "delivery": delivery,
                            "attempt": delivery.get("attempt", 1),
                            "reason": f"requeued: no outcome {grace:.0f}s after it was due",
                        }
                    ],
                )
                requeued.append(f"{nid}:{channel}")
        if requeued:
            log.warning("reconcile.requeued", count=len(requeued), keys=requeued[:20])
            # Every key, for tracing what was re-queued (tests/integration/test_reliability).
            for i in range(20, len(requeued), 500):
                log.info("reconcile.requeued_keys", keys=requeued[i : i + 500])
        return len(requeued)

    async def sweep(self, now: float) -> None:
        from notifyd.stream.tables import cancels, ledger, scheduled, seen, status
        from notifyd.stream.topics import control_topic

        for key in [k for k in self.released if scheduled.get(k) is None]:
            del self.released[key]
        plans: list[tuple[str, Any, float, int]] = [
            ("seen", seen, settings.dedupe_ttl_s, 0),
            ("ledger", ledger, settings.dedupe_ttl_s, 1),
            ("status", status, settings.status_ttl_s, 2),
            ("cancels", cancels, settings.dedupe_ttl_s, 0),
        ]
        status_partitions = self.active  # status is co-partitioned by notification id
        for name, table, ttl, kind in plans:
            cutoff = now - ttl
            expired: dict[int, list[str]] = {}
            for key, value in table.data.items():
                if not value:
                    continue
                if kind == 0:
                    ts, p = value[0], value[1]
                elif kind == 1:
                    ts, p = value["ts"], value["p"]
                else:
                    ts, p = value.get("accepted_at") or 0, value.get("p", -1)
                if ts < cutoff and p in (status_partitions if kind == 2 else self.active):
                    expired.setdefault(p, []).append(key)
            for p, keys in expired.items():
                for i in range(0, len(keys), EXPIRE_CHUNK):
                    chunk = keys[i : i + EXPIRE_CHUNK]
                    await control_topic.send(
                        partition=p, value=dumps({"op": "expire", "table": name, "keys": chunk})
                    )
            if expired:
                log.info("sweep.expired", table=name, count=sum(map(len, expired.values())))


scheduler = Scheduler()


async def run_scheduler() -> None:
    while True:
        try:
            delay = await scheduler.tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler.tick_failed")
            delay = 1.0
        await asyncio.sleep(max(delay, 0.01))
