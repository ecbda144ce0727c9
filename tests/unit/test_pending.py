"""The reconciler's index of pending channels, and the scheduler's sweep off the tick.

The reconciler used to read the whole ``status`` table every ten seconds and the sweep
four whole tables every minute, inline in the scheduler's tick: CPU on an idle worker
that grew with the tables, and the event loop held for as long as a read took.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from notifyd import clock
from notifyd.model.records import Delivery
from notifyd.stream import pending as pending_mod
from notifyd.stream import scheduler as scheduler_mod
from notifyd.stream.handlers import queueing
from notifyd.stream.pending import PendingIndex, pending, pending_due
from notifyd.stream.topics import deliver_topics
from tests.support.app import app_agent, build_app
from tests.support.statuses import capture_statuses
from tests.support.waiting import until


def entry(status: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"status": status, "ts": ts, **kw}


def test_pending_due_is_the_earliest_pending_channel_with_its_delivery() -> None:
    d = {"notification_id": "n"}
    doc = {"p": 3, "channels": {
        "sms": entry("retrying", 10.0, deliver_at=40.0, delivery=d),
        "email": entry("queued", 20.0, delivery=d),
        "push": entry("sent", 1.0),
        "webhook": entry("queued", 5.0),  # no delivery to re-queue: not pending
    }}
    assert pending_due(doc) == 20.0
    assert pending_due({"p": 3, "channels": {"push": entry("sent", 1.0)}}) is None
    assert pending_due(None) is None


async def test_rows_folded_during_a_rebuild_win_over_what_the_pass_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending_mod, "REBUILD_CHUNK", 2)
    d = {"notification_id": "x"}
    table = {
        f"n{i}": {"p": 1, "channels": {"sms": entry("queued", float(i), delivery=d)}}
        for i in range(10)
    }
    table["other"] = {"p": 2, "channels": {"sms": entry("queued", 0.0, delivery=d)}}
    index = PendingIndex()
    rebuilding = asyncio.create_task(index.rebuild(table, frozenset({1})))
    await asyncio.sleep(0)  # the pass has read two rows and yielded
    index.note("n9", {"p": 1, "channels": {"sms": entry("sent", 50.0)}})  # done meanwhile
    index.note("n10", {"p": 1, "channels": {"sms": entry("queued", 60.0, delivery=d)}})
    await rebuilding
    assert "n9" not in index.entries and index.entries["n10"] == (60.0, 1)
    assert "other" not in index.entries  # not one of the active partitions
    assert index.overdue(frozenset({1}), before=2.0) == ["n0", "n1", "n2"]
    assert index.current(table, frozenset({1})) and not index.current(table, frozenset({2}))
    assert not index.current(dict(table), frozenset({1}))  # another table: rebuilt


async def test_the_status_fold_keeps_the_index() -> None:
    rt = build_app(status_batch_max=1, status_batch_wait_s=0.01)
    nid = f"n-{uuid.uuid4().hex[:8]}"
    d = {"notification_id": nid, "channel": "sms"}

    async def fold(update: dict[str, Any]) -> None:
        body = {"notification_id": nid, "updates": [{"channel": "sms", **update}]}
        await tc.put(orjson.dumps(body), key=nid.encode(), partition=4)

    async with app_agent("status", rt).test_context() as tc:
        await fold({"status": "queued", "ts": 5.0, "delivery": d})
        await until(lambda: nid in pending.entries)
        assert pending.entries[nid] == (5.0, 4)
        await fold({"status": "sent", "ts": 6.0, "attempt": 1})
        await until(lambda: nid not in pending.entries)


async def test_the_reconciler_reads_the_table_only_to_rebuild_its_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the index is current, a row that turns pending is found through it: the
    table is read again only when the partitions change."""
    rt = build_app(requeue_after_s=60.0)
    statuses = capture_statuses(monkeypatch)
    sent: list[bytes] = []

    async def send(*, key: bytes, value: bytes, **kw: Any) -> None:
        sent.append(key)

    monkeypatch.setattr(deliver_topics["sms"], "send", send)
    rebuilds: list[frozenset[int]] = []
    real = PendingIndex.rebuild

    async def counted(self: PendingIndex, data: Any, active: frozenset[int]) -> None:
        rebuilds.append(active)
        await real(self, data, active)

    monkeypatch.setattr(PendingIndex, "rebuild", counted)
    status = rt.tables.status
    active = frozenset({93})  # no other test writes partition 93
    assert await queueing.requeue_overdue(active, 100.0) == 0
    user, nid = "u-pending", f"n-{uuid.uuid4().hex[:8]}"
    d = Delivery(notification_id=nid, event_id="e", user_id=user, channel="sms", title="t",
                 body="b", address="+15550001111").to_dict()
    doc = {"p": 93, "channels": {"sms": entry("queued", 10.0, delivery=d)}}
    status.data[nid] = doc
    try:
        pending.note(nid, doc)  # what the fold does after its write
        assert await queueing.requeue_overdue(active, 50.0) == 0  # not overdue yet
        assert await queueing.requeue_overdue(active, 100.0) == 1
    finally:
        status.data.pop(nid, None)
    assert rebuilds == [active]
    assert sent == [user.encode()] and [n for n, _ in statuses] == [nid]
    # Expired meanwhile: the index entry goes at the next look.
    assert await queueing.requeue_overdue(active, 200.0) == 0
    assert nid not in pending.entries


def test_the_sweep_comes_round_once_per_hundredth_of_the_shortest_ttl() -> None:
    build_app(dedupe_ttl_s=7 * 24 * 3600, status_ttl_s=30 * 24 * 3600)
    assert scheduler_mod.sweep_interval_s() == 3600.0
    build_app(dedupe_ttl_s=3 * 3600, status_ttl_s=30 * 24 * 3600)
    assert scheduler_mod.sweep_interval_s() == 108.0
    build_app(dedupe_ttl_s=60, status_ttl_s=60)
    assert scheduler_mod.sweep_interval_s() == 60.0


async def test_a_sweep_runs_beside_the_scheduler_loop_and_stops_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tick starts the sweep and goes on releasing; stopping the loop stops it."""
    build_app()
    index = scheduler_mod.Scheduler()
    monkeypatch.setattr(scheduler_mod, "scheduler", index)
    monkeypatch.setattr(index, "_ready", lambda: True)
    monkeypatch.setattr(scheduler_mod, "active_partitions", lambda: frozenset())
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_sweep(now: float) -> None:
        started.set()
        await release.wait()

    monkeypatch.setattr(index, "sweep", slow_sweep)
    ticks: list[float] = []
    real_tick = index.tick

    async def tick(*args: Any) -> float:
        ticks.append(0.0)
        return await real_tick(*args)

    monkeypatch.setattr(index, "tick", tick)

    async def reconcile(active: frozenset[int], now: float) -> int:
        return 0

    async def never(key: str, row: dict[str, Any]) -> None:
        raise AssertionError("nothing is due")

    loop = asyncio.create_task(scheduler_mod.run_scheduler(never, reconcile))
    await asyncio.wait_for(started.wait(), 5)
    index.push(clock.now() + 3600, "later", 0)  # an entry earlier than its sleep: it ticks
    await until(lambda: len(ticks) >= 2)  # the sweep has not ended: the tick did not wait
    assert index.sweeping()
    sweep_task = index._sweeping
    assert sweep_task is not None
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert sweep_task.cancelled() and not index.sweeping()


async def test_an_idle_scheduler_sleeps_until_woken_by_an_earlier_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing due the loop sleeps up to IDLE_TICK_S, not half a second; an entry
    pushed meanwhile that is due sooner wakes it, and is released."""
    build_app()
    index = scheduler_mod.Scheduler()
    monkeypatch.setattr(scheduler_mod, "scheduler", index)
    monkeypatch.setattr(index, "_ready", lambda: True)
    monkeypatch.setattr(scheduler_mod, "active_partitions", lambda: frozenset({0}))
    monkeypatch.setattr(index, "sweep", lambda now: asyncio.sleep(0))
    released: list[str] = []

    async def release(key: str, row: dict[str, Any]) -> None:
        released.append(key)

    async def reconcile(active: frozenset[int], now: float) -> int:
        return 0

    delay = await index.tick(release, reconcile)
    assert 0 < delay <= scheduler_mod.IDLE_TICK_S
    assert delay > 0.5  # nothing due: no half-second polling

    row = {"due": clock.now(), "p": 0}
    monkeypatch.setattr(scheduler_mod.scheduled, "get", lambda key, default=None: row)
    loop = asyncio.create_task(scheduler_mod.run_scheduler(release, reconcile))
    try:
        await until(lambda: index._waker is not None)  # asleep
        index.push(clock.now() + 7200, "later", 0)
        assert index._waker is not None and not index._waker.done()  # a later entry: asleep
        index.push(row["due"], "now", 0)
        await until(lambda: released == ["now"])
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_sleep_ends_on_wake_or_its_delay() -> None:
    index = scheduler_mod.Scheduler()
    sleeping = asyncio.create_task(index.sleep(3600))
    await until(lambda: index._waker is not None)
    index.wake()
    await asyncio.wait_for(sleeping, 5)
    assert index._waker is None and index._until == 0.0
    await asyncio.wait_for(index.sleep(0.01), 5)


async def test_a_finished_rebalance_wakes_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new assignment's rows are indexed when its recovery ends, not after an idle sleep."""
    from notifyd.stream.agents import control

    rt = build_app()
    index = scheduler_mod.Scheduler()
    monkeypatch.setattr(control, "scheduler", index)
    sleeping = asyncio.create_task(index.sleep(3600))
    await until(lambda: index._waker is not None)
    await rt.app.on_rebalance_complete.send()
    await asyncio.wait_for(sleeping, 5)
